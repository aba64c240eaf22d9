"""benchmarks/race.py's parts that need no training: its arguments, the per-step bookkeeping
(zero-variance share and mean reward of the groups served), the reward, the table, the plot
and `--report` rendering a race.json without training."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import race  # noqa: E402


def test_arguments_defaults_and_refusals(capsys: pytest.CaptureFixture[str]) -> None:
    a = race.parse_args(["--out", "x"])
    assert (a.steps, a.prompts, a.completions, a.seeds) == (30, 8, 4, [0, 1])
    assert a.arms == ["uniform", "angle", "online"] and a.model == "smollm2"
    b = race.parse_args(["--out", "x", "--arms", "online", "--steps", "5", "--model", "m"])
    assert (b.arms, b.steps, b.model) == (["online"], 5, "m")
    for bad in (["--completions", "1"], ["--steps", "0"], ["--arms", "random"]):
        with pytest.raises(SystemExit) as e:
            race.parse_args(["--out", "x", *bad])
        assert e.value.code == 2
    assert "--completions must be at least 2" in capsys.readouterr().err


def test_step_groups_by_uid_not_by_order() -> None:
    # 3 prompts x 4 completions, interleaved: a all 0 (flat), b mixed, c all 1 (flat)
    uids = ["a", "b", "c"] * 4
    rewards = [0, 1, 1, 0, 0, 1, 0, 0, 1, 0, 1, 1]
    s = race.step_of(uids, [float(r) for r in rewards])
    assert s.groups == 3
    assert s.zero_var == pytest.approx(2 / 3)
    assert s.mean_reward == pytest.approx(6 / 12)
    assert race.step_of(["a", "a"], [0.0, 1.0]).zero_var == 0.0
    with pytest.raises(ValueError, match="one reward per completion"):
        race.step_of(["a"], [1.0, 0.0])


def test_last_integer_reward() -> None:
    assert race.last_integer_reward("5 - 3 = 2", "2") == 1.0
    assert race.last_integer_reward("-5 * 9 = -45.", "-45") == 1.0
    assert race.last_integer_reward("it is 2, no 5", "2") == 0.0
    assert race.last_integer_reward("no number", "2") == 0.0
    assert race.last_integer_reward("= 45", "-45") == 0.0


def _runs() -> dict:
    def run(zv: list[float], rw: list[float], held: float) -> dict:
        steps = [{"groups": 8, "zero_var": z, "mean_reward": r} for z, r in zip(zv, rw)]
        return {"steps": steps, "heldout": held, "wall_s": 600.0}

    return {
        "uniform": {"0": run([1.0, 0.5], [0.0, 0.1], 0.1), "1": run([0.5, 0.5], [0.2, 0.2], 0.3)},
        "online": {"0": run([0.25, 0.25], [0.5, 0.3], 0.2)},
    }


def test_table_rows_per_arm_in_arm_order() -> None:
    table = race.render_table(_runs())
    lines = table.strip().splitlines()
    assert lines[0].startswith("| arm | seeds | zero-variance share")
    assert len(lines) == 4  # header, rule, uniform, online (angle has no runs)
    assert lines[2] == (
        "| uniform | 0, 1 | 0.75 / 0.50 (mean 0.62) | 0.050 / 0.200 (mean 0.125) "
        "| 0.10 / 0.30 (mean 0.20) | 10 / 10 min |"
    )
    assert lines[3] == (
        "| online | 0 | 0.25 (mean 0.25) | 0.400 (mean 0.400) | 0.20 (mean 0.20) | 10 min |"
    )


def test_report_renders_table_and_plot_without_training(tmp_path: Path) -> None:
    (tmp_path / "race.json").write_text(json.dumps({"arms": _runs()}))
    race.main(["--out", str(tmp_path), "--report"])
    assert (tmp_path / "race.md").read_text() == race.render_table(_runs())
    png = (tmp_path / "race.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) < 200_000
