"""What a simulated schedule did, for reading: one StepRow per step (the table and the
manifest's schedule.epochs_summary), where the draws fall by tenths of the ranking, the
one-line end-of-ranking verdict, and the picture of mu and the draws."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

import numpy as np

from gain_curate.curriculum.state import EpochRecord

# One step of the summary as written (the manifest's schedule.epochs_summary, `--json`).
StepRowJSON = TypedDict(
    "StepRowJSON",
    {
        "epoch": int,
        "mu": float,
        "rank_p10": int,
        "rank_p50": int,
        "rank_p90": int,
        "acc": float,
        "ang": "float | None",
        "delta": float,
        "mu_next": float,
        "pass": int,
        "event": "str | None",
    },
)


@dataclass(frozen=True)
class StepRow:
    """One simulated step, rounded for reading: mu, where its draws fall (rank quantiles of
    the plan's positions), acc, ang, the step of mu, completed passes and the event."""

    epoch: int
    mu: float
    rank_p10: int
    rank_p50: int
    rank_p90: int
    acc: float
    ang: float | None
    delta: float
    mu_next: float
    passes: int
    event: str | None

    def to_json(self) -> StepRowJSON:
        return {
            "epoch": self.epoch,
            "mu": self.mu,
            "rank_p10": self.rank_p10,
            "rank_p50": self.rank_p50,
            "rank_p90": self.rank_p90,
            "acc": self.acc,
            "ang": self.ang,
            "delta": self.delta,
            "mu_next": self.mu_next,
            "pass": self.passes,
            "event": self.event,
        }


def step_rows(plans: list[np.ndarray], history: list[EpochRecord]) -> list[StepRow]:
    """One row per step: mu, where the draws fall (rank quantiles), acc, ang, the event."""
    rows = []
    for plan, h in zip(plans, history):
        q = np.quantile(plan, [0.1, 0.5, 0.9])
        rows.append(
            StepRow(
                epoch=int(h.epoch),
                mu=round(h.mu, 1),
                rank_p10=int(q[0]),
                rank_p50=int(q[1]),
                rank_p90=int(q[2]),
                acc=round(h.acc, 4),
                ang=None if h.ang is None else round(h.ang, 4),
                delta=round(h.delta, 1),
                mu_next=round(h.mu_next, 1),
                passes=h.passes,
                event=h.event,
            )
        )
    return rows


def decile_shares(plans: list[np.ndarray], n: int) -> list[float]:
    """Fraction of all draws that fall in each tenth of the ranking (top first)."""
    ranks = np.concatenate(plans) if plans else np.zeros(0, dtype=np.int64)
    counts = np.bincount(np.minimum(ranks * 10 // n, 9), minlength=10)
    return (counts / max(len(ranks), 1)).tolist()


def end_line(history: list[EpochRecord], n: int, at_end: str) -> str:
    """One line: when (if ever) the sweep reaches the end of the ranking, and what follows."""
    steps = len(history)
    first = next((h for h in history if h.event or h.mu_next >= n - 1), None)
    if first is None:
        last = history[-1].mu_next if history else 0.0
        return (
            f"mu never reaches the end of the ranking in {steps} steps (it ends at rank "
            f"{last:,.0f} of {n - 1:,}, {100 * last / max(n - 1, 1):.0f}% of the way down)"
        )
    k = first.epoch + 1
    if at_end == "restart":
        passes = history[-1].passes
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
    plans: list[np.ndarray], history: list[EpochRecord], n: int, path: Path, title: str
) -> None:
    """Two panels: mu over steps, and a heat map of where each step's draws fall."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = len(plans)
    bins = min(100, n)
    heat = np.stack([np.bincount(p * bins // n, minlength=bins) for p in plans]).T
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4), dpi=100)
    a.plot(range(steps), [h.mu for h in history], color="#3b6ea5")
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
