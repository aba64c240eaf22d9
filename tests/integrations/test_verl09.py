"""The verl adapters against REAL verl 0.9.1 (its V1 trainer is the default): our dataset class
built by verl's own `create_rl_dataset` from the config verl's `main_ppo` composes with our
flags, the V1 replay buffer hearing a step's rewards, checkpoint/resume through verl's
dataloader, and the open-loop export read in plan order through verl's own sampler builder.
Runs in the verl 0.9 environment `make test-integrations` builds; skipped elsewhere."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

verl = pytest.importorskip("verl", reason="verl not installed: run `make test-integrations`")
if tuple(int(x) for x in verl.__version__.split(".")[:2]) < (0, 9):
    pytest.skip(f"verl {verl.__version__}: these tests are for verl 0.9", allow_module_level=True)

from torchdata.stateful_dataloader import StatefulDataLoader  # noqa: E402
from verl.trainer.ppo.utils import create_rl_dataset, create_rl_sampler  # noqa: E402
from verl.utils.dataset.rl_dataset import RLHFDataset, collate_fn  # noqa: E402

from gain_curate.integrations.verl import GainRLHFDataset  # noqa: E402
from gain_curate.launch import run_score  # noqa: E402
from gain_curate.score import ScoreConfig  # noqa: E402

B = 8


@pytest.fixture(scope="module")
def run(tiny_qwen2_dir: Path, tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("verl09")
    data = tmp / "q.jsonl"
    data.write_text("".join(json.dumps({"question": f"What is {i} times {i + 3}?", "answer": str(i * (i + 3))}) + "\n"
                            for i in range(40)))  # fmt: skip
    run_score(ScoreConfig(data=str(data), model=str(tiny_qwen2_dir), out=tmp / "run", device="cpu"))
    return tmp / "run"


def shards(run: Path) -> list[str]:
    return sorted(str(p) for p in (run / "data").glob("*.parquet"))


def main_ppo_config(*overrides: str):
    """The config verl 0.9.1's `python -m verl.trainer.main_ppo <overrides>` composes."""
    from hydra import compose, initialize_config_dir

    cfg_dir = os.path.join(os.path.dirname(verl.__file__), "trainer", "config")
    with initialize_config_dir(config_dir=cfg_dir, version_base=None):
        return compose(config_name="ppo_trainer", overrides=list(overrides))


def our_flags(run: Path, *extra: str) -> list[str]:
    return [f"data.train_files=[{','.join(shards(run))}]", f"data.train_batch_size={B}",
            "data.custom_cls.path=pkg://gain_curate.integrations.verl", "data.custom_cls.name=GainRLHFDataset",
            "data.shuffle=False", "data.dataloader_num_workers=0", "data.max_prompt_length=512",
            "+data.gain.sigma=4", "+data.gain.n=3", "+data.gain.adj_max=12", "+data.gain.seed=1", *extra]  # fmt: skip


def test_verls_create_rl_dataset_builds_our_class_from_main_ppos_config(
    run: Path, qwen_tokenizer
) -> None:
    cfg = main_ppo_config(*our_flags(run))
    assert cfg.trainer.use_v1  # 0.9's default: the V1 trainer
    ds = create_rl_dataset(cfg.data.train_files, cfg.data, qwen_tokenizer, None, is_train=True,
                           max_samples=cfg.data.get("train_max_samples", -1))  # fmt: skip
    assert isinstance(ds, GainRLHFDataset) and not ds.passthrough and len(ds) == 40
    first = [ds[i]["extra_info"]["gain_rank"] for i in range(B)]
    assert len(set(first)) == B and max(first) < 20  # mu0 = 0: the top of the ranking


def test_default_dataloader_workers_are_refused_in_one_line(run: Path, qwen_tokenizer) -> None:
    flags = [f for f in our_flags(run) if not f.startswith("data.dataloader_num_workers")]
    cfg = main_ppo_config(*flags)  # verl's default: 8 workers, each with its own copy
    with pytest.raises(ValueError, match="set data.dataloader_num_workers=0") as e:
        create_rl_dataset(cfg.data.train_files, cfg.data, qwen_tokenizer, None)
    assert "\n" not in str(e.value)


def test_schedule_state_travels_in_verls_dataloader_checkpoint(run: Path, qwen_tokenizer) -> None:
    """V1 saves train_dataloader.state_dict() as data.pt; with 0 workers the dataset's
    state_dict (the schedule) rides in it, so a resumed run continues the same plan."""
    cfg = main_ppo_config(*our_flags(run))

    def loader():
        ds = create_rl_dataset(cfg.data.train_files, cfg.data, qwen_tokenizer, None)
        return ds, StatefulDataLoader(ds, batch_size=B, num_workers=0, drop_last=True, collate_fn=collate_fn,
                                      sampler=create_rl_sampler(cfg.data, ds))  # fmt: skip

    ds1, l1 = loader()
    it = iter(l1)
    rows = next(it)
    uids = [e["gain_uid"] for e in rows["extra_info"]]
    ds1._f.results(uids, [1.0] * B)  # what the replay buffer reports after step 1
    state = l1.state_dict()
    want = [e["gain_uid"] for e in next(it)["extra_info"]]
    ds2, l2 = loader()
    l2.load_state_dict(state)
    got = [e["gain_uid"] for e in next(iter(l2))["extra_info"]]
    assert ds2.schedule.mu == ds1.schedule.mu > 0 and got == want


def test_exported_plan_iterates_in_plan_order_through_verls_builders(
    run: Path, qwen_tokenizer
) -> None:
    """Open loop, no gain-curate code in the trainer: plain RLHFDataset, verl's own sampler
    (data.shuffle=False -> SequentialSampler) and batch size B replay the plan step by step."""
    import pyarrow.parquet as pq
    from click.testing import CliRunner

    from gain_curate.cli import main

    assert CliRunner().invoke(main, ["schedule", str(run), "--epochs", "4", "--batch-size", str(B),
                                     "--sigma", "4", "--n", "5"]).exit_code == 0  # fmt: skip
    res = CliRunner().invoke(main, ["export", str(run), "--format", "verl"])
    assert res.exit_code == 0, res.output
    path = run / "export" / "verl" / "plan.parquet"
    cfg = main_ppo_config(f"data.train_files=[{path}]", "data.shuffle=False", f"data.train_batch_size={B}",
                          "data.dataloader_num_workers=0", "data.max_prompt_length=512")  # fmt: skip
    ds = create_rl_dataset(cfg.data.train_files, cfg.data, qwen_tokenizer, None)
    assert type(ds) is RLHFDataset
    loader = StatefulDataLoader(ds, batch_size=cfg.data.train_batch_size, num_workers=0, drop_last=True,
                                collate_fn=collate_fn, sampler=create_rl_sampler(cfg.data, ds))  # fmt: skip
    plan = pq.read_table(run / "schedule" / "plan.parquet").to_pylist()
    for step, batch in enumerate(loader):
        assert [e["gain_uid"] for e in batch["extra_info"]] == [
            p["gain_uid"] for p in plan if p["epoch"] == step
        ]
    assert step == 3


@pytest.fixture(scope="module")
def transfer_queue():
    """A real TransferQueue on CPU, set up as verl's TaskRunnerV1 does (one storage unit:
    verl's default of 8 needs 9 Ray CPUs)."""
    import ray
    import transfer_queue as tq

    cfg = main_ppo_config()
    cfg.transfer_queue.enable = True
    cfg.transfer_queue.backend.SimpleStorage.num_data_storage_units = 1
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    tq.init(cfg.transfer_queue)
    yield tq
    tq.close()
    ray.shutdown()


def put_step(tq, rows: dict, correct: dict[str, list[float]], step: int) -> None:
    """What verl's agent loop writes for a finished step (agent_loop_tq.py): prompt keys, then
    each trajectory with its fields and an rm_scores row holding the reward at the end."""
    from verl.utils.tensordict_utils import list_of_dict_to_tensordict

    uids = [f"s{step}p{i}" for i in range(len(rows["extra_info"]))]
    tq.kv_batch_put(keys=uids, partition_id="train", tags=[{"is_prompt": True, "status": "pending", "global_steps": step}] * len(uids))  # fmt: skip
    for uid, info in zip(uids, rows["extra_info"]):
        for session, score in enumerate(correct[info["gain_uid"]]):
            prompts, responses = torch.tensor([1, 2, 3]), torch.tensor([4, 5, 6, 7][: 2 + session])
            mask = torch.ones(len(responses), dtype=torch.int64)
            rm = torch.zeros(len(responses), dtype=torch.float32)
            rm[-1] = score
            field = {"prompts": prompts, "responses": responses, "response_mask": mask, "input_ids": torch.cat([prompts, responses]),
                     "rm_scores": rm, "extra_info": dict(info), "uid": uid, "session_id": session, "global_steps": step,
                     "extra_fields": {"min_global_steps": step, "max_global_steps": step}}  # fmt: skip
            tag = {"status": "success", "prompt_len": 3, "response_len": len(responses), "seq_len": 3 + len(responses),
                   "global_steps": step, "min_global_steps": step, "max_global_steps": step}  # fmt: skip
            tq.kv_batch_put(keys=[f"{uid}_{session}_0"], fields=list_of_dict_to_tensordict([field]), tags=[tag], partition_id="train")  # fmt: skip
        tq.kv_put(key=uid, partition_id="train", tag={"status": "finished"})


def test_v1_replay_buffer_feeds_the_steps_rewards_to_the_schedule(run: Path, qwen_tokenizer, transfer_queue) -> None:  # fmt: skip
    """The closed loop under verl 0.9's default trainer: verl builds our dataset and resolves
    our replay buffer from main_ppo's config; sample() over real TransferQueue trajectories
    moves mu by the rule, and the next batch is drawn at the new mu."""
    import signal

    import numpy as np
    from verl.utils.import_utils import load_extern_object

    from gain_curate.integrations.verl_v1 import GainReplayBuffer
    from gain_curate.schedule import mu_update

    cfg = main_ppo_config(*our_flags(run, "trainer.v1.sampler.custom_sampler.path=pkg://gain_curate.integrations.verl_v1",
                                     "trainer.v1.sampler.custom_sampler.name=GainReplayBuffer"))  # fmt: skip
    ds = create_rl_dataset(cfg.data.train_files, cfg.data, qwen_tokenizer, None)
    loader = StatefulDataLoader(ds, batch_size=B, num_workers=0, drop_last=True, collate_fn=collate_fn,
                                sampler=create_rl_sampler(cfg.data, ds))  # fmt: skip
    it = iter(loader)
    rows = next(it)
    ranks = [e["gain_rank"] for e in rows["extra_info"]]
    # two rollouts per prompt: both right on even ranks, one of two on odd ranks
    correct = {e["gain_uid"]: [1.0, 1.0] if e["gain_rank"] % 2 == 0 else [1.0, 0.0] for e in rows["extra_info"]}  # fmt: skip
    put_step(transfer_queue, rows, correct, step=1)

    sampler_cfg = cfg.trainer.v1.sampler  # the kwargs verl's _build_replay_buffer passes
    cls = load_extern_object(sampler_cfg.custom_sampler.path, sampler_cfg.custom_sampler.name)
    assert cls is GainReplayBuffer
    rb = cls(trainer_mode="sync", trainer_config={}, max_off_policy_threshold=sampler_cfg.max_off_policy_threshold,
             max_off_policy_strategy=sampler_cfg.max_off_policy_strategy, sampler_kwargs=sampler_cfg.sampler_kwargs,
             refill_fn=lambda n: None, poll_interval=0.1)  # fmt: skip

    def hang(*_):
        raise TimeoutError("ReplayBuffer.sample did not return in 60 s")

    signal.signal(signal.SIGALRM, hang)
    signal.alarm(60)
    try:
        meta, metrics = rb.sample(global_steps=1, partition_id="train", batch_size=B)
    finally:
        signal.alarm(0)
    assert len(meta.keys) == 2 * B
    acc = float(np.mean([np.mean(v) for v in correct.values()]))
    want, _ = mu_update(0.0, acc, 0.0, ds.schedule.params, 40)
    assert ds.schedule.epoch == 1 and ds.schedule.mu == pytest.approx(want) and want > 0
    assert metrics["gain/mu"] == pytest.approx(want) and metrics["gain/acc"] == pytest.approx(acc)
    nxt = [e["gain_rank"] for e in next(it)["extra_info"]]  # drawn at the new mu
    assert np.mean(nxt) > np.mean(ranks)
    transfer_queue.kv_clear(keys=meta.keys, partition_id="train")
