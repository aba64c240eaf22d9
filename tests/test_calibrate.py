"""`validate --run OUT --pass-rate-key KEY | --pass-rates FILE`: pass rates the user has.

The pass rates are made once by `validate --rollouts` on the tiny Qwen2 model (a reward that
varies with the completion, so they differ between prompts), then given three ways: as a
column of a scored input (--pass-rate-key extra_info.pass_rate), as a JSONL keyed by
gain_uid and as one keyed by question text (--pass-rates). All three give the same figures.
Bad keys and files: one line, exit 1 (2 for a usage error).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from gain_curate.cli import main

N = 40
REWARD = "def varied(completion, answer):\n    return float(len(completion) % 3 == 0)\n"


def run(*args: str) -> tuple[int, str]:
    r = CliRunner().invoke(main, [str(a) for a in args])
    return r.exit_code, r.output


def rows() -> list[dict]:
    words = ["apples", "pears", "plums", "figs", "dates", "limes"]
    return [
        {
            "question": f"What is {i} times {i + 3}? How many "
            + " ".join(words[: i % 6]) * (i % 4 + 1)
            + "?",
            "answer": f"#### {i * (i + 3)}",
        }
        for i in range(N)
    ]


def write_jsonl(path: Path, lines: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    return path


@pytest.fixture(scope="module")
def made(tiny_qwen2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("calibrate")
    (tmp / "calib_reward.py").write_text(REWARD)
    patch = pytest.MonkeyPatch()
    patch.syspath_prepend(str(tmp))
    base = write_jsonl(tmp / "q.jsonl", rows())
    code, text = run(
        "score", "--model", tiny_qwen2_dir, "--data", base, "--out", tmp / "run", "--keep-states"
    )
    assert code == 0, text
    code, text = run(
        "validate", "--run", tmp / "run", "--sample", "30", "--rollouts", "4",
        "--max-new-tokens", "6", "--reward", "calib_reward:varied", "--out", tmp / "v0", "--json",
    )  # fmt: skip
    patch.undo()
    assert code == 0, text
    summary = json.loads((tmp / "v0" / "validate.json").read_text())["summary"]
    # --rollouts carries the same recommendation, over every array the run kept
    assert summary["recommended"]["ranking"] in ("learnability", "angle", "length")
    assert set(summary["baselines"]) == {"length", "angle"}
    assert any(k.startswith("prompt_end@L") for k in summary["probe"]["candidates"]) or not any(
        "@" in k for k in np.load(tmp / "run" / "states.npz").files
    )
    got = json.loads((tmp / "v0" / "validate.json").read_text())["rows"]
    rate = dict(zip(got["input_row"], got["pass_rate"]))
    assert len(set(rate.values())) >= 3, rate  # the rates differ between prompts
    shards = pq.read_table(tmp / "run" / "data").to_pylist()
    uid = {r["extra_info"]["index"]: r["gain_uid"] for r in shards}
    by_uid = [{"gain_uid": uid[i], "pass_rate": p, "k": 4} for i, p in rate.items()]
    by_q = [{"question": rows()[i]["question"], "pass_rate": p} for i, p in rate.items()]
    with_col = [
        {**r, "extra_info": {"pass_rate": rate.get(i), "k": 4}} for i, r in enumerate(rows())
    ]
    code, text = run(
        "score", "--model", tiny_qwen2_dir, "--data", write_jsonl(tmp / "q2.jsonl", with_col),
        "--out", tmp / "run2", "--keep-states",
    )  # fmt: skip
    assert code == 0, text
    return {
        "tmp": tmp,
        "run": tmp / "run",
        "run2": tmp / "run2",
        "by_uid": write_jsonl(tmp / "by_uid.jsonl", by_uid),
        "by_q": write_jsonl(tmp / "by_q.jsonl", by_q),
    }


def calibrated(out: Path, *args: object) -> dict:
    code, text = run("validate", *args, "--out", out, "--json")
    assert code == 0, text
    result = json.loads(text[text.index("{") :])
    assert json.loads((out / "validate.json").read_text())["summary"] == result
    return result


def figures(result: dict) -> dict:
    """The figures, without paths (each validate writes its own folder)."""
    rec = {k: v for k, v in result["recommended"].items() if k != "probe"}
    probe = {k: result["probe"][k] for k in ("spearman_p", "spearman_p_interval", "features")}
    return {"recommended": rec, "baselines": result["baselines"], "probe": probe}


def test_key_file_by_uid_and_file_by_question_agree(made: dict[str, Path]) -> None:
    tmp = made["tmp"]
    a = calibrated(tmp / "a", "--run", made["run2"], "--pass-rate-key", "extra_info.pass_rate",
                   "--pass-rate-k-key", "extra_info.k")  # fmt: skip
    b = calibrated(tmp / "b", "--run", made["run"], "--pass-rates", made["by_uid"],
                   "--pass-rate-k-key", "k")  # fmt: skip
    c = calibrated(tmp / "c", "--run", made["run"], "--pass-rates", made["by_q"])
    assert a["sample"] == b["sample"] == c["sample"] == 30
    assert figures(a) == figures(b) == figures(c)
    rec = a["recommended"]
    assert rec["ranking"] in ("learnability", "angle", "length")
    assert set(a["baselines"]) >= {"length", "angle"}
    for f in (rec, *a["baselines"].values()):
        assert {"spearman_p", "spearman_p_interval", "auroc_zero_variance", "probe"} <= set(f)
        lo, hi = f["spearman_p_interval"]
        assert lo is None or lo <= f["spearman_p"] <= hi
    # the candidates are every kept array, named with its layer
    m = json.loads((made["run"] / "gain_manifest.json").read_text())["states"]
    want = [k if "@" in k else f"{k}@L{m['layer']}" for k in m.get("features", [])]
    assert not want or a["probe"]["candidates"] == want
    assert a["pass_rates"]["k"] == {"min": 4.0, "max": 4.0} and c["pass_rates"]["k"] is None
    assert "supervised_gradients" in a and "spearman_grad_vs_score" not in a
    # the probe applies to the run (its feature names read the kept arrays) and says so
    probe = Path(a["probe"]["probe"])
    code, text = run("predict", made["run2"], "--probe", probe, "--json")
    assert code == 0, text
    record = json.loads(text[text.index("{") :])
    assert record["validated"]["spearman_p"] == pytest.approx(a["probe"]["spearman_p"])
    code, text = run("schedule", made["run2"], "--rank-by", "learnability", "--epochs", "2",
                     "--batch-size", "4")  # fmt: skip
    assert code == 0, text
    plan = json.loads((made["run2"] / "gain_manifest.json").read_text())["schedule"]
    assert plan["rank_by"] == "learnability"
    assert plan["rank_by_figures"]["spearman_p"] == pytest.approx(a["probe"]["spearman_p"])
    code, text = run("predict", made["run2"], "--from", tmp / "a")
    if rec["probe"] is None:  # validate recommends a baseline: nothing to apply, one line
        assert code == 1 and text.count("\n") == 1 and f"--rank-by {rec['ranking']}" in text
    else:
        assert code == 0, text
    # the printed summary opens with the verdict
    r = CliRunner().invoke(main, ["validate", "--run", str(made["run"]), "--pass-rates",
                                  str(made["by_q"]), "--out", str(tmp / "d")])  # fmt: skip
    assert r.exit_code == 0 and r.stdout.startswith("verdict: use --rank-by "), r.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--pass-rate-key", "extra_info.nope"], "--pass-rate-key extra_info.nope: no row"),
        (["--pass-rates", "missing.jsonl"], "no such file"),
        (["--pass-rates", "bad.jsonl"], "is not a pass rate in [0, 1]"),
        (["--pass-rates", "noname.jsonl"], "name no prompt"),
        (["--pass-rates", "other.jsonl"], "names a row of the run"),
        (["--pass-rate-key", "extra_info.question"], "not a number"),
    ],
)
def test_bad_keys_and_files_are_one_line(made: dict[str, Path], args: list, message: str) -> None:
    tmp = made["tmp"]
    write_jsonl(tmp / "bad.jsonl", [{"question": rows()[0]["question"], "pass_rate": 3}])
    write_jsonl(tmp / "noname.jsonl", [{"pass_rate": 0.5}])
    write_jsonl(tmp / "other.jsonl", [{"gain_uid": "x", "pass_rate": 0.5}])
    args = [str(tmp / a) if a.endswith(".jsonl") else a for a in args]
    code, text = run("validate", "--run", made["run"], *args, "--out", tmp / "bad")
    lines = text.strip().splitlines()
    assert code == 1 and len(lines) == 1 and lines[0].startswith("Error: "), text
    assert message in lines[0], text
    assert not (tmp / "bad" / "validate.json").exists()


def test_calibration_needs_a_run_with_states(made: dict[str, Path], tiny_qwen2_dir: Path) -> None:
    tmp = made["tmp"]
    code, text = run("validate", "--pass-rates", made["by_q"], "--data", tmp / "q.jsonl")
    assert code == 2 and "give --run OUT" in text, text
    code, text = run("validate", "--run", made["run"], "--pass-rates", made["by_q"],
                     "--rollouts", "4")  # fmt: skip
    assert code == 2 and "drop --rollouts" in text, text
    code, text = run("score", "--model", tiny_qwen2_dir, "--data", tmp / "q.jsonl", "--out",
                     tmp / "nostates")  # fmt: skip
    assert code == 0, text
    code, text = run("validate", "--run", tmp / "nostates", "--pass-rates", made["by_q"])
    assert code == 1 and "kept no hidden states" in text and text.count("\n") == 1, text


def test_dotted_keys_reach_nested_fields_and_keys_with_dots() -> None:
    from gain_curate.checks.pass_rates import dotted

    row = {"extra_info": {"model_difficulty": {"Qwen2.5-7B": 3, "a": {"b": 1}}}}
    assert dotted(row, "extra_info.model_difficulty.Qwen2.5-7B") == 3
    assert dotted(row, "extra_info.model_difficulty.a.b") == 1
    assert dotted(row, "extra_info.nope") is None
    assert np.isnan(np.float64("nan"))
