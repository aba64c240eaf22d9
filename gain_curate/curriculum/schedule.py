"""GAIN-RL's Gaussian curriculum over the ranking (docs/design.md), pure Python + numpy.

Over rank positions r = 0..N-1 (0 = highest angle concentration), a schedule epoch (one
trainer step in every adapter) draws B prompts without replacement with
p(r) ~ exp(-(r - mu)^2 / (2 sigma^2)). After the epoch,

    delta = clamp(n tanh(alpha (acc - beta)) + n tanh(alpha ang), adj_min, adj_max)
    mu    = clamp(mu + delta, 0, N - 1)

acc is the epoch's fraction correct in [0, 1]. ang, the angle term, is only ever a
MEASUREMENT taken during training with the current weights (`observe_angles`: the same
segment sums as `score`, on the step's prompts); an epoch with no measurement has ang = 0.
An offline gain_score never changes during training, so it would be a constant push
(SmolLM2's ~1.34 adds +495 positions every step); it is not used. `angle` says how a
measurement becomes ang:

    "change"  (default) mean over the step's prompts of (online score - offline score),
              minus that same mean at the first measured step: how much more concentrated
              the model's states on these prompts are than when they were ranked; 0 at the
              start by construction, whatever template the offline run used;
    "level"   the batch mean of the online score itself: the reference's rule (paper mode);
    "off"     ang = 0 always.

`at_end` says what happens once mu would pass the last rank position:

    "restart" (default) a new pass starts from the top (mu = mu0);
    "hold"    mu stays at N - 1 and the bottom of the ranking is sampled;
    "uniform" from then on draws are uniform over the whole ranking;
    "past"    mu is never clamped and runs on past N - 1, so the draws pile up on the last
              ranks (the reference: its `self.mean += adjustment` has no bound).

`ScheduleParams.paper(...)` is the reference's rule (github wangqinsi1/GAINRL,
verl_gainrl/verl/trainer/ppo/gainrl_sampler.py `update_after_epoch`, called after every
training step): angle "level", at_end "past", its defaults (mu0 = 0, sigma = 1000, n = 500,
alpha = 2, beta = 0.5, adj in [0, 1000]), except that acc is the true fraction correct (the
verl port computes tanh(alpha (acc / 2 - beta)) on a 0/1 reward, so its accuracy term is
never positive; its TRL port's 0/2 reward makes acc / 2 the fraction correct, as here).
Its online `ang` is not this tool's metric: the verl port normalises hidden states over the
token axis (a value of about hidden size / length, not a cosine) over prompt and response
tokens of a hard-coded layer 23; paper mode feeds the rule the paper's own definition
(C_intra + w C_inter of the prompt, measured online), on the rule's scale.

One object serves every trainer: `plan_epoch()` is deterministic in (seed, epoch, mu), so a
state_dict taken mid-epoch resumes the very same remaining draws. How an epoch is drawn
(an exponential race over the ranking, cached per epoch): gain_curate.curriculum.draws; the
parameters and the rule as a pure function: .params; the history and checkpoint: .state.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, fields, replace
from typing import Any

import numpy as np

from gain_curate.curriculum.draws import DrawAt, EpochDraws, gaussian
from gain_curate.curriculum.params import (
    ANGLE_MODES,
    END_POLICIES,
    ScheduleParams,
    mu_update,
    step_size,
)
from gain_curate.curriculum.state import EpochRecord, ScheduleState

__all__ = [
    "ANGLE_MODES",
    "END_POLICIES",
    "STATE_VERSION",
    "EpochRecord",
    "GainSchedule",
    "ScheduleParams",
    "ScheduleState",
    "mu_update",
    "step_size",
]

STATE_VERSION = 3  # 3: epochs drawn by an exponential race (2: numpy choice)


class GainSchedule:
    """The curriculum for N ranked prompts; rank positions in, rank positions out.

    uids (by rank) lets trainers report results by gain_uid; scores (by rank, the offline
    gain_score) are the baseline of the "change" angle term. Both are optional.
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
        self.params = params.resolved(n_prompts)  # sigma, n, adj_max not given: scaled to N
        self.uids = list(uids) if uids is not None else None
        self._rank_of = {u: r for r, u in enumerate(self.uids)} if self.uids is not None else {}
        s = np.asarray(scores if scores is not None else np.full(n_prompts, np.nan), np.float64)
        self.scores = s  # NaN = unscored: no baseline, so no "change" measurement
        self.mu = float(min(max(params.mu0, 0.0), n_prompts - 1))
        self.epoch = 0
        self.consumed = 0  # draws of the current epoch already handed out
        self.passes = 0  # completed sweeps of the ranking (at_end = "restart")
        self.uniform = False  # at_end = "uniform" and mu has reached the end
        self.ang_offset: float | None = None  # "change": the first measured step's mean
        self._reset_tallies()
        self.history: list[EpochRecord] = []
        self._draws = EpochDraws(n_prompts)  # the current epoch's draw order, cached

    def _reset_tallies(self) -> None:
        self._correct, self._seen = 0.0, 0
        self._ang_sum, self._ang_seen = 0.0, 0

    def _ranks(self, uids: Sequence[str]) -> list[int]:
        try:
            return [self._rank_of[u] for u in uids]
        except KeyError as e:
            raise KeyError(f"unknown gain_uid {e.args[0]!r}") from None

    # -- drawing (gain_curate.curriculum.draws)

    @property
    def sigma(self) -> float:
        p = self.params
        if p.sigma_fraction is not None:
            return p.sigma_fraction * self.n_prompts
        assert p.sigma is not None  # resolved in __init__
        return p.sigma

    def probabilities(self) -> np.ndarray:
        """p(r) over rank positions for the current mu (sums to 1): what one draw follows."""
        return gaussian(self.n_prompts, self.mu, self.sigma, self.uniform)

    def draw_order(self, size: int, epoch: int | None = None) -> np.ndarray:
        """The first `size` (at most N) rank positions of an epoch's draw order, read-only;
        planned once per epoch at the current mu; deterministic in (seed, epoch, mu)."""
        e = self.epoch if epoch is None else epoch
        p = self.params
        return self._draws.order(
            DrawAt(p.seed, e, self.mu, self.sigma, self.uniform, p.batch_size), size
        )

    def plan_epoch(self, epoch: int | None = None) -> np.ndarray:
        """B rank positions drawn at the current mu, in draw order; deterministic in
        (seed, epoch, mu). `epoch` defaults to the current one; a trainer that draws ahead
        of its results (TRL prefetches a batch) passes its own draw counter."""
        return self.draw_order(self.params.batch_size, epoch).copy()

    def remaining(self) -> np.ndarray:
        """What is left of this epoch's B draws after `consumed` draws."""
        return self.draw_order(self.params.batch_size)[self.consumed :].copy()

    def take(self, k: int, *, extend: bool = False) -> np.ndarray:
        """Hand out the next k draws of this epoch and remember that they were handed out:
        O(k). At most the epoch's B draws, unless `extend`: then draws go on past the B-th in
        the same order (the same Gaussian, still without replacement, up to N), for a trainer
        that replaces filtered prompts within a step."""
        stop = self.consumed + k if extend else min(self.consumed + k, self.params.batch_size)
        out = self.draw_order(stop)[self.consumed : stop].copy()
        self.consumed += len(out)
        return out

    # -- results and the rule

    def observe(self, uids: Sequence[str], correct: Sequence[float]) -> None:
        """Tally results: one entry per prompt (or response), correct as 0/1 or a fraction."""
        if len(uids) != len(correct):
            raise ValueError(f"{len(uids)} uids but {len(correct)} results")
        self._ranks(uids)
        self.observe_accuracy(correct)

    def observe_accuracy(self, correct: Sequence[float]) -> None:
        """Tally results when only accuracies are known (open-loop plans, tests)."""
        self._correct += float(np.sum(correct))
        self._seen += len(correct)

    def observe_angles(self, uids: Sequence[str], online: Sequence[float]) -> None:
        """Tally the ONLINE angle concentration (C_intra + w C_inter with the current weights)
        of the step's prompts. "change" pairs each with the prompt's offline score."""
        if len(uids) != len(online):
            raise ValueError(f"{len(uids)} uids but {len(online)} angle values")
        v = np.asarray(online, dtype=np.float64)
        if self.params.angle == "change":
            v = v - self.scores[self._ranks(uids)]
        v = v[np.isfinite(v)]
        self._ang_sum += float(v.sum())
        self._ang_seen += len(v)

    def angle_term(self) -> float | None:
        """This epoch's ang (None when nothing was measured or the term is off)."""
        if self.params.angle == "off" or not self._ang_seen:
            return None
        mean = self._ang_sum / self._ang_seen
        if self.params.angle == "level":
            return mean
        if self.ang_offset is None:
            self.ang_offset = mean
        return mean - self.ang_offset

    def end_epoch(self, *, move: bool = True) -> EpochRecord:
        """Apply the update rule with this epoch's accuracy and angle term; next epoch.
        move=False ends an epoch whose results never came: mu stays (event "unscored")."""
        p = self.params
        acc = self._correct / self._seen if self._seen else 0.0
        ang = self.angle_term() if move else None
        delta = step_size(acc, 0.0 if ang is None else ang, p) if move else 0.0
        mu_before, target = self.mu, self.mu + delta
        event = None
        if not move:
            event = "unscored"
        elif self.uniform:
            pass  # mu stays where it reached the end; draws are uniform
        elif p.at_end == "past":
            self.mu = target  # the reference: no clamp at either end
        elif target > self.n_prompts - 1 and p.at_end == "restart":
            self.mu, self.passes, event = (
                float(min(max(p.mu0, 0.0), self.n_prompts - 1)),
                self.passes + 1,
                "restart",
            )
        else:
            self.mu = min(max(target, 0.0), float(self.n_prompts - 1))
            if p.at_end == "uniform" and target >= self.n_prompts - 1:
                self.uniform, event = True, "uniform"
        record = EpochRecord(self.epoch, mu_before, acc, ang, delta, self.mu, self.passes, event)
        self.history.append(record)
        self.epoch += 1
        self.consumed = 0
        self._reset_tallies()
        return record

    def state_dict(self) -> ScheduleState:
        return {
            "version": STATE_VERSION,
            "params": asdict(self.params),
            "n_prompts": self.n_prompts,
            "mu": self.mu,
            "epoch": self.epoch,
            "consumed": self.consumed,
            "passes": self.passes,
            "uniform": self.uniform,
            "ang_offset": self.ang_offset,
            "correct": self._correct,
            "seen": self._seen,
            "ang_sum": self._ang_sum,
            "ang_seen": self._ang_seen,
            "history": [h.to_state() for h in self.history],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Load a state of this version or an older one. Version 1 (gain-curate 0.1: no
        version key) summed OFFLINE scores in its angle tally, which this version never uses:
        dropped. Versions 1-2 drew epochs another way: mid-epoch, the rest of that epoch is
        drawn afresh (gain_curate.curriculum.draws)."""
        version = int(state.get("version", 1))
        if version > STATE_VERSION:
            raise ValueError(
                f"schedule state version {version} is newer than this gain-curate reads "
                f"({STATE_VERSION}): upgrade gain-curate or start the schedule over"
            )
        if state["n_prompts"] != self.n_prompts:
            raise ValueError(
                f"state is for {state['n_prompts']} prompts, this schedule has {self.n_prompts}"
            )
        known = {f.name for f in fields(ScheduleParams)}
        self.params = replace(
            self.params, **{k: v for k, v in state["params"].items() if k in known}
        ).resolved(self.n_prompts)  # states 1-3 hold explicit numbers: the same draws
        self.mu, self.epoch, self.consumed = (
            float(state["mu"]),
            int(state["epoch"]),
            int(state["consumed"]),
        )
        self._correct, self._seen = float(state["correct"]), int(state["seen"])
        self.history = [EpochRecord.from_state(h) for h in state["history"]]
        if version == 1:
            self.passes, self.uniform, self.ang_offset = 0, False, None
            self._ang_sum, self._ang_seen = 0.0, 0
            return
        self.passes, self.uniform = int(state["passes"]), bool(state["uniform"])
        self.ang_offset = None if state["ang_offset"] is None else float(state["ang_offset"])
        self._ang_sum, self._ang_seen = float(state["ang_sum"]), int(state["ang_seen"])
