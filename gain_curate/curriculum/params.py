"""GainSchedule's parameters and its update rule (gain_curate.curriculum.schedule says what
each one means): ScheduleParams, and one step of mu as a pure function."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

ANGLE_MODES = ("change", "level", "off")
END_POLICIES = ("restart", "hold", "uniform", "past")


@dataclass(frozen=True)
class ScheduleParams:
    batch_size: int  # B: prompts drawn per epoch
    mu0: float = 0.0
    sigma: float = 1000.0  # absolute, in rank positions
    sigma_fraction: float | None = None  # if set, sigma = sigma_fraction * N
    n: float = 500.0
    alpha: float = 2.0
    beta: float = 0.5
    adj_min: float = 0.0
    adj_max: float = 1000.0
    seed: int = 0
    angle: str = "change"  # how an online measurement becomes ang: ANGLE_MODES
    at_end: str = "restart"  # what happens past the last rank: END_POLICIES

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.sigma <= 0 or (self.sigma_fraction is not None and self.sigma_fraction <= 0):
            raise ValueError("sigma must be positive (rank positions, or a fraction of N: 0.05N)")
        if self.adj_min > self.adj_max:
            raise ValueError(f"adj_min {self.adj_min} > adj_max {self.adj_max}")
        if self.angle not in ANGLE_MODES:
            raise ValueError(f"angle {self.angle!r} is not one of {', '.join(ANGLE_MODES)}")
        if self.at_end not in END_POLICIES:
            raise ValueError(f"at_end {self.at_end!r} is not one of {', '.join(END_POLICIES)}")

    @classmethod
    def paper(cls, batch_size: int, **overrides: Any) -> ScheduleParams:
        """The reference's rule: per-step update, ang = online level, mu never clamped."""
        return cls(batch_size=batch_size, **{**overrides, "angle": "level", "at_end": "past"})

    @property
    def is_paper(self) -> bool:
        return self.angle == "level" and self.at_end == "past"


def mu_update(
    mu: float, acc: float, ang: float, p: ScheduleParams, n_prompts: int
) -> tuple[float, float]:
    """One step of the rule, mu clamped to [0, N - 1]: (new mu, the clamped adjustment)."""
    delta = step_size(acc, ang, p)
    return min(max(mu + delta, 0.0), float(n_prompts - 1)), delta


def step_size(acc: float, ang: float, p: ScheduleParams) -> float:
    raw = p.n * math.tanh(p.alpha * (acc - p.beta)) + p.n * math.tanh(p.alpha * ang)
    return min(max(raw, p.adj_min), p.adj_max)
