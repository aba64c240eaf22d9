"""The TRL adapter against REAL TRL: a few GRPO steps on CPU with a tiny model, a real
reward function and our sampler; mu must move as the rule says for the rewards it saw.
Runs in the environment `make test-integrations` builds; skipped elsewhere."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("trl", reason="trl not installed: run `make test-integrations`")
from datasets import load_dataset  # noqa: E402
from trl import GRPOConfig  # noqa: E402

from gain_curate.curriculum.schedule import mu_update  # noqa: E402
from gain_curate.executor.launch import run_score  # noqa: E402
from gain_curate.executor.score import ScoreConfig  # noqa: E402
from gain_curate.integrations.trl import GainGRPOTrainer  # noqa: E402
from gain_curate.integrations.trl_state import GainRepeatSampler  # noqa: E402


def test_grpo_steps_move_mu_by_the_rule(
    tiny_qwen2_dir: Path, qwen_tokenizer, tmp_path: Path
) -> None:
    data = tmp_path / "q.jsonl"
    data.write_text(
        "".join(
            json.dumps({"question": f"Add {i} and {i + 1}.", "answer": str(2 * i + 1)}) + "\n"
            for i in range(24)
        )
    )
    res = run_score(
        ScoreConfig(data=str(data), model=str(tiny_qwen2_dir), out=tmp_path / "run", device="cpu")
    )
    files = [str(tmp_path / "run" / s["path"]) for s in res.manifest["shards"]]
    dataset = load_dataset("parquet", data_files=files)["train"]

    seen: list[tuple[str, float]] = []

    def reward_has_digit(completions, extra_info, **kwargs) -> list[float]:
        """A real reward: 1 if the completion contains a digit."""
        texts = [c[0]["content"] if isinstance(c, list) else c for c in completions]
        out = [1.0 if any(ch.isdigit() for ch in t) else 0.0 for t in texts]
        seen.extend((e["gain_uid"], r) for e, r in zip(extra_info, out))
        return out

    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_qwen2_dir)
    args = GRPOConfig(
        output_dir=str(tmp_path / "grpo"),
        use_cpu=True,
        per_device_train_batch_size=4,
        num_generations=2,
        max_completion_length=6,
        max_steps=3,
        report_to="none",
        save_strategy="no",
        bf16=False,
        seed=0,
        logging_steps=1,
        temperature=1.0,
    )
    trainer = GainGRPOTrainer(
        model=model,
        reward_funcs=reward_has_digit,
        args=args,
        train_dataset=dataset,
        processing_class=qwen_tokenizer,
        gain_params={"sigma": 3, "n": 4, "adj_max": 8, "adj_min": -8, "at_end": "hold"},
    )
    sampler = trainer._get_train_sampler()
    assert isinstance(sampler, GainRepeatSampler)
    trainer.train()

    sched = trainer.gain_schedule
    assert len(sched.history) == 3  # one schedule epoch per generation batch
    per_epoch = len(seen) // 3
    mu = 0.0
    for k, rec in enumerate(sched.history):
        chunk = seen[k * per_epoch : (k + 1) * per_epoch]
        by_uid: dict[str, list[float]] = {}
        for u, r in chunk:
            by_uid.setdefault(u, []).append(1.0 if r > 0 else 0.0)
        acc = float(np.mean([np.mean(v) for v in by_uid.values()]))
        assert rec.acc == pytest.approx(acc)
        assert rec.mu == pytest.approx(mu)
        mu, _ = mu_update(mu, acc, rec.ang or 0.0, sched.params, sched.n_prompts)
        assert rec.mu_next == pytest.approx(mu)


def test_online_angle_is_scores_metric_on_the_policys_current_weights(
    tiny_qwen2_dir: Path, qwen_tokenizer, tmp_path: Path
) -> None:
    """The angle term comes from generation's prefill with the weights of each step: at step
    0 it equals `score`'s C_intra / C_inter for the same prompts, weights and conversation
    (score run with the trainer's template: the question as the one user turn), at every
    step it equals a separate forward with the current weights, and it changes as they do."""
    import pyarrow.parquet as pq
    from transformers import AutoModelForCausalLM

    from gain_curate.inputs.template import ScoringTemplate

    data = tmp_path / "q.jsonl"
    data.write_text(
        "".join(
            json.dumps(
                {
                    "question": f"Tom has {i} apples and buys {2 * i + 3} more. How many now?",
                    "answer": str(3 * i + 3),
                }
            )
            + "\n"
            for i in range(24)
        )
    )
    res = run_score(
        ScoreConfig(
            data=str(data),
            model=str(tiny_qwen2_dir),
            out=tmp_path / "run",
            device="cpu",
            dtype="float32",
            template=ScoringTemplate(system_prompt=None, few_shot=()),
        )
    )
    files = [str(tmp_path / "run" / s["path"]) for s in res.manifest["shards"]]
    offline = {r["gain_uid"]: r for r in pq.read_table(files[0]).to_pylist()}
    dataset = load_dataset("parquet", data_files=files)["train"]

    class Recording(GainGRPOTrainer):
        steps: list[dict[str, tuple[float, float, float]]] = []
        fresh: list[dict[str, float]] = []

        def _online_angles(self, uids):
            cap = self._gain_capture
            self.steps.append({u: v for u, v in zip(uids, cap.values) if v is not None})
            model = self.accelerator.unwrap_model(self.model)
            again = self.gain_angles.measure(
                model, self._gain_segments, self.processing_class.pad_token_id
            )
            self.fresh.append({u: v[2] for u, v in zip(uids, again) if v is not None})
            return super()._online_angles(uids)

    def reward_odd_length(completions, **kwargs) -> list[float]:
        """A real reward that splits groups, so every step has a gradient."""
        texts = [c[0]["content"] if isinstance(c, list) else c for c in completions]
        return [float(len(t) % 2) for t in texts]

    model = AutoModelForCausalLM.from_pretrained(tiny_qwen2_dir)
    args = GRPOConfig(
        output_dir=str(tmp_path / "grpo"),
        use_cpu=True,
        per_device_train_batch_size=4,
        num_generations=2,
        max_completion_length=8,
        max_steps=4,
        report_to="none",
        save_strategy="no",
        bf16=False,
        seed=0,
        logging_steps=1,
        temperature=1.0,
        learning_rate=3e-2,
        gradient_checkpointing=False,
    )
    trainer = Recording(
        model=model,
        reward_funcs=reward_odd_length,
        args=args,
        train_dataset=dataset,
        processing_class=qwen_tokenizer,
        gain_params={"sigma": 3, "n": 40, "adj_min": -40},
    )
    trainer.train()

    hist = trainer.gain_schedule.history
    assert len(hist) == len(trainer.steps) == 4
    assert all(len(s) == 2 for s in trainer.steps)  # both prompts of every step measured
    for uid, (c_intra, c_inter, _) in trainer.steps[0].items():  # step 0 = the scoring weights
        assert c_intra == pytest.approx(offline[uid]["gain_c_intra"], abs=1e-4)
        assert c_inter == pytest.approx(offline[uid]["gain_c_inter"], abs=1e-4)
    for step, fresh in zip(trainer.steps, trainer.fresh):  # always the weights of that step
        assert set(step) == set(fresh)
        for uid, v in step.items():
            assert v[2] == pytest.approx(fresh[uid], abs=1e-4)
    # the weights move, so the same prompts measured now differ from their offline scores
    shift = [
        v[2] - (offline[u]["gain_c_intra"] + offline[u]["gain_c_inter"])
        for s in trainer.steps[1:]
        for u, v in s.items()
    ]
    assert max(abs(x) for x in shift) > 1e-3
    assert hist[0].ang == pytest.approx(0.0, abs=1e-12)  # "change": 0 at the start by construction
    assert len({round(h.ang, 9) for h in hist}) == 4  # and a different value every step
    logged = [h for h in trainer.state.log_history if "gain/mu" in h]
    assert logged and {"gain/acc", "gain/ang", "gain/angle_online", "gain/delta"} <= set(logged[0])


def _scored(tiny_qwen2_dir: Path, tmp_path: Path, n: int = 12, keep_states: bool = False) -> Path:
    data = tmp_path / "q.jsonl"
    data.write_text(
        "".join(
            json.dumps({"question": f"What is {i} plus {i + 4}?", "answer": str(2 * i + 4)}) + "\n"
            for i in range(n)
        )
    )
    run_score(
        ScoreConfig(
            data=str(data),
            model=str(tiny_qwen2_dir),
            out=tmp_path / "run",
            device="cpu",
            keep_states=keep_states,
        )
    )
    return tmp_path / "run"


def test_iterable_dataset_is_refused_in_one_line_pointing_at_the_export(
    tiny_qwen2_dir: Path, qwen_tokenizer, tmp_path: Path
) -> None:
    """TRL 1.16 feeds an IterableDataset through repeat_iterable_dataset, never the sampler."""
    run = _scored(tiny_qwen2_dir, tmp_path)
    stream = load_dataset("parquet", data_files=str(run / "data" / "*.parquet"), streaming=True)[
        "train"
    ]
    args = GRPOConfig(
        output_dir=str(tmp_path / "g"),
        use_cpu=True,
        per_device_train_batch_size=2,
        num_generations=2,
        max_steps=1,
        report_to="none",
        bf16=False,
    )
    with pytest.raises(ValueError, match="export/verl/plan.parquet, the plan in order") as e:
        GainGRPOTrainer(
            model=str(tiny_qwen2_dir),
            reward_funcs=lambda completions, **k: [0.0] * len(completions),
            args=args,
            train_dataset=stream,
            processing_class=qwen_tokenizer,
        )
    assert "\n" not in str(e.value)


def test_plain_grpo_trainer_follows_the_exported_plan_in_order(
    tiny_qwen2_dir: Path, qwen_tokenizer, tmp_path: Path
) -> None:
    """The open loop for TRL without our class (and for AsyncGRPOTrainer, which reads its
    dataset in order): the verl export, read in file order, is the plan."""
    import pyarrow.parquet as pq
    from trl import GRPOTrainer

    from gain_curate.curriculum.export import export_verl
    from gain_curate.curriculum.schedule import GainSchedule, ScheduleParams
    from gain_curate.curriculum.simulate import AccuracyCurve, run_open_loop
    from gain_curate.runfolder import store

    run = _scored(tiny_qwen2_dir, tmp_path)
    uids, scores = store.read_ranking(run)
    plans = run_open_loop(
        GainSchedule(len(uids), ScheduleParams(batch_size=4, sigma=3, n=4)),
        3,
        AccuracyCurve(0.8, 0.8),
    )
    store.write_plan(run, plans, uids)
    path, _ = export_verl(run)
    dataset = load_dataset("parquet", data_files=str(path))["train"]
    args = GRPOConfig(
        output_dir=str(tmp_path / "g"),
        use_cpu=True,
        per_device_train_batch_size=8,
        num_generations=2,
        max_steps=1,
        report_to="none",
        bf16=False,
        shuffle_dataset=False,
    )
    trainer = GRPOTrainer(
        model=str(tiny_qwen2_dir),
        reward_funcs=lambda completions, **k: [0.0] * len(completions),
        args=args,
        train_dataset=dataset,
        processing_class=qwen_tokenizer,
    )
    order = list(trainer._get_train_sampler())[::2]  # each prompt num_generations times in a row
    got = [dataset[i]["extra_info"]["gain_uid"] for i in order]
    want = [p["gain_uid"] for p in pq.read_table(run / "schedule" / "plan.parquet").to_pylist()]
    assert got == want


def test_repeat_sampler_contract() -> None:
    from gain_curate.curriculum.schedule import GainSchedule, ScheduleParams

    sched = GainSchedule(10, ScheduleParams(batch_size=3, sigma=2, seed=0))
    s = GainRepeatSampler(
        list(range(10)),
        mini_repeat_count=2,
        batch_size=3,
        repeat_count=2,
        schedule=sched,
        rows=list(range(10)),
    )
    got = list(s)
    assert len(got) == len(s) == 3 * 3 * 2 * 2
    chunk = got[:12]
    assert chunk[:6] == chunk[6:]  # chunk repeated repeat_count times
    assert all(
        chunk[i] == chunk[i + 1] for i in range(0, 6, 2)
    )  # each index mini_repeat_count times in a row
    assert len(set(chunk[:6])) == 3


def test_grpo_with_replay_buffer_is_gone_from_trl_1_16() -> None:
    """Checked so the README's claim stays true: TRL removed the experimental
    GRPOWithReplayBuffer module in 1.14; 1.16 has nothing of that name to adapt."""
    import importlib

    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("trl.experimental.grpo_with_replay_buffer")


def _right_for(uid: str) -> float:
    """A stand-in answer checker whose verdict depends only on the prompt."""
    import zlib

    return float(zlib.crc32(uid.encode()) % 2)


@pytest.mark.parametrize("online", [False, True], ids=["angle", "learnability-online"])
def test_resume_draws_what_an_uninterrupted_run_draws_and_format_is_not_correctness(
    tiny_qwen2_dir: Path, qwen_tokenizer, tmp_path: Path, online: bool
) -> None:
    """6 steps straight vs 3 steps, a checkpoint, a new trainer resumed from it, 3 more:
    the same prompts at every step and the same mu, acc and ang (the schedule, the
    sampler's place and its already-drawn chunk travel in the checkpoint; transformers'
    data skip meets placeholder batches). 8 prompts, 2 per step: the dataloader's epoch
    ends after step 4, so the resumed run also crosses an epoch boundary. Correct is the
    first reward function's verdict: the second, a format-only reward, never adds to acc.
    learnability-online: the refit probe serves from step 1 on (min_groups 2), its state
    travels in the same checkpoint, and the resumed run draws the same prompts."""
    from transformers import AutoModelForCausalLM, TrainerCallback

    run = _scored(tiny_qwen2_dir, tmp_path, n=8, keep_states=online)
    gain = {"sigma": 2, "n": 3, "adj_min": -3, "adj_max": 3}
    if online:
        gain |= {"rank_by": "learnability-online", "states": str(run), "min_groups": 2}
    dataset = load_dataset("parquet", data_files=str(run / "data" / "*.parquet"))["train"]

    class Recorder:
        def __init__(self) -> None:
            self.steps: list[list[str]] = []  # per generation: the uids in batch order
            self.right: list[list[float]] = []
            self.format: list[list[float]] = []

        def answer(self, completions, extra_info, **kwargs) -> list[float]:
            uids = [e["gain_uid"] for e in extra_info]
            self.steps.append(uids)
            self.right.append([_right_for(u) for u in uids])
            return self.right[-1]

        def format_only(self, completions, **kwargs) -> list[float]:
            texts = [c[0]["content"] if isinstance(c, list) else c for c in completions]
            self.format.append([float(len(t) % 2) for t in texts])
            return self.format[-1]

    class StopAt(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:
                control.should_training_stop = True

    def trainer(out: Path, rec: Recorder, **over) -> GainGRPOTrainer:
        args = GRPOConfig(
            **{
                "output_dir": str(out),
                "use_cpu": True,
                "per_device_train_batch_size": 4,
                "num_generations": 2,
                "max_completion_length": 6,
                "max_steps": 6,
                "report_to": "none",
                "save_strategy": "steps",
                "save_steps": 3,
                "bf16": False,
                "seed": 0,
                "logging_steps": 1,
                "temperature": 1.0,
                "learning_rate": 3e-2,
                **over,
            }
        )
        model = AutoModelForCausalLM.from_pretrained(tiny_qwen2_dir)
        funcs = [rec.answer, rec.format_only]
        return GainGRPOTrainer(
            model=model,
            reward_funcs=funcs,
            args=args,
            train_dataset=dataset,
            processing_class=qwen_tokenizer,
            gain_params=gain,
        )

    straight = Recorder()
    a = trainer(tmp_path / "a", straight, save_strategy="no")
    a.train()

    first = Recorder()
    b = trainer(tmp_path / "b", first)
    b.add_callback(StopAt())
    b.train()
    assert (tmp_path / "b" / "checkpoint-3" / "gain_curate_state.json").is_file()
    assert b.state.global_step == 3

    second = Recorder()
    c = trainer(tmp_path / "b", second)
    c.train(resume_from_checkpoint=str(tmp_path / "b" / "checkpoint-3"))

    got = first.steps + second.steps
    for k, (x, y) in enumerate(zip(straight.steps, got)):
        print(f"step {k}: uninterrupted {x[::2]}  resumed {y[::2]}")
    assert len(straight.steps) == len(got) == 6
    assert got == straight.steps
    keys = ("epoch", "mu", "mu_next", "acc", "delta", "pass")
    want = [{k: h.to_state()[k] for k in keys} for h in a.gain_schedule.history]
    have = [{k: h.to_state()[k] for k in keys} for h in c.gain_schedule.history]
    print("mu per step:", [h["mu"] for h in want], [h["mu"] for h in have])
    assert have == want
    assert [h.ang for h in c.gain_schedule.history] == pytest.approx(
        [h.ang for h in a.gain_schedule.history], abs=1e-6
    )
    assert not c._gain_warned
    if online:
        assert c.gain_schedule.learning_serves and c.gain_schedule.probe.refits == 6
        assert np.array_equal(c.gain_schedule.predicted(), a.gain_schedule.predicted())
        assert c.gain_schedule.served_zero_variance == a.gain_schedule.served_zero_variance

    # correct = the answer reward > 0; the format reward alone never makes a completion correct
    weighted_differs = False
    for h, right, fmt, uids in zip(
        a.gain_schedule.history, straight.right, straight.format, straight.steps
    ):
        by_uid: dict[str, list[float]] = {}
        for u, r in zip(uids, right):
            by_uid.setdefault(u, []).append(r)
        assert h.acc == pytest.approx(float(np.mean([np.mean(v) for v in by_uid.values()])))
        weighted_differs |= any(r == 0 and f > 0 for r, f in zip(right, fmt))
    assert weighted_differs  # wrong answers with a format reward were there to be miscounted

    # ignore_data_skip: transformers starts the epoch over, the sampler carries on where it was
    again = Recorder()
    d = trainer(tmp_path / "b", again, max_steps=4, ignore_data_skip=True, save_strategy="no")
    d.train(resume_from_checkpoint=str(tmp_path / "b" / "checkpoint-3"))
    assert again.steps == straight.steps[3:4]


def test_sampler_state_continues_the_stream_after_a_data_skip() -> None:
    """A sampler read ahead of training, saved, then a fresh one loaded with the batches a
    resumed Trainer will skip: after the placeholders it yields exactly what the first one
    would have yielded from the first untrained batch on, and nothing is drawn twice."""
    from gain_curate.curriculum.schedule import GainSchedule, ScheduleParams

    def make() -> GainRepeatSampler:
        sched = GainSchedule(12, ScheduleParams(batch_size=2, sigma=3, seed=1))
        return GainRepeatSampler(
            list(range(12)),
            mini_repeat_count=2,
            batch_size=2,
            repeat_count=1,
            schedule=sched,
            rows=list(range(12)),
        )

    ref = make()
    stream = list(ref) + list(ref)  # two dataloader epochs
    s = make()
    it = iter(s)
    head = [next(it) for _ in range(5 * 4)]  # 5 batches handed out (read ahead)...
    for _ in range(3):
        s.mark_trained()  # ...3 trained
    state = json.loads(json.dumps(s.state_dict()))
    assert state["trained"] == 12 and state["draws"] == 5 and set(state["chunks"]) == {"3", "4"}
    t = make()
    t.load_state_dict(state, lead_batches=3)
    resumed = list(t)
    assert len(resumed) == len(t)
    assert resumed[12:] == stream[12 : len(t)]  # placeholders, then batch 3 on
    assert head == stream[:20]
    assert list(t) == stream[len(t) :]  # the next epoch continues the stream
    with pytest.raises(ValueError, match="same num_generations"):
        GainRepeatSampler(
            list(range(12)),
            mini_repeat_count=4,
            batch_size=2,
            repeat_count=1,
            schedule=t.schedule,
            rows=list(range(12)),
        ).load_state_dict(state)


def test_correct_is_one_reward_function_over_a_threshold() -> None:
    import torch

    from gain_curate.integrations.trl import completion_correct, correct_column

    names = ["accuracy", "format"]
    assert correct_column(0, names) == 0
    assert correct_column("format", names) == 1
    assert correct_column(-1, names) == 1
    assert correct_column("weighted", names) is None
    for bad in (2, "nope", True):
        with pytest.raises(ValueError, match="not a reward function"):
            correct_column(bad, names)
    nan = float("nan")
    r = torch.tensor([[0.0, 1.0], [1.0, 0.0], [nan, 1.0], [0.5, 0.5], [nan, nan]])
    w = torch.ones(2)
    assert completion_correct(r, w, 0, 0.0) == [0.0, 1.0, None, 1.0, None]
    assert completion_correct(r, w, 0, 0.5) == [0.0, 1.0, None, 0.0, None]
    assert completion_correct(r, w, None, 0.0) == [1.0, 1.0, 1.0, 1.0, None]  # the old rule


def test_partial_capture_falls_back_for_the_missing_rows() -> None:
    """The capture matched only some rows (e.g. the first multi-token forward it saw was
    not the prompts' prefill): the rows it missed get the prompt-only forward; rows
    without segments are not measured; matched rows keep their captured values."""
    from types import SimpleNamespace

    calls: list[list[str]] = []

    def measure(model, segments, pad_id):
        calls.append(list(segments))
        return [(0.0, 0.0, 10.0 + int(s[1:])) for s in segments]

    cap = SimpleNamespace(values=[(0.0, 0.0, 1.0), None, None, (0.0, 0.0, 4.0)])
    stand_in = SimpleNamespace(
        _gain_capture=cap,
        _gain_segments=["s0", "s1", None, "s3"],
        gain_angles=SimpleNamespace(measure=measure),
        accelerator=SimpleNamespace(unwrap_model=lambda m: m),
        model=object(),
        processing_class=SimpleNamespace(pad_token_id=0),
    )
    uids, online = GainGRPOTrainer._online_angles(stand_in, ["a", "b", "c", "d"])
    assert calls == [["s1"]]
    assert dict(zip(uids, online)) == {"a": 1.0, "b": 11.0, "d": 4.0}
    cap.values = None  # nothing captured (vLLM): every row with segments
    uids, online = GainGRPOTrainer._online_angles(stand_in, ["a", "b", "c", "d"])
    assert calls[-1] == ["s0", "s1", "s3"]
    assert dict(zip(uids, online)) == {"a": 10.0, "b": 11.0, "d": 13.0}
