"""`gain-curate inspect`: text, JSON, and a PNG that opens with the right size."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest
from click.testing import CliRunner

from gain_curate.checks.report import difficulty
from gain_curate.cli import main
from gain_curate.executor.launch import run_score
from gain_curate.executor.score import ScoreConfig


@pytest.fixture(scope="module")
def run_dir(tiny_qwen2_dir: Path, tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("inspect")
    data = tmp / "d.jsonl"
    rows = [
        {
            "question": (
                f"Problem {i}: a tank holds {i * 3} litres and "
                f"leaks {i % 4 + 1} per hour; when is it empty?"
            ),
            "answer": str(i),
            "level": f"Level {i % 5 + 1}",
        }
        for i in range(30)
    ]
    rows.append({"question": "", "answer": "0", "level": "Level 1"})
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run_score(ScoreConfig(data=str(data), model=str(tiny_qwen2_dir), out=tmp / "run", device="cpu"))
    return tmp / "run"


def test_inspect_text(run_dir: Path) -> None:
    r = CliRunner().invoke(main, ["inspect", str(run_dir)])
    assert r.exit_code == 0, r.output
    for needle in (
        "rows",
        "31",
        "unscored: empty_question",
        "spearman(score, question tokens)",
        "spearman(score, level)",
        "top (sampled first)",
        "bottom",
        "Problem",
    ):
        assert needle in r.output, needle


def test_inspect_json_and_plot(run_dir: Path, tmp_path: Path) -> None:
    png = tmp_path / "overview.png"
    r = CliRunner().invoke(main, ["inspect", str(run_dir), "--json", "--plot", str(png)])
    assert r.exit_code == 0, r.output
    info = json.loads(r.output)
    assert info["rows"] == 31 and info["scored"] == 30 and info["unscored"] == {"empty_question": 1}
    import pyarrow.parquet as pq
    from scipy import stats

    t = pq.read_table(run_dir / "data").to_pylist()
    pairs = [
        (r["gain_score"], int(r["level"].split()[1])) for r in t if r["gain_score"] is not None
    ]
    expected = stats.spearmanr(*zip(*pairs)).statistic
    assert info["difficulty_column"] == "level"
    assert info["spearman_score_vs_difficulty"] == pytest.approx(expected, abs=1e-12)
    from gain_curate.bootstrap import spearman_ci

    est = info["spearman_score_vs_difficulty_interval"]  # printed and in --json with its interval
    assert est == spearman_ci(*map(np.array, zip(*pairs)), what=("gain_score", "level")).to_dict()
    assert est["n"] == 30 and est["low"] <= est["value"] <= est["high"]
    assert len(info["top"]) == 5 and info["top"][0]["rank"] == 0
    assert info["top"][0]["score"] >= info["bottom"][-1]["score"]
    by_uid = {r["gain_uid"]: r for r in t}  # each listed row: its uid and its whole question
    for r in info["top"] + info["bottom"]:
        assert by_uid[r["gain_uid"]]["gain_rank"] == r["rank"]
        assert r["question"] == by_uid[r["gain_uid"]]["extra_info"]["question"]
    img = mpimg.imread(png)
    assert (
        img.shape[:2] == (400, 1500) == (info["plot"]["size"][1], info["plot"]["size"][0])
    )  # 3 panels, 5x4 in each at 100 dpi


def test_inspect_without_a_run_is_one_line(tmp_path: Path) -> None:
    r = CliRunner().invoke(main, ["inspect", str(tmp_path)])
    assert r.exit_code == 1 and "holds no scored run" in r.output and "Traceback" not in r.output


def test_difficulty_parsing() -> None:
    import pyarrow as pa

    key, vals = difficulty(pa.table({"level": ["Level 1", "Level 5", "Level ?", "Level 3"]}))
    assert key == "level" and vals[:2].tolist() == [1.0, 5.0] and vals[3] == 3.0
    assert difficulty(pa.table({"x": [1, 2, 3]})) is None


def test_inspect_says_what_was_scored_and_trained_in_one_line(
    run_dir: Path, tiny_qwen2_dir: Path, tmp_path: Path
) -> None:
    r = CliRunner().invoke(main, ["inspect", str(run_dir)])
    [line] = [x for x in r.output.splitlines() if x.startswith("conversation: ")]
    assert "the `prompt` column holds this very conversation" in line
    assert "data_source" in r.output
    info = json.loads(CliRunner().invoke(main, ["inspect", str(run_dir), "--json"]).output)
    assert info["trained_differs"] is False and info["data_source_from"].startswith(
        "the file's name"
    )
    # the paper's split: the template scored, a bare training prompt: inspect says so
    data = tmp_path / "d.jsonl"
    data.write_text(
        "".join(
            json.dumps({"question": f"How many wheels do {i} bikes have?"}) + "\n"
            for i in range(2, 6)
        )
    )
    run_score(
        ScoreConfig(
            data=str(data),
            model=str(tiny_qwen2_dir),
            out=tmp_path / "q",
            device="cpu",
            train_prompt="question",
        )
    )
    r = CliRunner().invoke(main, ["inspect", str(tmp_path / "q")])
    [line] = [x for x in r.output.splitlines() if x.startswith("conversation: ")]
    assert (
        "DIFFERENT conversation in 4 of 4 rows: one user "
        "turn: the question (--train-prompt question)"
    ) in line
    assert (
        json.loads(CliRunner().invoke(main, ["inspect", str(tmp_path / "q"), "--json"]).output)[
            "trained_differs"
        ]
        is True
    )
