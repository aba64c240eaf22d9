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

from gain_curate.integrations.trl import GainGRPOTrainer, GainRepeatSampler  # noqa: E402
from gain_curate.launch import run_score  # noqa: E402
from gain_curate.schedule import mu_update  # noqa: E402
from gain_curate.score import ScoreConfig  # noqa: E402


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
    args = GRPOConfig(output_dir=str(tmp_path / "grpo"), use_cpu=True, per_device_train_batch_size=4, num_generations=2,
                      max_completion_length=6, max_steps=3, report_to="none", save_strategy="no", bf16=False, seed=0,
                      logging_steps=1, temperature=1.0)  # fmt: skip
    trainer = GainGRPOTrainer(model=model, reward_funcs=reward_has_digit, args=args, train_dataset=dataset,
                              processing_class=qwen_tokenizer, gain_params={"sigma": 3, "n": 4, "adj_max": 8, "adj_min": -8, "at_end": "hold"})  # fmt: skip
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
        assert rec["acc"] == pytest.approx(acc)
        assert rec["mu"] == pytest.approx(mu)
        mu, _ = mu_update(mu, acc, rec["ang"] or 0.0, sched.params, sched.n_prompts)
        assert rec["mu_next"] == pytest.approx(mu)


def test_online_angle_is_scores_metric_on_the_policys_current_weights(
    tiny_qwen2_dir: Path, qwen_tokenizer, tmp_path: Path
) -> None:
    """The angle term comes from generation's prefill with the weights of each step: at step
    0 it equals `score`'s C_intra / C_inter for the same prompts, weights and conversation
    (score run with the trainer's template: the question as the one user turn), at every
    step it equals a separate forward with the current weights, and it changes as they do."""
    import pyarrow.parquet as pq
    from transformers import AutoModelForCausalLM

    from gain_curate.template import ScoringTemplate

    data = tmp_path / "q.jsonl"
    data.write_text("".join(json.dumps({"question": f"Tom has {i} apples and buys {2 * i + 3} more. How many now?",
                                        "answer": str(3 * i + 3)}) + "\n" for i in range(24)))  # fmt: skip
    res = run_score(ScoreConfig(data=str(data), model=str(tiny_qwen2_dir), out=tmp_path / "run", device="cpu",
                                dtype="float32", template=ScoringTemplate(system_prompt=None, few_shot=())))  # fmt: skip
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
            again = self.gain_angles.measure(model, self._gain_segments, self.processing_class.pad_token_id)  # fmt: skip
            self.fresh.append({u: v[2] for u, v in zip(uids, again) if v is not None})
            return super()._online_angles(uids)

    def reward_odd_length(completions, **kwargs) -> list[float]:
        """A real reward that splits groups, so every step has a gradient."""
        texts = [c[0]["content"] if isinstance(c, list) else c for c in completions]
        return [float(len(t) % 2) for t in texts]

    model = AutoModelForCausalLM.from_pretrained(tiny_qwen2_dir)
    args = GRPOConfig(output_dir=str(tmp_path / "grpo"), use_cpu=True, per_device_train_batch_size=4, num_generations=2,
                      max_completion_length=8, max_steps=4, report_to="none", save_strategy="no", bf16=False, seed=0,
                      logging_steps=1, temperature=1.0, learning_rate=3e-2, gradient_checkpointing=False)  # fmt: skip
    trainer = Recording(model=model, reward_funcs=reward_odd_length, args=args, train_dataset=dataset,
                        processing_class=qwen_tokenizer, gain_params={"sigma": 3, "n": 40, "adj_min": -40})  # fmt: skip
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
    shift = [v[2] - (offline[u]["gain_c_intra"] + offline[u]["gain_c_inter"]) for s in trainer.steps[1:] for u, v in s.items()]  # fmt: skip
    assert max(abs(x) for x in shift) > 1e-3
    assert hist[0]["ang"] == pytest.approx(
        0.0, abs=1e-12
    )  # "change": 0 at the start by construction
    assert len({round(h["ang"], 9) for h in hist}) == 4  # and a different value every step
    logged = [h for h in trainer.state.log_history if "gain/mu" in h]
    assert logged and {"gain/acc", "gain/ang", "gain/angle_online", "gain/delta"} <= set(logged[0])


def _scored(tiny_qwen2_dir: Path, tmp_path: Path, n: int = 12) -> Path:
    data = tmp_path / "q.jsonl"
    data.write_text("".join(json.dumps({"question": f"What is {i} plus {i + 4}?", "answer": str(2 * i + 4)}) + "\n" for i in range(n)))  # fmt: skip
    run_score(
        ScoreConfig(data=str(data), model=str(tiny_qwen2_dir), out=tmp_path / "run", device="cpu")
    )
    return tmp_path / "run"


def test_iterable_dataset_is_refused_in_one_line_pointing_at_the_export(
    tiny_qwen2_dir: Path, qwen_tokenizer, tmp_path: Path
) -> None:
    """TRL 1.16 feeds an IterableDataset through repeat_iterable_dataset, never the sampler."""
    run = _scored(tiny_qwen2_dir, tmp_path)
    stream = load_dataset("parquet", data_files=str(run / "data" / "*.parquet"), streaming=True)["train"]  # fmt: skip
    args = GRPOConfig(output_dir=str(tmp_path / "g"), use_cpu=True, per_device_train_batch_size=2, num_generations=2,
                      max_steps=1, report_to="none", bf16=False)  # fmt: skip
    with pytest.raises(ValueError, match="export OUT --format verl") as e:
        GainGRPOTrainer(model=str(tiny_qwen2_dir), reward_funcs=lambda completions, **k: [0.0] * len(completions),
                        args=args, train_dataset=stream, processing_class=qwen_tokenizer)  # fmt: skip
    assert "\n" not in str(e.value)


def test_plain_grpo_trainer_follows_the_exported_plan_in_order(
    tiny_qwen2_dir: Path, qwen_tokenizer, tmp_path: Path
) -> None:
    """The open loop for TRL without our class (and for AsyncGRPOTrainer, which reads its
    dataset in order): the verl export, read in file order, is the plan."""
    import pyarrow.parquet as pq
    from trl import GRPOTrainer

    from gain_curate import store
    from gain_curate.export import export_verl
    from gain_curate.schedule import GainSchedule, ScheduleParams
    from gain_curate.simulate import AccuracyCurve, run_open_loop

    run = _scored(tiny_qwen2_dir, tmp_path)
    uids, scores = store.read_ranking(run)
    plans = run_open_loop(GainSchedule(len(uids), ScheduleParams(batch_size=4, sigma=3, n=4)), 3, AccuracyCurve(0.8, 0.8))  # fmt: skip
    store.write_plan(run, plans, uids)
    path, _ = export_verl(run)
    dataset = load_dataset("parquet", data_files=str(path))["train"]
    args = GRPOConfig(output_dir=str(tmp_path / "g"), use_cpu=True, per_device_train_batch_size=8, num_generations=2,
                      max_steps=1, report_to="none", bf16=False, shuffle_dataset=False)  # fmt: skip
    trainer = GRPOTrainer(model=str(tiny_qwen2_dir), reward_funcs=lambda completions, **k: [0.0] * len(completions),
                          args=args, train_dataset=dataset, processing_class=qwen_tokenizer)  # fmt: skip
    order = list(trainer._get_train_sampler())[::2]  # each prompt num_generations times in a row
    got = [dataset[i]["extra_info"]["gain_uid"] for i in order]
    want = [p["gain_uid"] for p in pq.read_table(run / "schedule" / "plan.parquet").to_pylist()]
    assert got == want


def test_repeat_sampler_contract() -> None:
    from gain_curate.schedule import GainSchedule, ScheduleParams

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
