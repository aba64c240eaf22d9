"""Small statistics used by the manifest, inspect and validate (numpy only, no scipy):
ranks, Spearman and partial Spearman. Their seeded bootstrap intervals: bootstrap.py."""

from __future__ import annotations

import numpy as np


def rankdata(x: np.ndarray) -> np.ndarray:
    """Average ranks (1-based), as scipy.stats.rankdata(method='average')."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="stable")
    xs = x[order]
    ranks = np.empty(len(x), dtype=np.float64)
    # boundaries of runs of equal values
    starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])
    ends = np.r_[starts[1:], len(x)]
    for s, e in zip(starts, ends):
        ranks[order[s:e]] = (s + e + 1) / 2.0
    return ranks


def pearson(x: np.ndarray, y: np.ndarray) -> float | None:
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if len(x) < 3:
        return None
    xc, yc = x - x.mean(), y - y.mean()
    denom = np.sqrt((xc * xc).sum() * (yc * yc).sum())
    return None if denom == 0 else float((xc * yc).sum() / denom)


def spearman(x: np.ndarray, y: np.ndarray) -> float | None:
    """Spearman's rho over the pairs where both are finite; None when undefined."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    keep = np.isfinite(x) & np.isfinite(y)
    return pearson(rankdata(x[keep]), rankdata(y[keep]))


def summary(x: np.ndarray) -> dict[str, float] | None:
    """count, mean, std, min, quantiles, max over the finite values."""
    x = np.asarray(x, np.float64)
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return None
    qs = {
        f"p{int(q * 100):02d}": float(np.quantile(x, q))
        for q in (0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99)
    }
    return {
        "count": int(len(x)),
        "mean": float(x.mean()),
        "std": float(x.std()),
        "min": float(x.min()),
        **qs,
        "max": float(x.max()),
    }


def partial_spearman(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> float | None:
    """Spearman correlation of x and y holding z fixed (first-order partial, on ranks)."""
    x, y, z = (np.asarray(v, np.float64) for v in (x, y, z))
    keep = np.isfinite(x) & np.isfinite(y) & np.isfinite(z)
    rx, ry, rz = rankdata(x[keep]), rankdata(y[keep]), rankdata(z[keep])
    rxy, rxz, ryz = pearson(rx, ry), pearson(rx, rz), pearson(ry, rz)
    if rxy is None or rxz is None or ryz is None or abs(rxz) >= 1 or abs(ryz) >= 1:
        return None
    return (rxy - rxz * ryz) / float(np.sqrt((1 - rxz**2) * (1 - ryz**2)))
