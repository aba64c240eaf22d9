"""The curriculum's dynamics before training: mu and the draws, step by step, for an assumed
accuracy curve. The same loop writes the open-loop plan (`gain-curate schedule`), so what a
user sees in the simulation is exactly what a plan-following trainer will draw.

    gain-curate schedule runs/gsm8k --epochs 300 --batch-size 256 --assumed-accuracy 0.2:0.9 \
--simulate

No angle term can be measured without a trainer, so in the default mode ang = 0 here (the
trainer adapters that own the policy's forward measure it online). Paper mode stands in the
offline gain_score of each step's draws for the reference's online level: at step 0, with
the trainer's template, the two are the same number, and that is what the reference feeds
its rule every step.

`--rank-by learnability|length` draws over another order of the same rows (rank_by.order_by):
the schedule's positions are then positions in that order (the table's rank quantiles and
the picture too), and the plan records each draw's gain_rank, the shards' row, as always.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gain_curate.curriculum.fit import fit_warnings, title_params
from gain_curate.curriculum.rank_by import read_order
from gain_curate.curriculum.schedule import GainSchedule, ScheduleParams
from gain_curate.curriculum.steps import StepRow, decile_shares, end_line, plot, step_rows
from gain_curate.runfolder.run import Run, open_run

__all__ = ["AccuracyCurve", "PlanResult", "StepRow", "decile_shares", "plan_run", "step_rows"]


@dataclass(frozen=True)
class AccuracyCurve:
    """Accuracy fed back per step: flat (`0.8`) or a linear ramp over the run (`0.2:0.9`)."""

    start: float
    end: float

    @classmethod
    def parse(cls, text: str) -> AccuracyCurve:
        parts = str(text).split(":")
        try:
            values = [float(v) for v in parts]
        except ValueError:
            values = []
        if len(values) not in (1, 2) or not all(0.0 <= v <= 1.0 for v in values):
            raise ValueError(
                f"{text!r}: give an accuracy in [0, 1] (0.8) or a ramp start:end "
                "with both in [0, 1] (0.2:0.9)"
            )
        return cls(values[0], values[-1])

    def at(self, step: int, steps: int) -> float:
        return self.start + (self.end - self.start) * (step / max(steps - 1, 1))

    def __str__(self) -> str:
        return f"{self.start:g}" if self.start == self.end else f"{self.start:g}:{self.end:g}"


def run_open_loop(schedule: GainSchedule, steps: int, accuracy: AccuracyCurve) -> list[np.ndarray]:
    """Plans for `steps` epochs as if epoch k reached accuracy.at(k); the schedule's history
    holds mu, acc, ang and events per step."""
    plans = []
    for k in range(steps):
        plan = schedule.plan_epoch()
        plans.append(plan)
        schedule.observe_accuracy([accuracy.at(k, steps)] * len(plan))
        if schedule.params.angle == "level" and schedule.uids is not None:
            # paper mode: the offline score of the draws stands in for the online level
            schedule.observe_angles([schedule.uids[int(r)] for r in plan], schedule.scores[plan])
        schedule.end_epoch()
    return plans


@dataclass
class PlanResult:
    plans: list[np.ndarray]
    rows: list[StepRow]
    deciles: list[float]
    end: str  # the one-line end-of-ranking verdict
    n_prompts: int
    plan_path: Path | None
    plot_path: Path | None
    warnings: list[str] = field(default_factory=list)  # parameters that do not fit the run


@dataclass(frozen=True)
class Curriculum:
    """The schedule `gain-curate schedule` runs: over the run's `rank_by` order (order[k]:
    the gain_rank at position k), with its parameters and mode."""

    schedule: GainSchedule
    order: np.ndarray
    uids: list[str]  # gain_uid by gain_rank
    params: ScheduleParams
    paper: bool
    rank_by: str


def plan_run(
    out: Path,
    params_kw: dict[str, Any],
    steps: int,
    accuracy: AccuracyCurve,
    *,
    write_plan: bool,
    plot_path: Path | None,
    rank_by: str = "angle",
) -> PlanResult:
    """`gain-curate schedule`: the scored run's ranking (or its `rank_by` order) -> simulated
    steps, and the open-loop plan (schedule/plan.parquet, recorded in the manifest) unless
    only simulating."""
    run = open_run(out)
    cur = curriculum(run, params_kw, rank_by)
    res = simulate(cur, steps, accuracy, plot_path)
    if plot_path is not None:
        draw_picture(cur, res, accuracy, plot_path)
    if write_plan:
        res.plan_path = record_plan(run, cur, res, steps, accuracy)
    return res


def curriculum(run: Run, params_kw: dict[str, Any], rank_by: str) -> Curriculum:
    """The schedule over the run's `rank_by` order; `params_kw`: ScheduleParams' fields by
    name, plus `paper` (the reference's rule)."""
    if rank_by == "learnability-online":
        raise ValueError(
            "rank_by learnability-online refits its probe from the trainer's rewards, which an "
            "open-loop plan never hears: use it in a trainer adapter (TRL `gain_params`, verl "
            "`+data.gain.rank_by`), or simulate it against known pass rates with `pass_rates`"
        )
    uids, scores = run.ranking()
    order = read_order(run, rank_by)  # gain_rank at each position of the chosen order
    kw = dict(params_kw)
    if kw["batch_size"] > len(uids):
        raise ValueError(
            f"`batch_size` {kw['batch_size']} exceeds the {len(uids)} prompts in {run.out}: "
            f"give at most {len(uids)}"
        )
    paper = bool(kw.pop("paper", False))
    params = ScheduleParams.paper(**kw) if paper else ScheduleParams(**kw)
    sched = GainSchedule(len(uids), params, uids=[uids[r] for r in order], scores=scores[order])
    sched.uniform = rank_by == "uniform"  # no curriculum: every draw uniform
    return Curriculum(sched, order, uids, params, paper, rank_by)


def simulate(
    cur: Curriculum, steps: int, accuracy: AccuracyCurve, plot_path: Path | None
) -> PlanResult:
    """`steps` open-loop epochs at the assumed accuracy: the plans (positions in the chosen
    order), their summary rows, where the draws fall, and what does not fit the run."""
    sched, n = cur.schedule, cur.schedule.n_prompts
    plans = run_open_loop(sched, steps, accuracy)
    return PlanResult(
        plans,
        step_rows(plans, sched.history),
        decile_shares(plans, n),
        end_line(sched.history, n, cur.params.at_end),
        n,
        None,
        plot_path,
        fit_warnings(n, cur.params, sched.sigma, sched.history),
    )


def draw_picture(cur: Curriculum, res: PlanResult, accuracy: AccuracyCurve, path: Path) -> None:
    """The PNG of mu and the draws, its title naming every parameter that is not a default."""
    from gain_curate.errors import OutputError

    sched, params, n = cur.schedule, cur.params, res.n_prompts
    mode = ("paper mode" if cur.paper else f"at_end={params.at_end}") + (
        "" if cur.rank_by == "angle" else f", {cur.rank_by} order"
    )
    extra = title_params(params, sched.sigma, n)
    mode += f", {extra}" if extra else ""
    title = (
        f"{n:,} prompts, B={params.batch_size}, sigma={sched.sigma:g}, accuracy {accuracy}, {mode}"
    )
    try:
        plot(res.plans, sched.history, n, path, title)
    except OSError as e:
        raise OutputError(f"cannot write {path}: {e.strerror or e}") from None


def record_plan(
    run: Run, cur: Curriculum, res: PlanResult, steps: int, accuracy: AccuracyCurve
) -> Path:
    """OUT/schedule/plan.parquet (each draw's gain_rank) and the manifest's `schedule`."""
    from gain_curate.runfolder import store

    out = run.out
    path = store.write_plan(out, [cur.order[p] for p in res.plans], cur.uids)
    angle = (
        "offline gain_score of each step's draws standing in for the online level (paper mode)"
        if cur.paper
        else "none: no online measurement in an open-loop plan"
    )
    prediction = run.manifest.section("prediction") or {}
    store.update_manifest(
        out,
        "schedule",
        {
            "plan": str(path.relative_to(out)),
            "sha256": store.file_sha256(path),
            "epochs": steps,
            "assumed_accuracy": str(accuracy),
            "mode": "paper" if cur.paper else "default",
            "params": cur.schedule.state_dict()["params"],
            "angle_signal": angle,
            "end_of_ranking": res.end,
            "decile_shares": [round(x, 4) for x in res.deciles],
            "epochs_summary": [r.to_json() for r in res.rows],
            "rank_by": cur.rank_by,
            # the validate figures of the probe that wrote gain_learn_rank (predict)
            "rank_by_figures": (
                prediction.get("validated") if cur.rank_by == "learnability" else None
            ),
            "warnings": res.warnings,
        },
    )
    return path
