"""GAIN-RL's Gaussian curriculum over the ranking (DESIGN.md section 5), pure Python + numpy.

Over rank positions r = 0..N-1 (0 = highest angle concentration), an epoch draws B prompts
without replacement with p(r) ~ exp(-(r - mu)^2 / (2 sigma^2)). After the epoch,

    delta = clamp(n tanh(alpha (acc - beta)) + n tanh(alpha ang), adj_min, adj_max)
    mu    = clamp(mu + delta, 0, N - 1)

acc is the epoch's fraction correct in [0, 1]. ang is the angle signal of the epoch's
prompts: the paper measures it online during training; here it is the mean OFFLINE
gain_score (what `score` wrote) of the prompts whose results the epoch observed, or of the
epoch's plan when results come without ids, so no extra forward pass is needed. Defaults are the paper's: mu0 = 0, sigma = 1000, n = 500, alpha = 2, beta = 0.5,
adj_min = 0, adj_max = 1000.

One object serves every trainer: `plan_epoch()` is deterministic in (seed, epoch, mu), so a
state_dict taken mid-epoch (mu, epoch, consumed, the accuracy tally) resumes the very same
remaining draws.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


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

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.sigma <= 0 or (self.sigma_fraction is not None and self.sigma_fraction <= 0):
            raise ValueError("sigma must be positive")
        if self.adj_min > self.adj_max:
            raise ValueError(f"adj_min {self.adj_min} > adj_max {self.adj_max}")


def mu_update(
    mu: float, acc: float, ang: float, p: ScheduleParams, n_prompts: int
) -> tuple[float, float]:
    """One step of the rule: (new mu, the clamped adjustment)."""
    raw = p.n * math.tanh(p.alpha * (acc - p.beta)) + p.n * math.tanh(p.alpha * ang)
    delta = min(max(raw, p.adj_min), p.adj_max)
    return min(max(mu + delta, 0.0), float(n_prompts - 1)), delta


class GainSchedule:
    """The curriculum for N ranked prompts; rank positions in, rank positions out.

    uids (by rank) lets trainers report results by gain_uid; scores (by rank) feed the
    angle term. Both are optional: without scores the angle term is 0.
    """

    def __init__(
        self,
        n_prompts: int,
        params: ScheduleParams,
        *,
        uids: Sequence[str] | None = None,
        scores: Sequence[float] | None = None,
    ) -> None:
        if n_prompts < 1:
            raise ValueError("the schedule needs at least one prompt")
        if params.batch_size > n_prompts:
            raise ValueError(f"batch_size {params.batch_size} exceeds the {n_prompts} prompts")
        self.n_prompts = n_prompts
        self.params = params
        self.uids = list(uids) if uids is not None else None
        self._rank_of = {u: r for r, u in enumerate(self.uids)} if self.uids is not None else {}
        s = np.asarray(scores if scores is not None else np.zeros(n_prompts), dtype=np.float64)
        self.scores = np.where(np.isfinite(s), s, 0.0)  # unscored rows add no angle signal
        self.mu = float(min(max(params.mu0, 0.0), n_prompts - 1))
        self.epoch = 0
        self.consumed = 0  # draws of the current epoch already handed out
        self._correct = 0.0
        self._seen = 0
        self._ang_sum = 0.0
        self._ang_seen = 0
        self.history: list[dict[str, float]] = []
        self._plan_cache: tuple[tuple[int, float], np.ndarray] | None = None

    @property
    def sigma(self) -> float:
        p = self.params
        return p.sigma_fraction * self.n_prompts if p.sigma_fraction is not None else p.sigma

    def probabilities(self) -> np.ndarray:
        """p(r) over rank positions for the current mu (sums to 1)."""
        r = np.arange(self.n_prompts, dtype=np.float64)
        logits = -((r - self.mu) ** 2) / (2.0 * self.sigma**2)
        w = np.exp(logits - logits.max())
        if np.count_nonzero(w) < self.params.batch_size:
            # far tails underflow to 0: give them the smallest weight so B distinct draws exist
            w = np.maximum(w, np.finfo(np.float64).tiny)
        return w / w.sum()

    def plan_epoch(self, epoch: int | None = None) -> np.ndarray:
        """B rank positions drawn at the current mu, in draw order; deterministic in
        (seed, epoch, mu). `epoch` defaults to the current one; a trainer that draws ahead
        of its results (TRL prefetches a batch) passes its own draw counter."""
        rng = np.random.default_rng([self.params.seed, self.epoch if epoch is None else epoch])
        return rng.choice(
            self.n_prompts, size=self.params.batch_size, replace=False, p=self.probabilities()
        )

    def remaining(self) -> np.ndarray:
        """What is left of this epoch's plan after `consumed` draws."""
        return self.plan_epoch()[self.consumed :]

    def take(self, k: int) -> np.ndarray:
        """Hand out the next k draws of this epoch and remember that they were handed out."""
        out = self.remaining()[:k]
        self.consumed += len(out)
        return out

    def observe(self, uids: Sequence[str], correct: Sequence[float]) -> None:
        """Tally results: one entry per response, correct as 0/1 (or a fraction)."""
        if len(uids) != len(correct):
            raise ValueError(f"{len(uids)} uids but {len(correct)} results")
        for u, c in zip(uids, correct):
            if u not in self._rank_of:
                raise KeyError(f"unknown gain_uid {u!r}")
            self._correct += float(c)
            self._seen += 1
            self._ang_sum += self.scores[self._rank_of[u]]
            self._ang_seen += 1

    def observe_accuracy(self, correct: Sequence[float]) -> None:
        """Tally results when only accuracies are known (open-loop plans, tests)."""
        self._correct += float(np.sum(correct))
        self._seen += len(correct)

    def end_epoch(self) -> dict[str, float]:
        """Apply the update rule with this epoch's accuracy and angle signal; next epoch."""
        acc = self._correct / self._seen if self._seen else 0.0
        if self._ang_seen:
            ang = self._ang_sum / self._ang_seen
        else:
            ang = float(self.scores[self.plan_epoch()].mean())
        mu_before = self.mu
        self.mu, delta = mu_update(self.mu, acc, ang, self.params, self.n_prompts)
        record = {
            "epoch": self.epoch,
            "mu": mu_before,
            "acc": acc,
            "ang": ang,
            "delta": delta,
            "mu_next": self.mu,
        }
        self.history.append(record)
        self.epoch += 1
        self.consumed = 0
        self._correct, self._seen, self._ang_sum, self._ang_seen = 0.0, 0, 0.0, 0
        return record

    def state_dict(self) -> dict[str, Any]:
        return {
            "params": asdict(self.params),
            "n_prompts": self.n_prompts,
            "mu": self.mu,
            "epoch": self.epoch,
            "consumed": self.consumed,
            "correct": self._correct,
            "seen": self._seen,
            "ang_sum": self._ang_sum,
            "ang_seen": self._ang_seen,
            "history": list(self.history),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._plan_cache = None
        if state["n_prompts"] != self.n_prompts:
            raise ValueError(
                f"state is for {state['n_prompts']} prompts, this schedule has {self.n_prompts}"
            )
        self.params = ScheduleParams(**state["params"])
        self.mu, self.epoch, self.consumed = (
            float(state["mu"]),
            int(state["epoch"]),
            int(state["consumed"]),
        )
        self._correct, self._seen = float(state["correct"]), int(state["seen"])
        self._ang_sum, self._ang_seen = float(state["ang_sum"]), int(state["ang_seen"])
        self.history = list(state["history"])


def open_loop_plan(
    schedule: GainSchedule, epochs: int, assumed_accuracy: float
) -> list[np.ndarray]:
    """Plans for `epochs` epochs, as if every epoch reached `assumed_accuracy`.

    For trainers without a sampler hook: the plan is fixed up front, so mu moves by the
    assumed accuracy and the offline angle signal, not by what the trainer observes.
    """
    if not 0.0 <= assumed_accuracy <= 1.0:
        raise ValueError(f"assumed accuracy must be in [0, 1], got {assumed_accuracy}")
    plans = []
    for _ in range(epochs):
        plan = schedule.plan_epoch()
        plans.append(plan)
        schedule.observe_accuracy([assumed_accuracy] * len(plan))
        schedule.end_epoch()
    return plans
