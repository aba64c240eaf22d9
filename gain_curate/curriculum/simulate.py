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
from gain_curate.curriculum.schedule import GainSchedule


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


def step_rows(plans: list[np.ndarray], history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per step: mu, where the draws fall (rank quantiles), acc, ang, the event."""
    rows = []
    for plan, h in zip(plans, history):
        q = np.quantile(plan, [0.1, 0.5, 0.9])
        rows.append(
            {
                "epoch": int(h["epoch"]),
                "mu": round(h["mu"], 1),
                "rank_p10": int(q[0]),
                "rank_p50": int(q[1]),
                "rank_p90": int(q[2]),
                "acc": round(h["acc"], 4),
                "ang": None if h["ang"] is None else round(h["ang"], 4),
                "delta": round(h["delta"], 1),
                "mu_next": round(h["mu_next"], 1),
                "pass": h["pass"],
                "event": h["event"],
            }
        )
    return rows


def decile_shares(plans: list[np.ndarray], n: int) -> list[float]:
    """Fraction of all draws that fall in each tenth of the ranking (top first)."""
    ranks = np.concatenate(plans) if plans else np.zeros(0, dtype=np.int64)
    counts = np.bincount(np.minimum(ranks * 10 // n, 9), minlength=10)
    return (counts / max(len(ranks), 1)).tolist()


def end_line(history: list[dict[str, Any]], n: int, at_end: str) -> str:
    """One line: when (if ever) the sweep reaches the end of the ranking, and what follows."""
    steps = len(history)
    first = next((h for h in history if h["event"] or h["mu_next"] >= n - 1), None)
    if first is None:
        last = history[-1]["mu_next"] if history else 0.0
        return (
            f"mu never reaches the end of the ranking in {steps} steps (it ends at rank "
            f"{last:,.0f} of {n - 1:,}, {100 * last / max(n - 1, 1):.0f}% of the way down)"
        )
    k = first["epoch"] + 1
    if at_end == "restart":
        passes = history[-1]["pass"]
        return (
            f"the sweep reaches the end of the ranking after step {k}; at_end=restart starts "
            f"a new pass from the top ({passes} completed passes in {steps} steps)"
        )
    if at_end == "uniform":
        return (
            f"the sweep reaches the end of the ranking after step {k}; at_end=uniform draws "
            f"uniformly over all {n:,} prompts for the remaining {steps - k} steps"
        )
    return (
        f"the sweep reaches the end of the ranking after step {k}; at_end={at_end} samples "
        f"the bottom of the ranking for the remaining {steps - k} steps"
    )


def plot(
    plans: list[np.ndarray], history: list[dict[str, Any]], n: int, path: Path, title: str
) -> None:
    """Two panels: mu over steps, and a heat map of where each step's draws fall."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = len(plans)
    bins = min(100, n)
    heat = np.stack([np.bincount(p * bins // n, minlength=bins) for p in plans]).T
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4), dpi=100)
    a.plot(range(steps), [h["mu"] for h in history], color="#3b6ea5")
    a.set(
        title="mu (mean of the Gaussian) per step",
        xlabel="step",
        ylabel="rank position",
        ylim=(n, -1),
    )
    image = b.imshow(
        heat, aspect="auto", origin="upper", cmap="Blues", extent=(-0.5, steps - 0.5, n, 0)
    )
    fig.colorbar(image, ax=b, label=f"draws per {n / bins:g} rank positions")
    b.set(
        title="where the draws fall (rank 0 = highest score)", xlabel="step", ylabel="rank position"
    )
    fig.suptitle(title)
    fig.tight_layout()
    from gain_curate.runfolder import store

    store.write_png(fig, path)
    plt.close(fig)


@dataclass
class PlanResult:
    plans: list[np.ndarray]
    rows: list[dict[str, Any]]
    deciles: list[float]
    end: str  # the one-line end-of-ranking verdict
    n_prompts: int
    plan_path: Path | None
    plot_path: Path | None
    warnings: list[str] = field(default_factory=list)  # parameters that do not fit the run


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
    from gain_curate.curriculum.schedule import ScheduleParams
    from gain_curate.errors import OutputError
    from gain_curate.runfolder import store

    uids, scores = store.read_ranking(out)
    order = read_order(out, rank_by)  # gain_rank at each position of the chosen order
    if params_kw["batch_size"] > len(uids):
        raise ValueError(
            f"--batch-size {params_kw['batch_size']} exceeds the {len(uids)} prompts in {out}: "
            f"give at most {len(uids)}"
        )
    paper = params_kw.pop("paper", False)
    params = ScheduleParams.paper(**params_kw) if paper else ScheduleParams(**params_kw)
    sched = GainSchedule(len(uids), params, uids=[uids[r] for r in order], scores=scores[order])
    plans = run_open_loop(sched, steps, accuracy)  # positions in the chosen order
    rows = step_rows(plans, sched.history)
    res = PlanResult(
        plans,
        rows,
        decile_shares(plans, len(uids)),
        end_line(sched.history, len(uids), params.at_end),
        len(uids),
        None,
        plot_path,
        fit_warnings(len(uids), params, sched.sigma, sched.history),
    )
    if plot_path is not None:
        mode = ("paper mode" if paper else f"at_end={params.at_end}") + (
            "" if rank_by == "angle" else f", {rank_by} order"
        )
        extra = title_params(params, sched.sigma, len(uids))
        mode += f", {extra}" if extra else ""
        try:
            plot(
                plans,
                sched.history,
                len(uids),
                plot_path,
                f"{len(uids):,} prompts, B={params.batch_size}, sigma={sched.sigma:g}, "
                f"accuracy {accuracy}, {mode}",
            )
        except OSError as e:
            raise OutputError(f"cannot write {plot_path}: {e.strerror or e}") from None
    if write_plan:
        res.plan_path = store.write_plan(out, [order[p] for p in plans], uids)
        angle = (
            "offline gain_score of each step's draws standing in for the online level (paper mode)"
            if paper
            else "none: no online measurement in an open-loop plan"
        )
        store.update_manifest(
            out,
            "schedule",
            {
                "plan": str(res.plan_path.relative_to(out)),
                "sha256": store.file_sha256(res.plan_path),
                "epochs": steps,
                "assumed_accuracy": str(accuracy),
                "mode": "paper" if paper else "default",
                "params": sched.state_dict()["params"],
                "angle_signal": angle,
                "end_of_ranking": res.end,
                "decile_shares": [round(x, 4) for x in res.deciles],
                "epochs_summary": rows,
                "rank_by": rank_by,
                # the validate figures of the probe that wrote gain_learn_rank (predict)
                "rank_by_figures": (
                    (store.read_manifest(out).get("prediction") or {}).get("validated")
                    if rank_by == "learnability"
                    else None
                ),
                "warnings": res.warnings,
            },
        )
    return res
