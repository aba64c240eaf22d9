"""The verl adapters against REAL verl 0.7.1: RLHFDataset loading our shards, the sampler and
the dataset class iterating it, and `update` with a real DataProto. Runs in the
environment `make test-integrations` builds; skipped elsewhere."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("verl", reason="verl not installed: run `make test-integrations`")
from omegaconf import OmegaConf  # noqa: E402
from torchdata.stateful_dataloader import StatefulDataLoader  # noqa: E402
from verl import DataProto  # noqa: E402
from verl.utils.dataset.rl_dataset import RLHFDataset, collate_fn  # noqa: E402

from gain_curate.curriculum.schedule import mu_update  # noqa: E402
from gain_curate.executor.launch import run_score  # noqa: E402
from gain_curate.executor.score import ScoreConfig  # noqa: E402
from gain_curate.integrations.verl import GainCurriculumSampler, GainRLHFDataset  # noqa: E402

B = 8


@pytest.fixture(scope="module")
def shards(tiny_qwen2_dir: Path, tmp_path_factory) -> list[str]:
    tmp = tmp_path_factory.mktemp("verl")
    data = tmp / "q.jsonl"
    data.write_text(
        "".join(
            json.dumps({"question": f"What is {i} times {i + 3}?", "answer": str(i * (i + 3))})
            + "\n"
            for i in range(40)
        )
    )
    res = run_score(
        ScoreConfig(
            data=str(data),
            model=str(tiny_qwen2_dir),
            out=tmp / "run",
            rows_per_shard=16,
            device="cpu",
        )
    )
    return [str(tmp / "run" / s["path"]) for s in res.manifest["shards"]]


def data_config(**gain) -> OmegaConf:
    return OmegaConf.create(
        {
            "prompt_key": "prompt",
            "max_prompt_length": 512,
            "filter_overlong_prompts": False,
            "train_batch_size": B,
            "dataloader_num_workers": 0,
            "shuffle": False,
            "val_files": None,
            "gain": {"sigma": 4, "n": 3, "adj_max": 12, "seed": 1, **gain},
        }
    )


def step_batch(rows: dict, acc: list[float] | None, n: int = 2) -> DataProto:
    """A trainer batch as verl has it after the reward: n rollouts per prompt, shuffled."""
    k = len(rows["extra_info"])
    order = np.random.default_rng(0).permutation(np.repeat(np.arange(k), n))
    non_tensor = {
        "extra_info": np.array(rows["extra_info"], dtype=object)[order],
        "uid": np.array([f"u{i}" for i in order], dtype=object),
    }
    scores = torch.zeros(len(order), 5)
    if acc is not None:
        non_tensor["acc"] = np.array([acc[i] for i in order], dtype=np.float64)
    else:
        scores[:, -1] = torch.tensor([1.0 if i % 2 == 0 else 0.0 for i in order])
    return DataProto.from_dict(tensors={"token_level_scores": scores}, non_tensors=non_tensor)


def test_sampler_follows_schedule_and_moves_mu(shards, qwen_tokenizer) -> None:
    cfg = data_config()
    ds = RLHFDataset(data_files=shards, tokenizer=qwen_tokenizer, config=cfg)
    sampler = GainCurriculumSampler(data_source=ds, data_config=cfg)
    from verl.experimental.dataset.sampler import AbstractCurriculumSampler

    assert isinstance(sampler, AbstractCurriculumSampler) and len(sampler) == 40
    loader = StatefulDataLoader(
        ds, batch_size=B, sampler=sampler, collate_fn=collate_fn, num_workers=0, drop_last=True
    )
    it = iter(loader)
    rows = next(it)
    ranks = [e["gain_rank"] for e in rows["extra_info"]]
    assert len(set(ranks)) == B and max(ranks) < 20  # mu0 = 0: the top of the ranking
    acc = [1.0 if r % 2 == 0 else 0.5 for r in ranks]

    def fit_step(batch):  # verl's fit loop: update(batch) then logger.log(data=metrics)
        metrics = {"actor/loss": 0.1}
        sampler.update(batch=batch)
        return metrics

    logged = fit_step(step_batch(rows, acc))
    assert logged["gain/mu"] == sampler.schedule.mu and logged["gain/acc"] == pytest.approx(
        np.mean(acc)
    )
    # no angle term: verl's actor is not hooked, and the offline score is never a stand-in
    want_mu, _ = mu_update(0.0, float(np.mean(acc)), 0.0, sampler.schedule.params, 40)
    assert sampler.schedule.mu == pytest.approx(want_mu) and sampler.schedule.epoch == 1
    assert sampler.schedule.history[-1].ang is None
    plan = [sampler.schedule.uids[r] for r in sampler.schedule.plan_epoch()]  # at the new mu
    assert [e["gain_uid"] for e in next(it)["extra_info"]] == plan


def test_update_without_acc_reads_token_level_scores(shards, qwen_tokenizer) -> None:
    cfg = data_config()
    ds = RLHFDataset(data_files=shards, tokenizer=qwen_tokenizer, config=cfg)
    sampler = GainCurriculumSampler(data_source=ds, data_config=cfg)
    rows = next(iter(StatefulDataLoader(ds, batch_size=B, sampler=sampler, collate_fn=collate_fn)))
    sampler.update(step_batch(rows, acc=None))
    assert sampler.schedule.history[0].acc == pytest.approx(0.5)  # even prompts scored > 0


def test_sampler_state_resumes_mid_epoch(shards, qwen_tokenizer) -> None:
    cfg = data_config()

    def make():
        ds = RLHFDataset(data_files=shards, tokenizer=qwen_tokenizer, config=cfg)
        s = GainCurriculumSampler(data_source=ds, data_config=cfg)
        return s, StatefulDataLoader(
            ds, batch_size=B, sampler=s, collate_fn=collate_fn, num_workers=0, drop_last=True
        )

    s1, l1 = make()
    it = iter(l1)
    rows = next(it)
    s1.update(step_batch(rows, [1.0] * B))
    state = l1.state_dict()
    want = [e["gain_uid"] for e in next(it)["extra_info"]]
    s2, l2 = make()
    l2.load_state_dict(state)
    got = [e["gain_uid"] for e in next(iter(l2))["extra_info"]]
    assert got == want and s2.schedule.mu == s1.schedule.mu


def test_custom_dataset_class_follows_plan_and_hears_batches(shards, qwen_tokenizer) -> None:
    cfg = data_config()
    ds = GainRLHFDataset(data_files=shards, tokenizer=qwen_tokenizer, config=cfg)
    assert len(ds) == 40
    loader = StatefulDataLoader(
        ds, batch_size=B, shuffle=False, collate_fn=collate_fn, num_workers=0, drop_last=True
    )
    it = iter(loader)
    rows = next(it)
    ranks = [e["gain_rank"] for e in rows["extra_info"]]
    assert len(set(ranks)) == B and max(ranks) < 20
    ds.on_batch_end(step_batch(rows, [1.0] * B))
    assert ds.schedule.mu > 0 and ds.schedule.epoch == 1
    state = ds.state_dict()
    ds2 = GainRLHFDataset(data_files=shards, tokenizer=qwen_tokenizer, config=cfg)
    ds2.load_state_dict(state)
    assert ds2.schedule.mu == ds.schedule.mu


def test_custom_dataset_class_passes_validation_through(shards, qwen_tokenizer) -> None:
    cfg = data_config()
    cfg.val_files = shards
    val = GainRLHFDataset(data_files=shards, tokenizer=qwen_tokenizer, config=cfg)
    plain = RLHFDataset(data_files=shards, tokenizer=qwen_tokenizer, config=cfg)
    assert val.passthrough and len(val) == len(plain) == 40
    assert [val[i]["extra_info"]["gain_uid"] for i in range(5)] == [
        plain[i]["extra_info"]["gain_uid"] for i in range(5)
    ]


def test_verl_resolves_the_class_path() -> None:
    from verl.utils.import_utils import load_extern_object

    assert (
        load_extern_object("pkg://gain_curate.integrations.verl", "GainCurriculumSampler")
        is GainCurriculumSampler
    )


def test_a_step_without_results_advances_without_moving_mu(shards, qwen_tokenizer) -> None:
    """Open loop (no update() came): the next draw starts a new epoch at the same mu."""
    cfg = data_config()
    ds = RLHFDataset(data_files=shards, tokenizer=qwen_tokenizer, config=cfg)
    sampler = GainCurriculumSampler(data_source=ds, data_config=cfg)
    it = iter(sampler)
    first = [next(it) for _ in range(2 * B)]
    assert len(set(first[:B])) == B and sampler.schedule.epoch == 1 and sampler.schedule.mu == 0
    assert sampler.schedule.history[0].event == "unscored"


def _fit_source(relpath: str, cls: str, fn: str) -> str:
    """A method's source from verl's files (importing the trainers needs more than verl's
    own dependencies)."""
    import ast

    import verl

    path = Path(verl.__file__).parent / relpath
    tree = ast.parse(path.read_text())
    klass = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls)
    node = next(n for n in klass.body if isinstance(n, ast.FunctionDef) and n.name == fn)
    return ast.get_source_segment(path.read_text(), node)


def test_the_metrics_shim_still_matches_verls_fit_loop() -> None:
    """The one shim (verl.py `_add_to_fit_metrics`) assumes: the trainer calls
    `sampler.update(batch=batch)` and then logs its local dict `metrics`, untouched in
    between (the separation trainer: `self.metrics`). Fails when verl changes that."""
    src = _fit_source("trainer/ppo/ray_trainer.py", "RayPPOTrainer", "fit")
    call = src.index("self.train_dataloader.sampler.update(batch=batch)")
    log = src.index("logger.log(data=metrics, step=self.global_steps)", call)
    assert "metrics = {}" in src[:call] and "metrics =" not in src[call:log]
    sep = "experimental/separation/ray_trainer.py"
    assert "self.train_dataloader.sampler.update(batch=batch)" in _fit_source(
        sep, "SeparateRayPPOTrainer", "_fit_experimental"
    )
    post = _fit_source(sep, "SeparateRayPPOTrainer", "_fit_postprocess_step")
    assert "metrics = self.metrics" in post and "self.logger.log(data=metrics" in post
    step = _fit_source(sep, "SeparateRayPPOTrainer", "fit_step")
    assert step.index("self._fit_experimental(batch)") < step.index("self._fit_postprocess_step()")


def test_the_metrics_shim_reaches_both_kinds_of_caller(shards, qwen_tokenizer) -> None:
    cfg = data_config()
    ds = RLHFDataset(data_files=shards, tokenizer=qwen_tokenizer, config=cfg)
    sampler = GainCurriculumSampler(data_source=ds, data_config=cfg)
    loader = StatefulDataLoader(ds, batch_size=B, sampler=sampler, collate_fn=collate_fn)
    it = iter(loader)

    class Separate:  # the separation trainer keeps the step's metrics on itself
        metrics: dict = {}

        def _fit_experimental(self, batch):
            sampler.update(batch=batch)

    trainer = Separate()
    trainer._fit_experimental(step_batch(next(it), [1.0] * B))
    assert trainer.metrics["gain/mu"] == sampler.schedule.mu > 0
