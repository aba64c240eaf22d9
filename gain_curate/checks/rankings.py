"""Which ranking serves a GRPO trainer best: every ranking against the same rollouts.

compare_rankings puts every ranking (gain_score, C_intra, C_inter, question length, the
probes' held-out predictions) against the same rollouts, each statistic with its seeded
bootstrap interval (bootstrap.py), and says from the intervals which ranking predicts best.
Bootstrap intervals of a probe treat its held-out predictions as fixed (the refits inside
the cross-validation are not redone per resample).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from gain_curate.bootstrap import (
    LEVEL,
    MIN_INTERVAL_N,
    RESAMPLES,
    Estimate,
    auroc_ci,
    interval,
    partial_spearman_ci,
    resample_values,
    spearman_ci,
)
from gain_curate.checks.probe import ProbeFit, learnability
from gain_curate.checks.served import BATCH_SIZE, EPOCHS, served_shares


def signal_rankings(
    signals: dict[str, np.ndarray], probes: dict[str, ProbeFit] | None = None
) -> dict[str, np.ndarray]:
    """The rankings to compare, each a score served high first, by label: gain_score, C_intra,
    C_inter, question length (shortest first), and per probe its predicted pass rate and its
    learnability ranking p (1 - p)."""
    out = {
        "gain_score": signals["gain_score"],
        "C_intra": signals["c_intra"],
        "C_inter": signals["c_inter"],
        "question length (shortest first)": -np.asarray(signals["question_tokens"], np.float64),
    }
    for name, fit in (probes or {}).items():
        out[f"probe pass rate ({name})"] = fit.heldout
        out[f"probe learnability ({name})"] = learnability(fit.heldout)
    return out


@dataclass(frozen=True)
class Targets:
    """What the rankings are measured against, per prompt (n,): the pass rate p, whether its
    group has zero variance, p (1 - p), and (with rollouts) the GRPO gradient norm."""

    pass_rate: np.ndarray
    zero_variance: np.ndarray
    learnability: np.ndarray
    grpo_grad_norm: np.ndarray | None = None


@dataclass(frozen=True)
class CurriculumServed:
    """What the default curriculum serves: its parameters and uniform sampling's share."""

    n_run: int
    batch_size: int
    epochs: int
    mu0: float
    sigma: float
    note: str | None
    uniform_share: Estimate


@dataclass(frozen=True)
class RankingTable:
    """compare_rankings: per ranking label, its statistics (name -> Estimate), and the
    verdict over them."""

    resamples: int
    seed: int
    curriculum: CurriculumServed
    rankings: dict[str, dict[str, Estimate]]
    probes: dict[str, ProbeFit]
    verdict: str
    uncertainty: list[str]

    def to_json(self) -> dict[str, object]:
        """validate.json's bootstrap, curriculum, rankings, probes, verdict, uncertainty."""
        c = self.curriculum
        return {
            "bootstrap": {
                "resamples": self.resamples,
                "seed": self.seed,
                "level": 0.95,
                "method": "percentile bootstrap over prompts",
            },
            "curriculum": {**asdict(c), "uniform_share": c.uniform_share.to_dict()},
            "rankings": {
                label: {k: e.to_dict() for k, e in row.items()}
                for label, row in self.rankings.items()
            },
            "probes": {
                name: {"alpha": f.alpha, "folds": f.folds, "d": len(f.coef), **f.meta}
                for name, f in self.probes.items()
            },
            "verdict": self.verdict,
            "uncertainty": self.uncertainty,
        }


def compare_rankings(
    rankings: dict[str, np.ndarray],
    targets: Targets,
    *,
    length: np.ndarray,
    n_run: int | None = None,
    batch_size: int = BATCH_SIZE,
    epochs: int = EPOCHS,
    seed: int = 0,
    resamples: int = RESAMPLES,
    probes: dict[str, ProbeFit] | None = None,
) -> RankingTable:
    """Per ranking (label -> score, served high first), with seeded bootstrap intervals (the
    same resamples for every statistic): ranking_row's statistics; the Spearman with p
    adjusted for the number of rankings compared; the default curriculum's parameters; the
    one-line verdict."""
    from gain_curate.curriculum.schedule import ScheduleParams

    p = np.asarray(targets.pass_rate, np.float64)
    zv = np.asarray(targets.zero_variance, np.float64)
    n, n_run = len(p), int(n_run or len(p))
    params = ScheduleParams(batch_size=min(batch_size, n_run)).resolved(n_run)
    kw = {"seed": seed, "resamples": resamples}
    enough = n >= MIN_INTERVAL_N
    uniform = resample_values(lambda z: z.mean(-1), (zv,), **kw) if enough else np.empty(0)
    served = Served(n_run, params, epochs, enough, uniform)
    rows = {
        label: ranking_row(label, np.asarray(score, np.float64), targets, length, served, kw)
        for label, score in rankings.items()
    }
    # the verdict picks one of m rankings: its interval must hold for all m at once (Bonferroni)
    m = sum(row["spearman_pass_rate"].value is not None for row in rows.values())
    for label, score in rankings.items():
        rows[label]["spearman_pass_rate_adjusted"] = spearman_ci(
            score, p, level=1 - (1 - LEVEL) / max(m, 1), **kw
        )
    note = None
    if n_run <= params.sigma:  # the Gaussian is nearly flat over the run
        note = (
            f"the default schedule (sigma = {params.sigma:g} rank positions) draws nearly "
            f"uniformly from a run of {n_run} prompts, so every ranking serves about the "
            "uniform share; measured over a scored run's N (validate --run) it tells them apart"
        )
    curriculum = CurriculumServed(
        n_run, params.batch_size, epochs, params.mu0, params.sigma, note,
        interval(zv.mean(), uniform, n, null=None),
    )  # fmt: skip
    return RankingTable(
        resamples, seed, curriculum, rows, dict(probes or {}), verdict(rows, n),
        uncertainty_lines(rows, n),
    )  # fmt: skip


@dataclass(frozen=True)
class Served:
    """The default curriculum over a run of n_run prompts, for ranking_row: its shares of
    zero-variance groups, on the bootstrap's resamples (`uniform`: uniform sampling's)."""

    n_run: int
    params: Any  # ScheduleParams
    epochs: int
    enough: bool  # enough prompts for an interval
    uniform: np.ndarray  # (resamples,) or (0,)

    def __call__(self, s: np.ndarray, z: np.ndarray, q: np.ndarray) -> np.ndarray:
        return served_shares(s, z, q, self.n_run, self.params, self.epochs)[0]


def ranking_row(
    label: str,
    score: np.ndarray,
    targets: Targets,
    length: np.ndarray,
    served: Served,
    kw: dict[str, int],
) -> dict[str, Estimate]:
    """One ranking's statistics: Spearman with p, p (1 - p) and the GRPO gradient norm; the
    partial Spearman with p and p (1 - p) at fixed question length; the AUROC of the ranking
    for a zero-variance group (below 0.5: it ranks them lower); the zero-variance share of
    the default curriculum's first epochs of draws, and its difference from uniform."""
    p = np.asarray(targets.pass_rate, np.float64)
    zv = np.asarray(targets.zero_variance, np.float64)
    named = {"pass_rate": (p, "the pass rate"), "learnability": (targets.learnability, "p (1 - p)")}
    if targets.grpo_grad_norm is not None:
        named["grpo_grad_norm"] = (targets.grpo_grad_norm, "the GRPO gradient norm")
    row: dict[str, Estimate] = {}
    for t, (y, name) in named.items():
        row[f"spearman_{t}"] = spearman_ci(score, y, what=(label, name), **kw)
    for t in ("pass_rate", "learnability"):
        what = (label, named[t][1], "question length")
        row[f"partial_spearman_{t}_given_length"] = partial_spearman_ci(
            score, named[t][0], length, what=what, **kw
        )
    row["auroc_zero_variance"] = auroc_ci(score, zv > 0, what="are zero-variance groups", **kw)
    # the served share and its difference from uniform, on the same resamples
    n = len(p)
    share = served(score[None], zv[None], p[None])[0]
    shares = resample_values(served, (score, zv, p), **kw) if served.enough else np.empty(0)
    row["curriculum_zero_variance_share"] = interval(share, shares, n, null=None)
    row["curriculum_minus_uniform"] = interval(
        share - zv.mean(), shares - served.uniform, n, null=0.0
    )
    return row


def uncertainty_lines(rows: dict[str, dict[str, Estimate]], n: int) -> list[str]:
    """One line for the intervals that include their null; each other warning and each
    reason for an undefined statistic once."""
    skip = ("curriculum_zero_variance_share", "spearman_pass_rate_adjusted")  # no null; a repeat
    ests = [(label, k, e) for label, row in rows.items() for k, e in row.items() if k not in skip]
    tested = [e for _, _, e in ests if e.low is not None]
    open_ = [e for e in tested if e.warning and "the interval includes" in e.warning]
    out = []
    if open_:
        out.append(
            f"n = {n}: {len(open_)} of {len(tested)} intervals include 0 (0.5 for an AUROC), "
            "so this sample cannot tell their sign; sample more prompts"
        )
    seen: set[str] = set()
    for _, _, e in ests:
        for line in (e.warning, e.reason and f"n/a: {e.reason}"):
            if line and "the interval includes" not in line and line not in seen:
                seen.add(line)
                out.append(line)
    return out


def verdict(rows: dict[str, dict[str, Estimate]], n: int) -> str:
    """Which ranking predicts the pass rate best, from the intervals: the highest Spearman
    whose interval lies above 0 once adjusted for the number of rankings compared (else the
    best unadjusted one, named as possibly chance), the rankings whose intervals overlap it,
    and the angle score."""
    from gain_curate.bootstrap import format_estimate

    ests = {label: row["spearman_pass_rate"] for label, row in rows.items()}
    adj = {label: row["spearman_pass_rate_adjusted"] for label, row in rows.items()}
    m = sum(e.value is not None for e in ests.values())
    above = sorted((e.value, label) for label, e in ests.items() if e.excludes(0.0) and e.value > 0)
    held = [(v, label) for v, label in above if adj[label].excludes(0.0)]
    against = [label for label, e in ests.items() if e.excludes(0.0) and e.value < 0]
    if not above:
        line = (
            f"no ranking's interval for the pass rate lies above 0 at n = {n}: this sample "
            "cannot tell which ranking predicts it; sample more prompts"
        )
        return line + (f" ({', '.join(against)} rank it backwards)" if against else "")
    best = (held or above)[-1][1]
    b, a = ests[best], adj[best]
    span = f"[{a.low:+.2f}, {a.high:+.2f}]" if a.low is not None else "none"
    if held:
        line = f"{best} predicts the pass rate best: {format_estimate(b)}"
        if m > 1:
            line += f"; adjusted for the {m} rankings compared: {span}"
        close = [label for _, label in above if label != best and ests[label].high >= b.low]
        if close:
            line += f"; not clearly ahead of {', '.join(reversed(close))}"
    else:
        line = (
            f"{best} looks best for the pass rate: {format_estimate(b)}, but adjusted for the "
            f"{m} rankings compared its interval {span} includes 0, so it may be chance; "
            "sample more prompts"
        )
    angle = ests.get("gain_score")
    if best != "gain_score" and angle is not None:
        line += f"; the angle score: {format_estimate(angle, show_n=False)}"
        if angle.value is not None and not angle.excludes(0.0):
            line += ", its interval includes 0"
    return line
