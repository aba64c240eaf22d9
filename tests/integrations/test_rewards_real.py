"""`validate --rollouts` with the trainers' own rewards, against REAL verl and TRL:
`--reward verl` gives what verl's `default_compute_score` gives each row (right 1.0, wrong
0.0, cut off 0.0), and `--reward trl:module:function` is called with what TRL's
GRPOTrainer._calculate_rewards passes and returns what it returns. Generation is stood in
(the tiny random model answers nothing), so the completions are known: a right answer, a
wrong one, and two cut off at --max-new-tokens with the gold as an intermediate number.
Runs in the environments `make test-integrations` builds (verl 0.7.1 + TRL 1.16; verl 0.9.1
alone, where the TRL test skips); skipped elsewhere."""

from __future__ import annotations

import json
import re
import types
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("verl", reason="verl not installed: run `make test-integrations`")
from click.testing import CliRunner  # noqa: E402
from verl.utils.reward_score import default_compute_score  # noqa: E402

from gain_curate.checks.rewards import Group, load_reward, score_group  # noqa: E402
from gain_curate.cli import main  # noqa: E402

LIMIT = 24  # --max-new-tokens
GSM8K = "openai/gsm8k"


def gsm8k_completions(gold: int) -> list[str]:
    """Right, wrong, and two that run past LIMIT tokens with the gold said in passing."""
    ramble = (
        f"First {gold}, so the total is {gold} pies, and then we count all of the pies again, "
        "one by one, to be sure of it"
    )
    return [
        f"So the total is {gold}.\n#### {gold}",
        f"So the total is {gold + 1}.\n#### {gold + 1}",
        ramble,
        (
            f"Sanjay ate {gold} pies.\nSanjay at the store bought more pies, and then more, "
            "and then more pies again"
        ),
    ]


def test_verl_reward_is_verls_default_compute_score() -> None:
    """Rows of GSM8K and MATH under their verl names: right 1.0, wrong 0.0, cut off 0.0,
    each equal to verl's own call; the default reward agrees on all of them."""
    cases = [
        (GSM8K, "72", gsm8k_completions(72), [1.0, 0.0, 0.0, 0.0]),
        (
            "DigitalLearningGmbH/MATH-lighteval",
            "\\frac{1}{2}",
            [
                "So $x = \\boxed{\\frac{1}{2}}$.",
                "So $x = \\boxed{\\frac{1}{3}}$.",
                "Halving gives \\frac{1}{2}, then we check by substituting",
            ],
            [1.0, 0.0, 0.0],
        ),
    ]
    verl, default = load_reward("verl"), load_reward(None)
    for data_source, truth, texts, expected in cases:
        row = {
            "data_source": data_source,
            "reward_model": {"ground_truth": truth, "style": "rule"},
            "extra_info": {"index": 0, "split": "train"},
        }
        group = Group([{"role": "user", "content": "?"}], texts, [[0]] * len(texts), truth, row)
        ours, nones = score_group(verl, group)
        assert ours == expected and nones == 0, data_source
        assert ours == [float(default_compute_score(data_source, t, truth, {})) for t in texts]
        assert score_group(default, group)[0] == expected, data_source


def _stand_in_generation(monkeypatch, tokenizer, golds_by_question: dict[str, int]) -> list[int]:
    """Replace generation: each prompt's K = 4 completions from gsm8k_completions, as token
    ids (the first two end with EOS, the last two are cut at LIMIT tokens)."""
    from gain_curate.checks import rollouts

    calls = []

    def generate(model, prompts, s, *, pad_id, eos_ids, folder=None, key="", on_batch=None, **_):
        calls.append(len(prompts))
        out = []
        for p in prompts:
            gold = golds_by_question[re.search(r"Q\d+", tokenizer.decode(p)).group(0)]
            ids = [
                tokenizer(t, add_special_tokens=False)["input_ids"] for t in gsm8k_completions(gold)
            ]
            assert all(len(x) > LIMIT for x in ids[2:])
            out.append([ids[0] + eos_ids[:1], ids[1] + eos_ids[:1], ids[2][:LIMIT], ids[3][:LIMIT]])
        return out

    monkeypatch.setattr(rollouts, "generate", generate)
    return calls


def _score_run(
    tiny_qwen2_dir: Path, tmp_path: Path, data_source: str
) -> tuple[Path, dict[str, int]]:
    golds = {f"Q{i}": 7 * i + 5 for i in range(10)}
    rows = [
        {
            "data_source": data_source,
            "question": f"{q}: Sanjay ate {g - 5} pies and 5 more. How many?",
            "answer": f"{g - 5} + 5 = {g}\n#### {g}",
        }
        for q, g in golds.items()
    ]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = tmp_path / f"run-{data_source.replace('/', '-')}"
    argv = [
        "score",
        "--model",
        str(tiny_qwen2_dir),
        "--data",
        str(tmp_path / "d.jsonl"),
        "--out",
        str(run),
    ]
    r = CliRunner().invoke(main, argv)
    assert r.exit_code == 0, r.output
    return run, golds


def _validate(run: Path, out: Path, reward: str) -> tuple[int, str]:
    argv = [
        "validate",
        "--run",
        str(run),
        "--sample",
        "6",
        "--out",
        str(out),
        "--rollouts",
        "4",
        "--max-new-tokens",
        str(LIMIT),
        "--reward",
        reward,
    ]
    r = CliRunner().invoke(main, argv)
    return r.exit_code, r.output


def test_validate_reward_verl_end_to_end(
    tiny_qwen2_dir, qwen_tokenizer, tmp_path, monkeypatch
) -> None:
    run, golds = _score_run(tiny_qwen2_dir, tmp_path, GSM8K)
    calls = _stand_in_generation(monkeypatch, qwen_tokenizer, golds)
    code, output = _validate(run, tmp_path / "val", "verl")
    assert code == 0, output
    records = [json.loads(x) for x in (tmp_path / "val" / "rollouts" / "completions.jsonl").open()]
    assert len(records) == 6
    for r in records:  # the run's own data_source and reward_model.ground_truth reached verl
        assert r["rewards"] == [
            float(default_compute_score(GSM8K, t, r["answer"])) for t in r["completions"]
        ]
        assert r["rewards"] == [1.0, 0.0, 0.0, 0.0] and r["truncated"] == [False, False, True, True]
        assert (
            str(golds[re.search(r"Q\d+", r["prompt"][-1]["content"]).group(0)])
            in r["completions"][2]
        )
    summary = json.loads((tmp_path / "val" / "validate.json").read_text())["summary"]["rollouts"]
    assert summary["reward"] == "verl" and summary["pass_rate_mean"] == 0.25
    assert summary["truncated_share"] == 0.5 and len(summary["warnings"]) == 1
    assert "50% cut off at 24 tokens before ending" in output
    assert "warning: 50% of the completions were cut off at --max-new-tokens 24" in output

    # a run under a name verl does not know: one line, before anything is generated
    calls.clear()
    other, _ = _score_run(tiny_qwen2_dir, tmp_path, "gsm8k/train")
    code, output = _validate(other, tmp_path / "val2", "verl")
    assert code != 0 and calls == [] and "Traceback" not in output
    assert "verl's default_compute_score has no reward for data_source 'gsm8k/train'" in output


def test_validate_reward_trl_as_grpo_trainer_calls_it(
    tiny_qwen2_dir, qwen_tokenizer, tmp_path, monkeypatch
) -> None:
    """The same rollouts through a TRL reward function: our call and REAL TRL's
    `_calculate_rewards` over the run's rows (as `load_dataset("parquet")` gives them) pass
    the same arguments and give the same rewards (TRL's NaN for a None is our counted 0)."""
    pytest.importorskip("trl", reason="trl not installed: run `make test-integrations`")
    import torch
    from accelerate import PartialState
    from datasets import load_dataset
    from trl import GRPOTrainer

    PartialState()  # TRL logs (and gathers) through accelerate's state: one CPU process

    run, golds = _score_run(tiny_qwen2_dir, tmp_path, GSM8K)
    _stand_in_generation(monkeypatch, qwen_tokenizer, golds)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "trl_rewards.py").write_text(
        "import re\n"
        "CALLS = []\n"
        "def accuracy(prompts, completions, reward_model, **kwargs):\n"
        "    CALLS.append(dict(prompts=prompts, completions=completions, "
        "reward_model=reward_model, **kwargs))\n"
        "    out = []\n"
        "    for c, rm in zip(completions, reward_model):\n"
        "        m = re.search(r'#### (\\S+)', c[0]['content'])\n"
        "        out.append(None if m is None else float(m.group(1) == rm['ground_truth']))\n"
        "    return out\n"
    )
    code, output = _validate(run, tmp_path / "val", "trl:trl_rewards:accuracy")
    assert code == 0, output
    import trl_rewards

    assert len(trl_rewards.CALLS) == 6  # one call per group of K
    summary = json.loads((tmp_path / "val" / "validate.json").read_text())["summary"]["rollouts"]
    assert summary["none_rewards"] == 12 and summary["pass_rate_mean"] == 0.25
    assert any("returned None for 12 completions" in w for w in summary["warnings"])
    records = [json.loads(x) for x in (tmp_path / "val" / "rollouts" / "completions.jsonl").open()]

    files = sorted(str(p) for p in (run / "data").glob("*.parquet"))
    dataset = load_dataset("parquet", data_files=files)["train"]
    by_index = {row["extra_info"]["index"]: row for row in dataset}
    picked = json.loads((tmp_path / "val" / "validate.json").read_text())["rows"]["input_row"]
    ours = list(trl_rewards.CALLS)
    for call, record, i in zip(ours, records, picked):
        trl_rewards.CALLS.clear()
        inputs = [by_index[i]] * 4  # RepeatSampler: the row once per generation
        prompts = [x["prompt"] for x in inputs]
        completions = [[{"role": "assistant", "content": t}] for t in record["completions"]]
        trainer = types.SimpleNamespace(
            accelerator=types.SimpleNamespace(device=torch.device("cpu"), is_main_process=True),
            state=types.SimpleNamespace(global_step=0),
            args=types.SimpleNamespace(report_to=[]),
            reward_funcs=[trl_rewards.accuracy],
            reward_processing_classes=[None],
            reward_func_names=["accuracy"],
            environments=None,
            _log_completion_extra=lambda *a: None,
            _log_metric=lambda *a: None,
        )
        theirs = GRPOTrainer._calculate_rewards(
            trainer, inputs, prompts, completions, call["completion_ids"]
        )
        assert torch.nan_to_num(theirs[:, 0]).tolist() == record["rewards"]
        (trl_call,) = trl_rewards.CALLS
        skip = ("trainer_state", "log_extra", "log_metric")
        assert set(trl_call) == set(call)
        for key in set(call) - set(skip):
            assert _plain(call[key]) == _plain(trl_call[key]), key
    assert np.mean([r["rewards"] for r in records]) == 0.25


def _plain(v):
    """Arrow and datasets agree on values; NaN != NaN aside, compare as JSON."""
    return json.dumps(v, sort_keys=True, default=str)
