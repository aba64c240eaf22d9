"""What the default curriculum serves of a ranking: the expected share of zero-variance
groups among the draws of the schedule's first epochs, against uniform sampling."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

EPOCHS = 10  # "the first steps" of the curriculum: this many schedule epochs
BATCH_SIZE = 256  # the README's schedule example; per-draw shares do not depend on it


def served_shares(
    score: np.ndarray,
    zero_var: np.ndarray,
    pass_rate: np.ndarray | None,
    n_run: int,
    params: Any,
    epochs: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Per row of (B, n) arrays: the mean over the first `epochs` schedule epochs of the
    expected zero-variance share of a draw, (B,), and mu at each epoch, (B, epochs). The n
    prompts of a row, ranked by score (high first, ties by position, NaN last), stand for a
    uniform sample of a run of n_run: the i-th sits at rank position (i + 0.5) n_run / n, and
    a draw lands on it with weight p(position) (a ratio estimator of the run's share)."""
    from gain_curate.curriculum.schedule import GainSchedule

    b, n = score.shape
    order = np.argsort(np.where(np.isfinite(score), -score, np.inf), axis=-1, kind="stable")
    zv = np.take_along_axis(np.asarray(zero_var, np.float64), order, -1)
    pr = (
        None
        if pass_rate is None
        else np.take_along_axis(np.asarray(pass_rate, np.float64), order, -1)
    )
    position = (np.arange(n) + 0.5) * n_run / n
    scheds = [GainSchedule(n_run, params) for _ in range(b)]
    shares, mus = np.zeros(b), np.zeros((b, epochs))
    for e in range(epochs):
        mus[:, e] = [s.mu for s in scheds]
        logits = -((position - mus[:, e, None]) ** 2) / (2 * scheds[0].sigma ** 2)
        w = np.exp(logits - logits.max(-1, keepdims=True))  # mu may pass the end ("past")
        w[[s.uniform for s in scheds]] = 1.0
        w /= w.sum(-1, keepdims=True)
        shares += (w * zv).sum(-1) / epochs
        if pr is None:
            continue  # mu stays at mu0
        for s, acc in zip(scheds, (w * pr).sum(-1)):  # the expected fraction correct moves mu
            s.observe_accuracy([float(acc)])
            s.end_epoch()
    return shares, mus


@dataclass(frozen=True)
class Serves:
    """What the default curriculum serves of a ranking (curriculum_serves)."""

    share: float  # expected zero-variance share of its draws
    uniform: float  # uniform sampling's: the share of zero-variance groups
    epochs: int
    batch_size: int
    n_run: int
    mu: list[float]  # the schedule's mu at each epoch


def curriculum_serves(
    scores: np.ndarray,
    zero_var: np.ndarray,
    batch_size: int = BATCH_SIZE,
    epochs: int = EPOCHS,
    *,
    n_run: int | None = None,
    pass_rate: np.ndarray | None = None,
    params: Any = None,
) -> Serves:
    """The expected share of zero-variance groups among the draws of the default schedule's
    first `epochs` epochs over the ranking `scores` (served high first), against uniform
    sampling (the share of zero-variance groups, mean(zero_var)).

    The prompts are a sample of a run of n_run ranked prompts (default: just these); the
    default schedule (ScheduleParams defaults: mu0 = 0, sigma = 1000 rank positions) draws
    from the top of the run's ranking first, so only a run much larger than sigma shows a
    difference. With `pass_rate`, mu moves after every epoch by the rule with the epoch's
    expected accuracy (the model as sampled; no angle term, as at the first measured step);
    without, mu stays at mu0. A draw's share: the first draw of an epoch exactly; the rest of
    its B draws (without replacement) nearly so while B is small beside sigma."""
    from gain_curate.curriculum.schedule import ScheduleParams

    n_run = int(n_run or len(scores))
    params = params or ScheduleParams(batch_size=min(batch_size, n_run))
    pr = None if pass_rate is None else np.asarray(pass_rate, np.float64)[None]
    share, mus = served_shares(
        np.asarray(scores, np.float64)[None],
        np.asarray(zero_var, bool)[None],
        pr,
        n_run,
        params,
        epochs,
    )
    return Serves(
        float(share[0]), float(np.mean(zero_var)), epochs, params.batch_size, n_run, mus[0].tolist()
    )
