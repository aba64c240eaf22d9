"""Statistics with their uncertainty (numpy only, no scipy): Spearman, partial Spearman and
AUROC, each with a seeded percentile bootstrap interval over prompts, as an Estimate, and
how an estimate is printed."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, TypedDict

import numpy as np

from gain_curate.stats import pearson, rankdata, spearman

# --- statistics with their uncertainty --------------------------------------------------------
# Every statistic `validate` prints comes with a seeded percentile bootstrap over prompts:
#     idx = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
# row b of idx is resample b (n prompts drawn with replacement); the statistic is computed on
# every row (rows where it is undefined, e.g. a constant resample, are left out) and the
# interval is np.quantile(values, [(1 - level) / 2, (1 + level) / 2]) (numpy's default,
# linear). Every statistic of one call sees the same resamples for the same (seed, n).

RESAMPLES = 2000
LEVEL = 0.95
MIN_INTERVAL_N = 8  # below this many prompts a bootstrap interval means nothing
MIN_DEFINED = 0.5  # below this share of resamples defining the statistic, no interval
_CHUNK = 250  # resamples computed at once: (chunk, n) float64 arrays


class EstimateJSON(TypedDict):
    """An Estimate as the reports write it (validate, inspect): its fields, in order."""

    value: float | None
    low: float | None
    high: float | None
    n: int
    warning: str | None
    reason: str | None


@dataclass(frozen=True)
class Estimate:
    """A statistic with its bootstrap interval over prompts. value None: undefined (reason
    says why). warning: one line when the interval cannot tell the sign (it includes `null`:
    0 for a correlation, 0.5 for an AUROC) or the sample is too small for an interval."""

    value: float | None
    low: float | None
    high: float | None
    n: int
    warning: str | None = None
    reason: str | None = None

    def excludes(self, null: float) -> bool:
        return self.low is not None and self.high is not None and not self.low <= null <= self.high

    def to_dict(self) -> EstimateJSON:
        return EstimateJSON(**asdict(self))


def rankdata_rows(x: np.ndarray) -> np.ndarray:
    """Average ranks (1-based) along the last axis of a (B, n) array of finite values, as
    rankdata per row; ties share their average, so the (SIMD, 3-4x) unstable sort is exact."""
    x = np.asarray(x, dtype=np.float64)
    n = x.shape[-1]
    order = np.argsort(x, axis=-1)
    xs = np.take_along_axis(x, order, -1)
    pos = np.broadcast_to(np.arange(n), x.shape)
    starts = np.ones(x.shape, bool)  # a run of equal values starts here (sorted order)
    starts[..., 1:] = xs[..., 1:] != xs[..., :-1]
    ends = np.ones(x.shape, bool)  # ... and ends here
    ends[..., :-1] = starts[..., 1:]
    first = np.maximum.accumulate(np.where(starts, pos, 0), axis=-1)
    last = np.flip(np.minimum.accumulate(np.flip(np.where(ends, pos, n - 1), -1), axis=-1), -1)
    ranks = np.empty_like(xs)
    np.put_along_axis(ranks, order, (first + last) / 2.0 + 1.0, -1)
    return ranks


def _pearson_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson's r of each row pair of two (B, n) arrays; NaN where either row is constant."""
    ac = a - a.mean(-1, keepdims=True)
    bc = b - b.mean(-1, keepdims=True)
    denom = np.sqrt((ac * ac).sum(-1) * (bc * bc).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, (ac * bc).sum(-1) / denom, np.nan)


def _spearman_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return _pearson_rows(rankdata_rows(x), rankdata_rows(y))


def _partial_spearman_rows(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    rx, ry, rz = rankdata_rows(x), rankdata_rows(y), rankdata_rows(z)
    rxy, rxz, ryz = _pearson_rows(rx, ry), _pearson_rows(rx, rz), _pearson_rows(ry, rz)
    ok = (np.abs(rxz) < 1) & (np.abs(ryz) < 1)  # NaN compares False: undefined stays NaN
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(ok, (rxy - rxz * ryz) / np.sqrt((1 - rxz**2) * (1 - ryz**2)), np.nan)


def _auroc_rows(score: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """Mann-Whitney U / (n_pos n_neg) per row, ties counting one half; NaN for one class."""
    ranks = rankdata_rows(score)
    n_pos = positive.sum(-1).astype(np.float64)
    n_neg = positive.shape[-1] - n_pos
    u = (ranks * positive).sum(-1) - n_pos * (n_pos + 1) / 2
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((n_pos > 0) & (n_neg > 0), u / (n_pos * n_neg), np.nan)


def bootstrap(
    statistic: Callable[..., np.ndarray],
    columns: Sequence[np.ndarray],
    *,
    null: float | None,
    seed: int = 0,
    resamples: int = RESAMPLES,
    level: float = LEVEL,
    advance: Callable[[int], None] = lambda k: None,
) -> Estimate:
    """The value of `statistic` (columns (B, n) each -> (B,) values, NaN = undefined) on the
    sample and its percentile interval over seeded resamples of the n rows (section
    comment). Undefined on the sample: value None. null: what the warning tests against;
    advance(k): called as each k resamples are done (a progress bar)."""
    n = len(columns[0])
    value = float(statistic(*(c[None] for c in columns))[0]) if n else np.nan
    if not np.isfinite(value) or n < MIN_INTERVAL_N:
        return interval(value, np.empty(0), n, null=null, level=level)
    values = resample_values(statistic, columns, seed=seed, resamples=resamples, advance=advance)
    return interval(value, values, n, null=null, level=level)


def resample_values(
    statistic: Callable[..., np.ndarray],
    columns: Sequence[np.ndarray],
    *,
    seed: int = 0,
    resamples: int = RESAMPLES,
    advance: Callable[[int], None] = lambda k: None,
) -> np.ndarray:
    """`statistic` on each of the seeded resamples (section comment): (resamples,) values."""
    n = len(columns[0])
    idx = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    values = []
    for a in range(0, resamples, _CHUNK):
        values.append(statistic(*(c[idx[a : a + _CHUNK]] for c in columns)))
        advance(len(values[-1]))
    return np.concatenate(values)


def interval(
    value: float, values: np.ndarray, n: int, *, null: float | None, level: float = LEVEL
) -> Estimate:
    """An Estimate from the value on the sample and its resampled values (NaN = undefined)."""
    if not np.isfinite(value):
        return Estimate(None, None, None, n, reason="undefined on this sample")
    if n < MIN_INTERVAL_N:
        why = f"too few prompts for an interval (at least {MIN_INTERVAL_N}); sample more prompts"
        return Estimate(value, None, None, n, warning=f"n = {n}: {why}")
    defined = values[np.isfinite(values)]
    if len(defined) < MIN_DEFINED * len(values):
        why = f"only {len(defined)} of {len(values)} resamples define it, so there is no interval"
        return Estimate(value, None, None, n, warning=f"n = {n}: {why}; sample more prompts")
    low, high = (float(v) for v in np.quantile(defined, [(1 - level) / 2, (1 + level) / 2]))
    est = Estimate(float(value), low, high, n)
    if null is not None and not est.excludes(null):
        est = replace(est, warning=f"n = {n}: the interval includes {null:g}; sample more prompts")
    return est


def _finite(*columns: np.ndarray) -> tuple[np.ndarray, ...]:
    cols = [np.asarray(c, np.float64) for c in columns]
    keep = np.logical_and.reduce([np.isfinite(c) for c in cols])
    return tuple(c[keep] for c in cols)


def _constant(what: Sequence[str], *columns: np.ndarray) -> str | None:
    """Why a rank correlation is undefined: too few pairs, or a constant column."""
    if len(columns[0]) < 3:
        return f"{len(columns[0])} prompts with a value: a correlation needs at least 3"
    for name, c in zip(what, columns):
        if np.all(c == c[0]):
            return f"{name} is the same for every prompt: nothing to rank"
    return None


def spearman_ci(
    x: np.ndarray, y: np.ndarray, *, what: tuple[str, str] = ("x", "y"), **kw: Any
) -> Estimate:
    """Spearman's rho of x and y (pairs where both are finite) with its interval; kw: the
    bootstrap's seed, resamples, level and advance."""
    x, y = _finite(x, y)
    reason = _constant(what, x, y)
    if reason:
        return Estimate(None, None, None, len(x), reason=reason)
    return bootstrap(_spearman_rows, (x, y), null=0.0, **kw)


MAX_INTERVAL_ROWS = 20_000  # above this many pairs, the interval comes from a subsample


def spearman_interval(
    x: np.ndarray,
    y: np.ndarray,
    *,
    what: tuple[str, str] = ("x", "y"),
    seed: int = 0,
    max_rows: int = MAX_INTERVAL_ROWS,
    advance: Callable[[int], None] = lambda k: None,
) -> Estimate:
    """spearman_ci of a whole run; above `max_rows` pairs, the interval of a seeded subsample
    of that many (wider than the run's: resampling 1M rows 2,000 times takes gigabytes)."""
    xf, yf = _finite(x, y)
    if len(xf) <= max_rows:
        return spearman_ci(xf, yf, what=what, seed=seed, advance=advance)
    keep = np.sort(np.random.default_rng(seed).choice(len(xf), size=max_rows, replace=False))
    sub = spearman_ci(xf[keep], yf[keep], what=what, seed=seed, advance=advance)
    return replace(sub, value=spearman(xf, yf), n=len(xf))


def partial_spearman_ci(
    x: np.ndarray,
    y: np.ndarray,
    z: np.ndarray,
    *,
    what: tuple[str, str, str] = ("x", "y", "z"),
    seed: int = 0,
    resamples: int = RESAMPLES,
    level: float = LEVEL,
) -> Estimate:
    """Spearman of x and y holding z fixed (first-order partial on ranks) with its interval."""
    x, y, z = _finite(x, y, z)
    reason = _constant(what, x, y, z)
    for name, v in ((what[0], x), (what[1], y)):
        if reason is None and abs(pearson(rankdata(v), rankdata(z)) or 0) >= 1 - 1e-12:
            reason = (
                f"{name} ranks the prompts exactly as {what[2]} does: nothing is left to correlate"
            )
    if reason:
        return Estimate(None, None, None, len(x), reason=reason)
    return bootstrap(
        _partial_spearman_rows, (x, y, z), null=0.0, seed=seed, resamples=resamples, level=level
    )


def auroc_ci(
    score: np.ndarray,
    positive: np.ndarray,
    *,
    what: str = "positive",
    seed: int = 0,
    resamples: int = RESAMPLES,
    level: float = LEVEL,
) -> Estimate:
    """P(score of a positive > score of a negative), ties one half, with its interval;
    prompts with a non-finite score are left out. One class only: value None."""
    score, positive = np.asarray(score, np.float64), np.asarray(positive, bool)
    keep = np.isfinite(score)
    score, positive = score[keep], positive[keep]
    n_pos = int(positive.sum())
    if n_pos == 0 or n_pos == len(score):
        why = f"one class only: {n_pos} of {len(score)} prompts {what}"
        return Estimate(None, None, None, len(score), reason=why)
    est = bootstrap(
        _auroc_rows, (score, positive), null=0.5, seed=seed, resamples=resamples, level=level
    )
    few = min(n_pos, len(score) - n_pos)
    if few < 5 and est.warning is None:
        est = replace(
            est,
            warning=f"n = {len(score)}: only {few} prompts in the smaller class; "
            "the interval is rough; sample more prompts",
        )
    return est


def format_estimate(
    est: Estimate | EstimateJSON | float | None,
    *,
    signed: bool = True,
    digits: int = 2,
    show_n: bool = True,
) -> str:
    """`+0.41 [+0.20, +0.58] (n = 64)`; a bare float as `+0.410`; undefined as `n/a`."""
    if est is None or isinstance(est, (int, float)):
        return "n/a" if est is None else f"{est:{'+' if signed else ''}.3f}"
    e = est if isinstance(est, Estimate) else Estimate(**est)
    spec = f"{'+' if signed else ''}.{digits}f"
    if e.value is None:
        return "n/a"
    out = f"{e.value:{spec}}"
    if e.low is not None and e.high is not None:
        out += f" [{e.low:{spec}}, {e.high:{spec}}]"
    return out + (f" (n = {e.n})" if show_n else "")
