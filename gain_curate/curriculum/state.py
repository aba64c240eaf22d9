"""What a schedule remembers: one EpochRecord per finished epoch (its history), and the
checkpoint a trainer saves (ScheduleState, a plain dict: trainers write it with torch.save
or JSON, so it stays a dict on disk, typed here). Key order is the order written."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypedDict

# One finished epoch as a checkpoint holds it ("pass" is a Python keyword: functional form).
EpochState = TypedDict(
    "EpochState",
    {
        "epoch": int,
        "mu": float,
        "acc": float,
        "ang": "float | None",
        "delta": float,
        "mu_next": float,
        "pass": int,
        "event": "str | None",
    },
)


@dataclass(frozen=True)
class EpochRecord:
    """One finished epoch: mu before and after, the accuracy and angle term that moved it,
    the completed passes of the ranking, and the event (restart, uniform, unscored) if any."""

    epoch: int
    mu: float
    acc: float
    ang: float | None  # None: nothing measured (or the term is off)
    delta: float
    mu_next: float
    passes: int  # completed sweeps of the ranking after this epoch ("pass" on disk)
    event: str | None

    def to_state(self) -> EpochState:
        return {
            "epoch": self.epoch,
            "mu": self.mu,
            "acc": self.acc,
            "ang": self.ang,
            "delta": self.delta,
            "mu_next": self.mu_next,
            "pass": self.passes,
            "event": self.event,
        }

    @classmethod
    def from_state(cls, d: Mapping[str, Any]) -> EpochRecord:
        """From a checkpoint's entry; gain-curate 0.1 entries lack the later keys."""
        mu = float(d["mu"])
        ang = d.get("ang")
        return cls(
            int(d["epoch"]),
            mu,
            float(d.get("acc", 0.0)),
            None if ang is None else float(ang),
            float(d.get("delta", 0.0)),
            float(d.get("mu_next", mu)),
            int(d.get("pass", 0)),
            d.get("event"),
        )


class ScheduleState(TypedDict):
    """GainSchedule.state_dict(): everything a resumed schedule needs (version 3)."""

    version: int
    params: dict[str, float | int | str | None]  # ScheduleParams' fields, by name
    n_prompts: int
    mu: float
    epoch: int
    consumed: int
    passes: int
    uniform: bool
    ang_offset: float | None
    correct: float
    seen: int
    ang_sum: float
    ang_seen: int
    history: list[EpochState]


class NoState(TypedDict):
    """The state of an adapter that follows no schedule (a pass-through dataset): empty."""
