"""The curriculum in a closed loop, before training: every ranking served to a simulated
trainer whose rewards come from KNOWN pass rates (`schedule OUT --simulate --pass-rates
FILE`, validate's OUT/validate.parquet or any file of pass rates by gain_uid or question).

Only the prompts with a known pass rate take part (M of the run's N). Each step draws B of
them as the ranking's schedule would, G completions per prompt are Bernoulli(p) (the same
random numbers for every ranking: U[step, prompt] < p), a group of G equal rewards is a
zero-variance group (GRPO learns nothing from it), and the step's results go back to the
schedule (mu moves by the rule; learnability-online refits its probe). The figure per
ranking is the share of zero-variance groups over the first `steps` steps.

The pass rates stay fixed here (a policy that does not learn), so the online probe can only
learn what a static probe was fit on; its edge over a static ranking is tracking a policy
that changes, which a fixed truth cannot show (tests/test_learning.py drifts one).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from gain_curate.curriculum.schedule import GainSchedule, ScheduleParams

STEPS = 50
RANKINGS = ("uniform", "angle", "learnability", "learnability-online")


@dataclass(frozen=True)
class ZeroVariance:
    """One ranking's figure (None with the reason when it cannot be simulated)."""

    ranking: str
    share: float | None
    why: str = ""

    def line(self, steps: int) -> str:
        value = f"{self.share:.3f}" if self.share is not None else f"n/a ({self.why})"
        return f"zero-variance share, first {steps} steps: {self.ranking} {value}"


@dataclass(frozen=True)
class Loop:
    """What the simulated trainer is: M prompts (gain_rank of each, their pass rates)."""

    ranks: np.ndarray  # (M,) gain_rank of the prompts with a known pass rate, increasing
    rates: np.ndarray  # (M,) their pass rates
    uids: list[str]  # (M,) their gain_uid
    batch_size: int
    group_size: int
    steps: int
    seed: int

    def header(self, n_run: int) -> str:
        return (
            f"closed loop over the {len(self.ranks):,} of {n_run:,} prompts with a known pass "
            f"rate: B = {self.batch_size}, G = {self.group_size} completions, "
            f"{self.steps} steps, seed {self.seed}"
        )


def make_loop(
    rates_by_rank: np.ndarray,
    uids_by_rank: Sequence[str],
    batch_size: int,
    group_size: int = 8,
    steps: int = STEPS,
    seed: int = 0,
) -> Loop:
    """The loop over the rows whose rate is known; B capped at M / 8 so that a ranking has
    room to choose (ValueError when fewer than 16 rows have one)."""
    rates = np.asarray(rates_by_rank, np.float64)
    known = np.flatnonzero(np.isfinite(rates))
    if len(known) < 16:
        raise ValueError(
            f"{len(known)} prompts have a known pass rate: the closed loop needs at least 16 "
            "(give `pass_rates` for more of the run's prompts)"
        )
    if group_size < 2:
        raise ValueError(f"`group_size` must be at least 2 completions, got {group_size}")
    b = max(1, min(batch_size, len(known) // 8))
    uids = [uids_by_rank[i] for i in known]
    return Loop(known, rates[known], uids, b, group_size, steps, seed)


def serve(loop: Loop, sched: GainSchedule) -> float:
    """The share of zero-variance groups `sched` serves over the loop's steps. Position k of
    the schedule is loop prompt order[k]; sched.uids are the loop's uids in that order."""
    at = {u: i for i, u in enumerate(loop.uids)}
    u = np.random.default_rng([loop.seed, 29]).random((loop.steps, len(loop.uids), loop.group_size))
    zero = 0
    for step in range(loop.steps):
        plan = sched.plan_epoch()
        idx = np.array([at[sched.uids[int(r)]] for r in plan])
        wins = (u[step, idx] < loop.rates[idx, None]).sum(1)  # (B,) correct of G
        zero += int(((wins == 0) | (wins == loop.group_size)).sum())
        sched.observe([sched.uids[int(r)] for r in plan], wins / loop.group_size)
        sched.end_epoch()
    return zero / (loop.steps * loop.batch_size)


def compare(
    loop: Loop,
    params_kw: Mapping[str, Any],
    learn_rank: np.ndarray | None,
    online: Mapping[str, Any] | None,
) -> list[ZeroVariance]:
    """Every ranking of RANKINGS in the loop. learn_rank: gain_learn_rank by the loop's
    prompts (None: no `predict` yet); online: the online mode's gain config (`states`, ...)
    or None when the run kept no states."""
    kw = {k: v for k, v in params_kw.items() if k != "paper"}
    params = ScheduleParams(**{**kw, "batch_size": loop.batch_size})
    m = len(loop.uids)
    out = []
    for name in RANKINGS:
        order = np.arange(m)  # angle: the loop's prompts in gain_rank order
        if name == "learnability":
            if learn_rank is None:
                out.append(
                    ZeroVariance(name, None, "no gain_learn_rank: run `gain-curate predict`")
                )
                continue
            order = np.lexsort((loop.ranks, np.asarray(learn_rank)))
        uids = [loop.uids[i] for i in order]
        if name == "learnability-online":
            if online is None:
                out.append(ZeroVariance(name, None, "no states: score with `keep_states`"))
                continue
            from gain_curate.curriculum.learning import online_schedule

            sched: GainSchedule = online_schedule(m, params, uids, None, online)
        else:
            sched = GainSchedule(m, params, uids=uids)
            sched.uniform = name == "uniform"
        out.append(ZeroVariance(name, serve(loop, sched)))
    return out
