"""GainSchedule's parameters and its update rule (gain_curate.curriculum.schedule says what
each one means): ScheduleParams, and one step of mu as a pure function.

sigma, n and adj_max are in rank positions, so the paper's values (1000, 500, 1000) fit
GSM8K's 7,473 prompts and no other N. Not given (None), they are resolved for the run's N
(`ScheduleParams.resolved`, called by GainSchedule): value x N / 7,473 rounded to the nearest
whole position, at least 1, so a pass of the ranking takes as many steps at any N as at
GSM8K's (exactly the paper's numbers there). Paper mode keeps the reference's absolute values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

ANGLE_MODES = ("change", "level", "off")
END_POLICIES = ("restart", "hold", "uniform", "past")
PAPER_N_PROMPTS = 7_473  # GSM8K's train set, which the paper's sigma, n and adj_max fit
PAPER_VALUES = {"sigma": 1000.0, "n": 500.0, "adj_max": 1000.0}  # rank positions


@dataclass(frozen=True)
class ScheduleParams:
    batch_size: int  # B: prompts drawn per epoch
    mu0: float = 0.0
    sigma: float | None = None  # rank positions; None: scaled to N (resolved)
    sigma_fraction: float | None = None  # if set, sigma = sigma_fraction * N
    n: float | None = None  # None: scaled to N (resolved)
    alpha: float = 2.0
    beta: float = 0.5
    adj_min: float = 0.0
    adj_max: float | None = None  # None: scaled to N (resolved)
    seed: int = 0
    angle: str = "change"  # how an online measurement becomes ang: ANGLE_MODES
    at_end: str = "restart"  # what happens past the last rank: END_POLICIES

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if (self.sigma is not None and self.sigma <= 0) or (
            self.sigma_fraction is not None and self.sigma_fraction <= 0
        ):
            raise ValueError("sigma must be positive (rank positions, or a fraction of N: 0.05N)")
        if self.adj_max is not None and self.adj_min > self.adj_max:
            raise ValueError(f"adj_min {self.adj_min} > adj_max {self.adj_max}")
        if self.angle not in ANGLE_MODES:
            raise ValueError(f"angle {self.angle!r} is not one of {', '.join(ANGLE_MODES)}")
        if self.at_end not in END_POLICIES:
            raise ValueError(f"at_end {self.at_end!r} is not one of {', '.join(END_POLICIES)}")

    @classmethod
    def paper(cls, batch_size: int, **overrides: Any) -> ScheduleParams:
        """The reference's rule: per-step update, ang = online level, mu never clamped."""
        return cls(batch_size=batch_size, **{**overrides, "angle": "level", "at_end": "past"})

    @classmethod
    def given(cls, kw: dict[str, Any]) -> ScheduleParams:
        """From settings by name, plus `paper` (the reference's rule); not resolved."""
        rest = {k: v for k, v in kw.items() if k != "paper"}
        return cls.paper(**rest) if kw.get("paper") else cls(**rest)

    @property
    def is_paper(self) -> bool:
        return self.angle == "level" and self.at_end == "past"

    @property
    def is_resolved(self) -> bool:
        return None not in (self.sigma, self.n, self.adj_max)

    def resolved(self, n_prompts: int) -> ScheduleParams:
        """These parameters for a run of n_prompts: each of sigma, n, adj_max not given becomes
        the paper's value x n_prompts / 7,473 (whole positions, at least 1; paper mode: the
        paper's value); sigma = sigma_fraction x n_prompts where a fraction is given."""
        scale = 1.0 if self.is_paper else n_prompts / PAPER_N_PROMPTS
        fill = {
            k: max(1.0, float(round(v * scale)))
            for k, v in PAPER_VALUES.items()
            if getattr(self, k) is None
        }
        if self.sigma_fraction is not None:
            fill["sigma"] = self.sigma_fraction * n_prompts
        return replace(self, **fill) if fill else self

    def scaled(self) -> list[str]:
        """The names of the parameters `resolved` scales to N (not given, default mode)."""
        if self.is_paper:
            return []
        return [
            k
            for k in PAPER_VALUES
            if getattr(self, k) is None and not (k == "sigma" and self.sigma_fraction is not None)
        ]


def mu_update(
    mu: float, acc: float, ang: float, p: ScheduleParams, n_prompts: int
) -> tuple[float, float]:
    """One step of the rule, mu clamped to [0, N - 1]: (new mu, the clamped adjustment)."""
    delta = step_size(acc, ang, p.resolved(n_prompts))
    return min(max(mu + delta, 0.0), float(n_prompts - 1)), delta


def step_size(acc: float, ang: float, p: ScheduleParams) -> float:
    """The clamped step of mu; p resolved (GainSchedule.params is)."""
    if p.n is None or p.adj_max is None:
        raise ValueError("step_size needs resolved parameters: ScheduleParams.resolved(N)")
    raw = p.n * math.tanh(p.alpha * (acc - p.beta)) + p.n * math.tanh(p.alpha * ang)
    return min(max(raw, p.adj_min), p.adj_max)
