"""The verl adapters against REAL verl 0.9.1 (its V1 trainer is the default): our dataset class
built by verl's own `create_rl_dataset` from the config verl's `main_ppo` composes with our
flags, the V1 replay buffer (built by verl's own builder) hearing a step's rewards and
filtering DAPO groups as verl's own buffer does, checkpoint/resume through verl's
dataloader, and the open-loop export read in plan order through verl's own sampler builder.
Runs in the verl 0.9 environment `make test-integrations` builds; skipped elsewhere."""

from __future__ import annotations

import asyncio
import json
import os
import re
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

verl = pytest.importorskip("verl", reason="verl not installed: run `make test-integrations`")
if tuple(int(x) for x in verl.__version__.split(".")[:2]) < (0, 9):
    pytest.skip(f"verl {verl.__version__}: these tests are for verl 0.9", allow_module_level=True)
VERL_091 = tuple(int(x) for x in verl.__version__.split(".")[:3]) >= (0, 9, 1)

from omegaconf import open_dict  # noqa: E402
from torchdata.stateful_dataloader import StatefulDataLoader  # noqa: E402
from verl.trainer.ppo.utils import create_rl_dataset, create_rl_sampler  # noqa: E402
from verl.utils.dataset.rl_dataset import RLHFDataset, collate_fn  # noqa: E402

from gain_curate.executor.launch import run_score  # noqa: E402
from gain_curate.executor.score import ScoreConfig  # noqa: E402
from gain_curate.integrations.verl import GainRLHFDataset  # noqa: E402

B = 8


@pytest.fixture(scope="module")
def run(tiny_qwen2_dir: Path, tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("verl09")
    data = tmp / "q.jsonl"
    data.write_text(
        "".join(
            json.dumps({"question": f"What is {i} times {i + 3}?", "answer": str(i * (i + 3))})
            + "\n"
            for i in range(40)
        )
    )
    cfg = ScoreConfig(
        data=str(data),
        model=str(tiny_qwen2_dir),
        out=tmp / "run",
        device="cpu",
        data_source="openai/gsm8k",  # verl's default reward scores it (GSM8K's #### answer)
        keep_states=True,  # the online learnability mode reads them (the shards are the same)
    )
    run_score(cfg)
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
    return [
        f"data.train_files=[{','.join(shards(run))}]",
        f"data.train_batch_size={B}",
        "data.custom_cls.path=pkg://gain_curate.integrations.verl",
        "data.custom_cls.name=GainRLHFDataset",
        "data.shuffle=False",
        "data.dataloader_num_workers=0",
        "data.max_prompt_length=512",
        "+data.gain.sigma=4",
        "+data.gain.n=3",
        "+data.gain.adj_max=12",
        "+data.gain.seed=1",
        *extra,
    ]


def test_verls_create_rl_dataset_builds_our_class_from_main_ppos_config(
    run: Path, qwen_tokenizer
) -> None:
    cfg = main_ppo_config(*our_flags(run))
    assert cfg.trainer.use_v1  # 0.9's default: the V1 trainer
    ds = create_rl_dataset(
        cfg.data.train_files,
        cfg.data,
        qwen_tokenizer,
        None,
        is_train=True,
        max_samples=cfg.data.get("train_max_samples", -1),
    )
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
        return ds, StatefulDataLoader(
            ds,
            batch_size=B,
            num_workers=0,
            drop_last=True,
            collate_fn=collate_fn,
            sampler=create_rl_sampler(cfg.data, ds),
        )

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


def test_online_learnability_draws_resume_through_verls_dataloader_checkpoint(
    run: Path, qwen_tokenizer, tmp_path: Path
) -> None:
    """+data.gain.rank_by=learnability-online: after min_groups results the refit probe
    serves; the dataloader state verl's V1 checkpoint saves (torch.save of data.pt) holds the
    probe, so a resumed run draws what an uninterrupted one draws."""
    import torch

    flags = [
        "+data.gain.rank_by=learnability-online",
        f"+data.gain.states={run}",
        f"+data.gain.min_groups={B}",
    ]
    cfg = main_ppo_config(*our_flags(run, *flags))

    def loader():
        ds = create_rl_dataset(cfg.data.train_files, cfg.data, qwen_tokenizer, None)
        return ds, StatefulDataLoader(
            ds,
            batch_size=B,
            num_workers=0,
            drop_last=True,
            collate_fn=collate_fn,
            sampler=create_rl_sampler(cfg.data, ds),
        )

    def right(uid: str) -> float:
        return float(int(uid[:2], 16) % 3 != 0)

    def steps(ds, it, k: int) -> list[list[str]]:
        out = []
        for _ in range(k):
            uids = [e["gain_uid"] for e in next(it)["extra_info"]]
            out.append(uids)
            metrics = ds._f.results(uids, [right(u) for u in uids])
        assert "gain/zero_var" in metrics and metrics["gain/refits"] >= 1
        return out

    ds, l0 = loader()
    assert type(ds._f.schedule).__name__ == "LearnabilitySchedule"
    straight = steps(ds, iter(l0), 4)
    assert ds._f.schedule.learning_serves

    ds1, l1 = loader()
    it = iter(l1)
    first = steps(ds1, it, 2)
    torch.save(l1.state_dict(), tmp_path / "data.pt")
    ds2, l2 = loader()
    l2.load_state_dict(torch.load(tmp_path / "data.pt", weights_only=False))
    second = steps(ds2, iter(l2), 2)
    assert first + second == straight
    assert np.array_equal(ds2._f.schedule.predicted(), ds._f.schedule.predicted())


def test_exported_plan_iterates_in_plan_order_through_verls_builders(
    run: Path, qwen_tokenizer
) -> None:
    """Open loop, no gain-curate code in the trainer: plain RLHFDataset, verl's own sampler
    (data.shuffle=False -> SequentialSampler) and batch size B replay the plan step by step."""
    import pyarrow.parquet as pq
    from click.testing import CliRunner

    from gain_curate.cli import main

    assert (
        CliRunner()
        .invoke(
            main,
            [
                "schedule",
                str(run),
                "--epochs",
                "4",
                "--batch-size",
                str(B),
                "--sigma",
                "4",
                "--n",
                "5",
            ],
        )
        .exit_code
        == 0
    )
    res = CliRunner().invoke(main, ["export", str(run), "--format", "verl"])
    assert res.exit_code == 0, res.output
    path = run / "export" / "verl" / "plan.parquet"
    cfg = main_ppo_config(
        f"data.train_files=[{path}]",
        "data.shuffle=False",
        f"data.train_batch_size={B}",
        "data.dataloader_num_workers=0",
        "data.max_prompt_length=512",
    )
    ds = create_rl_dataset(cfg.data.train_files, cfg.data, qwen_tokenizer, None)
    assert type(ds) is RLHFDataset
    loader = StatefulDataLoader(
        ds,
        batch_size=cfg.data.train_batch_size,
        num_workers=0,
        drop_last=True,
        collate_fn=collate_fn,
        sampler=create_rl_sampler(cfg.data, ds),
    )
    plan = pq.read_table(run / "schedule" / "plan.parquet").to_pylist()
    for step, batch in enumerate(loader):
        assert [e["gain_uid"] for e in batch["extra_info"]] == [
            p["gain_uid"] for p in plan if p["epoch"] == step
        ]
    assert step == 3


class StubTrainer:
    """verl's V1 PPOTrainer as far as building the replay buffer goes, run by verl's own code:
    `_build_replay_buffer` (how verl builds a custom sampler or its own) and
    `_resolve_filter_groups_metric` are PPOTrainer's; `_add_prompts_to_generate` is the
    refill_fn verl hands the buffer (never called here)."""

    def __init__(self, cfg, train_dataset=None) -> None:
        from verl.trainer.ppo.v1.trainer_base import PPOTrainer

        self._build = PPOTrainer._build_replay_buffer.__get__(self)
        self._resolve_filter_groups_metric = PPOTrainer._resolve_filter_groups_metric.__get__(self)
        self.config, self.trainer_mode = cfg, cfg.trainer.v1.trainer_mode
        self.train_dataset = train_dataset

    def replay_buffer(self):
        return self._build()

    def _add_prompts_to_generate(self, num_prompts: int) -> int:
        raise AssertionError("no refill expected")


def gain_flags(run: Path, *extra: str) -> list[str]:
    return our_flags(
        run,
        "trainer.v1.sampler.custom_sampler.path=pkg://gain_curate.integrations.verl_v1",
        "trainer.v1.sampler.custom_sampler.name=GainReplayBuffer",
        *extra,
    )


@pytest.fixture(scope="module")
def transfer_queue():
    """A real TransferQueue on CPU, set up as verl's TaskRunnerV1 does (one storage unit:
    verl's default of 8 needs 9 Ray CPUs); 4 logical Ray CPUs also hold the reward worker."""
    import ray
    import transfer_queue as tq

    cfg = main_ppo_config()
    cfg.transfer_queue.enable = True
    cfg.transfer_queue.backend.SimpleStorage.num_data_storage_units = 1
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    tq.init(cfg.transfer_queue)
    yield tq
    tq.close()
    ray.shutdown()


def right_of(index: int) -> list[bool]:
    """The stand-in LLM's two answers to question `index`: both right on even questions, one
    of two on odd ones (groups of zero variance on even questions: what DAPO filters out)."""
    return [True, True] if index % 2 == 0 else [True, False]


class ScriptedLLM:
    """The one stand-in: the LLM server verl's SingleTurnAgentLoop calls (`generate`, the
    client's signature), answering "What is i times i+3?" in GSM8K's `#### answer` format,
    right or wrong as `right_of(i)` says, its n calls per question in turn."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer, self.calls = tokenizer, Counter()

    async def generate(self, request_id: str, prompt_ids: list[int], sampling_params, **_):
        from verl.workers.rollout.replica import TokenOutput

        text = self.tokenizer.decode(prompt_ids)
        i = int(re.findall(r"What is (\d+) times", text)[-1])
        right = right_of(i)[self.calls[i] % 2]
        self.calls[i] += 1
        answer = i * (i + 3) if right else -1
        ids = self.tokenizer.encode(f"So the answer is #### {answer}", add_special_tokens=False)
        return TokenOutput(token_ids=[*ids, self.tokenizer.eos_token_id], extra_fields={})


@pytest.fixture(scope="module")
def event_loop_thread():
    """The event loop an AgentLoopWorkerTQ actor runs its rollouts on, in a thread here."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)


def loop_flags(run: Path, tiny_qwen2_dir: Path, *extra: str) -> list[str]:
    """main_ppo flags for the GRPO loop below: our dataset and buffer, the tiny model's
    tokenizer, n=2 rollouts per prompt, verl's default (naive) reward manager, one worker."""
    return gain_flags(
        run,
        f"data.val_files=[{run.parent / 'val.parquet'}]",
        f"actor_rollout_ref.model.path={tiny_qwen2_dir}",
        "actor_rollout_ref.rollout.name=vllm",
        "actor_rollout_ref.rollout.n=2",
        "algorithm.adv_estimator=grpo",
        "actor_rollout_ref.actor.use_kl_loss=False",
        "reward.num_workers=1",
        "trainer.logger=[console]",
        "trainer.val_before_train=False",
        "trainer.test_freq=-1",
        "trainer.save_freq=-1",
        *extra,
    )


@pytest.fixture(scope="module")
def reward_loop(run: Path, tiny_qwen2_dir: Path, transfer_queue):
    """verl's RewardLoopManager: its one Ray reward worker (named, so one per Ray session)."""
    from verl.experimental.reward_loop import RewardLoopManager

    return RewardLoopManager(
        config=main_ppo_config(*loop_flags(run, tiny_qwen2_dir)), rm_resource_pool=None
    )


def fit(cfg, loop, tq, reward_loop, steps: int) -> tuple[Any, list[dict], list[dict]]:
    """verl 0.9's V1 sync trainer, `PPOTrainerSync.fit` for `steps` steps, run for real from
    the dataloader to TransferQueue and back: `step` (prepare_step, then parameter_sync_step
    calls of `_step_once` -> our buffer's sample()), the refills, verl's AgentLoopWorkerTQ
    with its SingleTurnAgentLoop (rollouts, `_agent_loop_postprocess` writing each trajectory
    to TransferQueue) and its RewardLoopManager's Ray reward worker (naive manager, verl's
    GSM8K score). Stand-ins: the LLM (ScriptedLLM), the Ray hop from the manager to the
    worker, and the GPU stages after sampling (log-probs, advantage, actor update: identity).

    Returns the trainer, the metrics each step logs, and every prompt submitted (global step,
    uid, extra_info), in order."""
    from verl.trainer.ppo.v1 import get_trainer_cls
    from verl.trainer.ppo.v1.agent_loop_tq import AgentLoopWorkerTQ

    trainer = get_trainer_cls("sync")(config=cfg)
    trainer._init_tokenizer()
    trainer._init_dataloader()
    trainer._init_dump_executor()
    trainer.reward_loop_manager = reward_loop
    worker_cls = AgentLoopWorkerTQ.__ray_metadata__.modified_class.__bases__[0]  # unwrapped

    def on_loop(coro):
        return asyncio.run_coroutine_threadsafe(coro, loop).result(120)

    async def make_worker():
        llm = ScriptedLLM(trainer.tokenizer)
        return worker_cls(cfg, llm, None, trainer.get_reward_handles())

    worker = on_loop(make_worker())
    submitted: list[dict] = []

    class Manager:  # AgentLoopManagerTQ.generate_sequences, minus its ray.get to the actor
        def generate_sequences(self, batch) -> None:
            for uid, info in zip(batch["uid"], batch["extra_info"], strict=True):
                submitted.append({"step": trainer.global_steps, "uid": uid, "info": info})
            on_loop(worker.generate_sequences(batch))

    class Idle:  # the checkpoint engine: weight sync to rollout replicas (there are none)
        def __getattr__(self, name):
            return lambda *a, **k: None

    trainer.checkpoint_manager = Idle()
    for stage in ("_balance_batch", "_compute_old_log_prob", "_compute_advantage", "_update_actor"):
        setattr(trainer, stage, lambda batch, metrics=None, **_: batch)
    logged: list[dict] = []
    trainer._compute_metrics = lambda batch, metrics, *a, **k: logged.append(
        {**metrics, "keys": list(batch.keys)}
    )
    trainer.global_steps = 0
    with open_dict(trainer.config):
        trainer.config.trainer.total_training_steps = steps
    trainer.total_training_steps = steps
    trainer.fit(Manager())
    leftover = list((tq.kv_list("train") or {}).get("train", {}))
    if leftover:  # what the next test must not see
        tq.kv_clear(keys=leftover, partition_id="train")
    return trainer, logged, submitted


@pytest.fixture(scope="module")
def val_file(run: Path) -> Path:
    import pyarrow.parquet as pq

    path = run.parent / "val.parquet"
    pq.write_table(pq.read_table(shards(run)[0]).slice(0, 4), path)
    return path


def acc_of(prompts: list[dict]) -> float:
    return float(np.mean([np.mean(right_of(p["info"]["index"])) for p in prompts]))


@pytest.mark.parametrize("sync_steps", [1, 2])
def test_v1_fit_moves_mu_once_per_trainer_step(
    run: Path,
    tiny_qwen2_dir: Path,
    val_file: Path,
    transfer_queue,
    event_loop_thread,
    reward_loop,
    sync_steps,
) -> None:
    """verl's real loop, trainer.v1.sync.parameter_sync_step = 1 and 2: step() draws B prompts,
    then samples B / k groups k times; the schedule ends one epoch per trainer step, on the
    accuracy of all B prompts (verl's reward, read from what its agent loop wrote), and the
    next step's prompts are drawn at the new mu."""
    from gain_curate.curriculum.schedule import GainSchedule

    cfg = main_ppo_config(
        *loop_flags(run, tiny_qwen2_dir, f"+trainer.v1.sync.parameter_sync_step={sync_steps}")
    )
    trainer, logged, submitted = fit(cfg, event_loop_thread, transfer_queue, reward_loop, steps=2)
    ds = trainer.train_dataset
    assert ds.schedule.epoch == 2  # one epoch per trainer step, not per sample() call
    plain = GainSchedule(40, ds.schedule.params)  # the same rule, fed what verl's reward said
    for step, metrics in enumerate(logged, start=1):
        prompts = [p for p in submitted if p["step"] == step]
        assert [p["info"]["gain_uid"] for p in prompts] == [
            ds.schedule.uids[r] for r in plain.plan_epoch()
        ]  # drawn at the mu the previous step left
        assert len(metrics["keys"]) == 2 * B  # every trajectory of the step trained
        plain.observe_accuracy([acc_of(prompts)])
        mu = plain.end_epoch().mu_next
        assert metrics["gain/acc"] == pytest.approx(acc_of(prompts))
        assert metrics["gain/mu"] == pytest.approx(mu)
    assert ds.schedule.mu == pytest.approx(mu) and mu > 0
    assert trainer.replay_buffer.sync_steps == sync_steps


def test_v1_replay_buffer_gets_verls_own_filter_settings(run: Path, qwen_tokenizer) -> None:
    """verl hands a custom sampler no DAPO settings; ours resolves exactly those verl gives its
    own buffer, for DAPO on and off, and follows each verl's filter_groups.metric default:
    0.9.1's "reward" (rm_scores), 0.9.0's none (verl refuses DAPO without one: so does ours)."""
    names = (
        "filter_groups_metric",
        "sync_refill_failed_groups",
        "train_batch_size",
        "gen_batch_size",
        "max_inflight_gen_batches",
        "max_off_policy_threshold",
        "max_off_policy_strategy",
    )
    for extra in (
        [],
        [
            "algorithm.filter_groups.enable=True",
            "algorithm.filter_groups.max_inflight_gen_batches=3",
            "algorithm.filter_groups.metric=acc",
        ],
        ["trainer.v1.sampler.sync_refill_failed_groups=True"],
        ["data.gen_batch_size=16"],
    ):
        ours = StubTrainer(main_ppo_config(*gain_flags(run, *extra))).replay_buffer()
        verls = StubTrainer(main_ppo_config(*our_flags(run, *extra))).replay_buffer()
        assert type(verls).__name__ == "ReplayBuffer" and type(ours).__name__ == "GainReplayBuffer"
        assert {n: getattr(ours, n) for n in names} == {n: getattr(verls, n) for n in names}, extra
    assert ours.filter_groups_metric is None
    dapo = "algorithm.filter_groups.enable=True"
    if VERL_091:
        for flags in (gain_flags(run, dapo), our_flags(run, dapo)):
            assert StubTrainer(main_ppo_config(*flags)).replay_buffer().filter_groups_metric == (
                "reward"
            )
    else:
        for flags in (gain_flags(run, dapo), our_flags(run, dapo)):
            with pytest.raises(ValueError, match="filter_groups.metric must be set"):
                StubTrainer(main_ppo_config(*flags)).replay_buffer()


def test_v1_fit_under_dapo_counts_every_group_of_the_step(
    run: Path, tiny_qwen2_dir: Path, val_file: Path, transfer_queue, event_loop_thread, reward_loop
) -> None:
    """algorithm.filter_groups.enable=True, verl's real loop: verl's own filter (the buffer's
    superclass) evicts the zero-variance groups (even questions, all right), refills, drains
    and discards the surplus; the refills continue the step's draws (one schedule epoch), the
    step trains B mixed groups, and its accuracy counts every group rolled out for it (the
    kept ones alone would say 0.5). 0.9.1 filters on its default metric ("reward":
    rm_scores), 0.9.0 on reward_extra_info["acc"] (it has no default)."""
    from gain_curate.curriculum.schedule import GainSchedule

    metric = [] if VERL_091 else ["algorithm.filter_groups.metric=acc"]
    flags = ["algorithm.filter_groups.enable=True", *metric]
    cfg = main_ppo_config(*loop_flags(run, tiny_qwen2_dir, *flags))
    trainer, logged, submitted = fit(cfg, event_loop_thread, transfer_queue, reward_loop, steps=1)
    ds, (metrics,) = trainer.train_dataset, logged
    assert trainer.replay_buffer.filter_groups_metric == ("reward" if VERL_091 else "acc")
    by_uid = {p["uid"]: p["info"]["index"] for p in submitted}
    kept = [by_uid[k.split("_")[0]] for k in metrics["keys"]]
    zero_variance = [p for p in submitted if p["info"]["index"] % 2 == 0]
    assert len(set(kept)) == B and all(i % 2 == 1 for i in kept) and len(kept) == 2 * B
    assert metrics["training/filter_groups/evicted_samples"] == len(zero_variance) > 0
    surplus = metrics.get("training/filter_groups/discarded_surplus_samples", 0)
    assert len(submitted) == B + len(zero_variance) + surplus
    plain = GainSchedule(40, ds.schedule.params)
    assert [p["info"]["gain_uid"] for p in submitted] == [
        ds.schedule.uids[r] for r in plain.take(len(submitted), extend=True)
    ]  # one epoch's draws, in order
    assert metrics["gain/acc"] == pytest.approx(acc_of(submitted)) and acc_of(submitted) > 0.5
    assert (ds.schedule.epoch, ds.schedule.consumed) == (1, 0)


def test_v1_dapo_with_several_samples_per_step_is_refused_in_one_line(run: Path) -> None:
    """verl's sync DAPO buffer discards the step's other groups at its first sample(): with
    parameter_sync_step > 1 the second would wait forever (read in replay_buffer.sample)."""
    metric = [] if VERL_091 else ["algorithm.filter_groups.metric=acc"]
    flags = ["algorithm.filter_groups.enable=True", "+trainer.v1.sync.parameter_sync_step=2"]
    cfg = main_ppo_config(*gain_flags(run, *flags, *metric))
    with pytest.raises(ValueError, match="parameter_sync_step=2 would hang") as e:
        StubTrainer(cfg).replay_buffer()
    assert "\n" not in str(e.value)


def test_v1_replay_buffer_refusals_are_one_line(run: Path, qwen_tokenizer) -> None:
    from gain_curate.integrations.verl_v1 import GainReplayBuffer

    cfg = main_ppo_config(*gain_flags(run, "trainer.v1.trainer_mode=colocate_async"))
    with pytest.raises(ValueError, match="set trainer.v1.trainer_mode=sync") as e:
        StubTrainer(cfg).replay_buffer()
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="no trainer's method"):
        GainReplayBuffer("sync", {}, 8, "drop", {}, refill_fn=lambda n: n)
    cfg = main_ppo_config(*gain_flags(run))
    plain = RLHFDataset(data_files=cfg.data.train_files, tokenizer=qwen_tokenizer, config=cfg.data)
    rb = StubTrainer(cfg, plain).replay_buffer()
    with pytest.raises(ValueError, match="data.custom_cls.name=GainRLHFDataset") as e:
        rb.sample(global_steps=1, partition_id="train", batch_size=B)
    assert "\n" not in str(e.value)
