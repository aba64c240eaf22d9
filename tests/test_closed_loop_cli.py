"""`gain-curate schedule OUT --simulate --pass-rates FILE` on a real scored run (the tiny
Qwen2, states kept): one zero-variance line per ranking, and its refusals in one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from gain_curate.cli import main
from gain_curate.executor.launch import run_score
from gain_curate.executor.score import ScoreConfig


def run(*args: str) -> tuple[int, str]:
    r = CliRunner().invoke(main, list(args))
    return r.exit_code, r.output


@pytest.fixture(scope="module")
def scored(tiny_qwen2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("closed_loop")
    data = tmp / "q.jsonl"
    data.write_text(
        "".join(
            json.dumps({"question": f"What is {i} plus {i * 7 % 13}?", "answer": str(i)}) + "\n"
            for i in range(48)
        )
    )
    cfg = ScoreConfig(
        data=str(data), model=str(tiny_qwen2_dir), out=tmp / "run", device="cpu", keep_states=True
    )
    run_score(cfg)
    return tmp / "run"


def rates_file(run_dir: Path, tmp: Path, n: int = 40) -> Path:
    """Known pass rates for the first n rows, by gain_uid (as validate.parquet names them)."""
    uids = pq.read_table(run_dir / "data", columns=["gain_uid"])["gain_uid"].to_pylist()
    rates = np.random.default_rng(0).choice([0.0, 0.125, 0.5, 0.875, 1.0], size=n)
    path = tmp / "rates.jsonl"
    path.write_text(
        "".join(
            json.dumps({"gain_uid": u, "pass_rate": float(p)}) + "\n" for u, p in zip(uids, rates)
        )
    )
    return path


def test_one_zero_variance_line_per_ranking(scored: Path, tmp_path: Path) -> None:
    rates = rates_file(scored, tmp_path)
    code, text = run(
        "schedule",
        str(scored),
        "--epochs",
        "50",
        "--batch-size",
        "16",
        "--simulate",
        "--pass-rates",
        str(rates),
        "--group-size",
        "4",
    )
    assert code == 0, text
    lines = text.strip().splitlines()
    assert lines[0].startswith("closed loop over the 40 of 48 prompts with a known pass rate")
    assert "B = 5" in lines[0]  # capped at an eighth of the 40
    body = lines[1:]
    assert body[0].startswith("zero-variance share, first 50 steps: uniform 0.")
    assert body[1].startswith("zero-variance share, first 50 steps: angle 0.")
    assert body[2].startswith("zero-variance share, first 50 steps: learnability n/a")
    assert body[3].startswith("zero-variance share, first 50 steps: learnability-online 0.")
    shares = [float(b.rsplit(" ", 1)[1]) for b in (body[0], body[1], body[3])]
    assert all(0.0 <= s <= 1.0 for s in shares)
    code, js = run(
        "schedule",
        str(scored),
        "--epochs",
        "50",
        "--batch-size",
        "16",
        "--simulate",
        "--pass-rates",
        str(rates),
        "--group-size",
        "4",
        "--json",
    )
    got = json.loads(js)
    assert got["zero_variance_share"]["uniform"] == pytest.approx(shares[0], abs=5e-4)
    assert "learnability" in got["not_simulated"]
    assert not (scored / "schedule" / "plan.parquet").exists()  # nothing written


def test_refusals_are_one_line(scored: Path, tmp_path: Path) -> None:
    rates = rates_file(scored, tmp_path)
    code, text = run(
        "schedule", str(scored), "--epochs", "5", "--batch-size", "4", "--pass-rates", str(rates)
    )
    assert code == 2 and "--simulate" in text
    code, text = run(
        "schedule",
        str(scored),
        "--epochs",
        "5",
        "--batch-size",
        "4",
        "--rank-by",
        "learnability-online",
    )
    assert code == 1 and len(text.strip().splitlines()) == 1 and "--pass-rates" in text, text
    few = rates_file(scored, tmp_path, n=10)
    code, text = run(
        "schedule",
        str(scored),
        "--epochs",
        "5",
        "--batch-size",
        "4",
        "--simulate",
        "--pass-rates",
        str(few),
    )
    assert code == 1 and "at least 16" in text and len(text.strip().splitlines()) == 1, text
