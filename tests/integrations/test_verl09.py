"""The verl adapters against REAL verl 0.9.1 (its V1 trainer is the default): our dataset class
built by verl's own `create_rl_dataset` from the config verl's `main_ppo` composes with our
flags, the V1 replay buffer (built by verl's own builder) hearing a step's rewards and
filtering DAPO groups as verl's own buffer does, checkpoint/resume through verl's
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
from gain_curate.scoring.launch import run_score  # noqa: E402
from gain_curate.scoring.score import ScoreConfig  # noqa: E402

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


def put_group(tq, uid: str, info: dict, scores: list[float], step: int) -> None:
    """What verl's agent loop writes for one finished prompt (agent_loop_tq.py): its prompt key,
    then each trajectory with its fields and an rm_scores row holding the reward at the end."""
    from verl.utils.tensordict_utils import list_of_dict_to_tensordict

    tq.kv_batch_put(
        keys=[uid],
        partition_id="train",
        tags=[{"is_prompt": True, "status": "pending", "global_steps": step}],
    )
    for session, score in enumerate(scores):
        prompts, responses = torch.tensor([1, 2, 3]), torch.tensor([4, 5, 6, 7][: 2 + session])
        mask = torch.ones(len(responses), dtype=torch.int64)
        rm = torch.zeros(len(responses), dtype=torch.float32)
        rm[-1] = score
        field = {
            "prompts": prompts,
            "responses": responses,
            "response_mask": mask,
            "input_ids": torch.cat([prompts, responses]),
            "rm_scores": rm,
            "extra_info": dict(info),
            "uid": uid,
            "session_id": session,
            "global_steps": step,
            "extra_fields": {"min_global_steps": step, "max_global_steps": step},
        }
        tag = {
            "status": "success",
            "prompt_len": 3,
            "response_len": len(responses),
            "seq_len": 3 + len(responses),
            "global_steps": step,
            "min_global_steps": step,
            "max_global_steps": step,
        }
        tq.kv_batch_put(
            keys=[f"{uid}_{session}_0"],
            fields=list_of_dict_to_tensordict([field]),
            tags=[tag],
            partition_id="train",
        )
    tq.kv_put(key=uid, partition_id="train", tag={"status": "finished"})


class StubTrainer:
    """verl 0.9.1's V1 PPOTrainer as far as the replay buffer sees it, run by verl's own code:
    `_build_replay_buffer` (how verl builds a custom sampler or its own) and
    `_resolve_filter_groups_metric` are PPOTrainer's. `_add_prompts_to_generate` (the
    refill_fn verl hands the buffer) takes the next prompts and puts them in TransferQueue
    finished, with the rollout scores `scores_of(i)` gives the i-th prompt of the step."""

    def __init__(self, cfg, train_dataset, next_info, scores_of, tq, tag: str) -> None:
        from verl.trainer.ppo.v1.trainer_base import PPOTrainer

        self._build = PPOTrainer._build_replay_buffer.__get__(self)
        self._resolve_filter_groups_metric = PPOTrainer._resolve_filter_groups_metric.__get__(self)
        self.config, self.trainer_mode, self.train_dataset = (
            cfg,
            cfg.trainer.v1.trainer_mode,
            train_dataset,
        )
        self.next_info, self.scores_of, self.tq, self.tag = next_info, scores_of, tq, tag
        self.fed: list[dict] = []  # every prompt put, in order
        self.refills: list[int] = []

    def replay_buffer(self):
        return self._build()

    def _add_prompts_to_generate(self, num_prompts: int) -> int:
        self.refills.append(num_prompts)
        return self.put(num_prompts)

    def put(self, num_prompts: int, step: int = 1) -> int:
        for _ in range(num_prompts):
            info = self.next_info()
            put_group(
                self.tq, f"{self.tag}{len(self.fed)}", info, self.scores_of(len(self.fed)), step
            )
            self.fed.append(info)
        return num_prompts


def sample_within(rb, seconds: int = 60):
    import signal

    def hang(*_):
        raise TimeoutError(f"ReplayBuffer.sample did not return in {seconds} s")

    signal.signal(signal.SIGALRM, hang)
    signal.alarm(seconds)
    try:
        return rb.sample(global_steps=1, partition_id="train", batch_size=B)
    finally:
        signal.alarm(0)


def gain_flags(run: Path, *extra: str) -> list[str]:
    return our_flags(
        run,
        "trainer.v1.sampler.custom_sampler.path=pkg://gain_curate.integrations.verl_v1",
        "trainer.v1.sampler.custom_sampler.name=GainReplayBuffer",
        *extra,
    )


def v1_loader(cfg, ds, batch_size: int):
    return iter(
        StatefulDataLoader(
            ds,
            batch_size=batch_size,
            num_workers=0,
            drop_last=True,
            collate_fn=collate_fn,
            sampler=create_rl_sampler(cfg.data, ds),
        )
    )


def test_v1_replay_buffer_feeds_the_steps_rewards_to_the_schedule(
    run: Path, qwen_tokenizer, transfer_queue
) -> None:
    """The closed loop under verl 0.9's default trainer: verl builds our dataset, and builds our
    replay buffer from main_ppo's config; sample() over real TransferQueue trajectories moves
    mu by the rule, and the next batch is drawn at the new mu."""
    import numpy as np

    from gain_curate.curriculum.schedule import mu_update
    from gain_curate.integrations.verl_v1 import GainReplayBuffer

    cfg = main_ppo_config(*gain_flags(run))
    ds = create_rl_dataset(cfg.data.train_files, cfg.data, qwen_tokenizer, None)
    it = v1_loader(cfg, ds, B)
    rows = next(it)
    ranks = [e["gain_rank"] for e in rows["extra_info"]]
    # two rollouts per prompt: both right on even ranks, one of two on odd ranks
    queue = iter(rows["extra_info"])
    trainer = StubTrainer(
        cfg,
        ds,
        lambda: next(queue),
        lambda i: [1.0, 1.0] if ranks[i] % 2 == 0 else [1.0, 0.0],
        transfer_queue,
        tag="c",
    )
    trainer.put(B)
    rb = trainer.replay_buffer()
    assert type(rb) is GainReplayBuffer and rb.filter_groups_metric is None
    meta, metrics = sample_within(rb)
    assert len(meta.keys) == 2 * B and trainer.refills == []
    acc = float(np.mean([1.0 if r % 2 == 0 else 0.5 for r in ranks]))
    want, _ = mu_update(0.0, acc, 0.0, ds.schedule.params, 40)
    assert ds.schedule.epoch == 1 and ds.schedule.mu == pytest.approx(want) and want > 0
    assert metrics["gain/mu"] == pytest.approx(want) and metrics["gain/acc"] == pytest.approx(acc)
    plan = [ds.schedule.uids[r] for r in ds.schedule.plan_epoch()]  # epoch 1, at the new mu
    assert [e["gain_uid"] for e in next(it)["extra_info"]] == plan
    transfer_queue.kv_clear(keys=meta.keys, partition_id="train")


def test_v1_replay_buffer_gets_verls_own_filter_settings(run: Path, qwen_tokenizer) -> None:
    """verl hands a custom sampler no DAPO settings; ours resolves exactly those verl gives its
    own buffer, for DAPO on and off."""
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
        ],
        ["trainer.v1.sampler.sync_refill_failed_groups=True"],
        ["data.gen_batch_size=16"],
    ):
        ours = StubTrainer(
            main_ppo_config(*gain_flags(run, *extra)), None, None, None, None, "x"
        ).replay_buffer()
        verls = StubTrainer(
            main_ppo_config(*our_flags(run, *extra)), None, None, None, None, "x"
        ).replay_buffer()
        assert type(verls).__name__ == "ReplayBuffer" and type(ours).__name__ == "GainReplayBuffer"
        assert {n: getattr(ours, n) for n in names} == {n: getattr(verls, n) for n in names}, extra
    assert ours.filter_groups_metric is None
    dapo = StubTrainer(
        main_ppo_config(*gain_flags(run, "algorithm.filter_groups.enable=True")),
        None,
        None,
        None,
        None,
        "x",
    )
    assert dapo.replay_buffer().filter_groups_metric == "reward"


def test_v1_replay_buffer_under_dapo_keeps_what_verls_buffer_keeps(
    run: Path, qwen_tokenizer, transfer_queue
) -> None:
    """algorithm.filter_groups.enable=True: on the same input (B prompts of which 2 have
    zero-variance groups; each refill half zero-variance), GainReplayBuffer evicts, refills
    and keeps exactly what verl's own ReplayBuffer does. The refills continue the step's
    draws, and the step's accuracy counts the filtered groups too."""
    import numpy as np

    from gain_curate.curriculum.schedule import GainSchedule, mu_update

    def scores_of(i: int) -> list[float]:  # prompts 0, 1 and every even refill: all right
        return [1.0, 1.0] if i < 2 or (i >= B and i % 2 == 0) else [1.0, 0.0]

    dapo = ("algorithm.filter_groups.enable=True",)
    cfg = main_ppo_config(*gain_flags(run, *dapo))
    ds = create_rl_dataset(cfg.data.train_files, cfg.data, qwen_tokenizer, None)
    it = v1_loader(cfg, ds, 1)  # verl fetches one prompt at a time under DAPO
    ours = StubTrainer(
        cfg, ds, lambda: next(it)["extra_info"][0], scores_of, transfer_queue, tag="g"
    )
    ours.put(B)  # the step's batch (prepare_step), drawn before sample()
    meta, metrics = sample_within(ours.replay_buffer())
    assert ours.refills == [4] and len(ours.fed) == B + 4

    fed = iter(ours.fed)  # verl's own buffer, on the same prompts with the same scores
    verls = StubTrainer(
        main_ppo_config(*our_flags(run, *dapo)),
        None,
        lambda: next(fed),
        scores_of,
        transfer_queue,
        tag="v",
    )
    verls.put(B)
    vmeta, vmetrics = sample_within(verls.replay_buffer())

    def kept(keys: list[str], trainer: StubTrainer) -> list[tuple[str, str]]:
        return sorted(
            (trainer.fed[int(k.split("_")[0][1:])]["gain_uid"], k.split("_", 1)[1]) for k in keys
        )

    assert kept(meta.keys, ours) == kept(vmeta.keys, verls) and len(meta.keys) == 2 * B
    assert verls.refills == ours.refills == [4]
    assert (
        metrics["training/filter_groups/evicted_samples"]
        == vmetrics["training/filter_groups/evicted_samples"]
        == 4
    )
    zero_variance = {ours.fed[i]["gain_uid"] for i in range(B + 4) if len(set(scores_of(i))) == 1}
    assert not zero_variance & {u for u, _ in kept(meta.keys, ours)}

    # the schedule: 12 distinct draws of one epoch (the refills continue its order), then one
    # update with the accuracy of all 12 groups (8/12; the 8 kept alone would say 0.5)
    plain = GainSchedule(40, ds.schedule.params)
    assert [e["gain_uid"] for e in ours.fed] == [
        ds.schedule.uids[r] for r in plain.take(B + 4, extend=True)
    ]
    acc = float(np.mean([np.mean(scores_of(i)) for i in range(B + 4)]))
    assert acc == pytest.approx(8 / 12) and metrics["gain/acc"] == pytest.approx(acc)
    want, _ = mu_update(0.0, acc, 0.0, ds.schedule.params, 40)
    assert (ds.schedule.epoch, ds.schedule.consumed) == (1, 0) and want > 0
    assert ds.schedule.mu == pytest.approx(want)
    for m in (meta, vmeta):
        transfer_queue.kv_clear(keys=m.keys, partition_id="train")


def test_v1_replay_buffer_refusals_are_one_line(run: Path, qwen_tokenizer) -> None:
    from gain_curate.integrations.verl_v1 import GainReplayBuffer

    cfg = main_ppo_config(*gain_flags(run, "trainer.v1.trainer_mode=colocate_async"))
    with pytest.raises(ValueError, match="set trainer.v1.trainer_mode=sync") as e:
        StubTrainer(cfg, None, None, None, None, "x").replay_buffer()
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="no trainer's method"):
        GainReplayBuffer("sync", {}, 8, "drop", {}, refill_fn=lambda n: n)
    cfg = main_ppo_config(*gain_flags(run))
    plain = RLHFDataset(data_files=cfg.data.train_files, tokenizer=qwen_tokenizer, config=cfg.data)
    rb = StubTrainer(cfg, plain, None, None, None, "x").replay_buffer()
    with pytest.raises(ValueError, match="data.custom_cls.name=GainRLHFDataset") as e:
        rb.sample(global_steps=1, partition_id="train", batch_size=B)
    assert "\n" not in str(e.value)
