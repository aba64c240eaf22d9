"""bootstrap.py: every statistic with its seeded bootstrap interval, against a bootstrap done by
hand here (scipy for each resample's statistic), and the undefined and small-n cases."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from gain_curate.bootstrap import (
    Estimate,
    auroc_ci,
    format_estimate,
    partial_spearman_ci,
    rankdata_rows,
    spearman_ci,
)


def by_hand(statistic, columns, *, seed: int, resamples: int = 2000) -> tuple[float, float]:
    """The percentile bootstrap written plainly: resample b is row b of one integers() call;
    resamples where the statistic is undefined are left out."""
    n = len(columns[0])
    idx = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    values = np.array([statistic(*(c[row] for c in columns)) for row in idx], dtype=np.float64)
    low, high = np.quantile(values[np.isfinite(values)], [0.025, 0.975])
    return float(low), float(high)


def scipy_spearman(x, y) -> float:
    if np.all(x == x[0]) or np.all(y == y[0]):
        return np.nan
    return stats.spearmanr(x, y).statistic


def scipy_partial(x, y, z) -> float:
    """Spearman of x and y holding z fixed: Pearson of the rank residuals after regressing on z."""
    rx, ry, rz = (stats.rankdata(v) for v in (x, y, z))
    if min(np.ptp(rx), np.ptp(ry), np.ptp(rz)) == 0:
        return np.nan
    res = [r - np.polyval(np.polyfit(rz, r, 1), rz) for r in (rx, ry)]
    if min(np.ptp(res[0]), np.ptp(res[1])) < 1e-9:
        return np.nan
    return stats.pearsonr(*res).statistic


def scipy_auroc(score, positive) -> float:
    if positive.all() or not positive.any():
        return np.nan
    u = stats.mannwhitneyu(score[positive], score[~positive]).statistic
    return u / (positive.sum() * (~positive).sum())


@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (40, 17), (5, 64)])
def test_rankdata_rows_equals_scipy_with_ties(shape) -> None:
    x = np.random.default_rng(shape[1]).integers(0, 4, size=shape).astype(np.float64)
    np.testing.assert_array_equal(rankdata_rows(x), stats.rankdata(x, axis=1))


def test_intervals_match_a_hand_computed_bootstrap() -> None:
    rng = np.random.default_rng(3)
    n = 40
    z = rng.integers(20, 200, n).astype(np.float64)  # a length
    x = rng.normal(size=n) - 0.01 * z
    y = (
        np.round(np.clip(0.5 + 0.3 * x + 0.3 * rng.normal(size=n), 0, 1) * 8) / 8
    )  # pass rates: ties
    for seed in (0, 7):
        est = spearman_ci(x, y, seed=seed)
        assert est.value == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
        assert (est.low, est.high) == pytest.approx(
            by_hand(scipy_spearman, (x, y), seed=seed), abs=1e-10
        )
        assert est.n == n and est.reason is None
        est = partial_spearman_ci(x, y, z, seed=seed)
        assert est.value == pytest.approx(scipy_partial(x, y, z), abs=1e-10)
        assert (est.low, est.high) == pytest.approx(
            by_hand(scipy_partial, (x, y, z), seed=seed), abs=1e-8
        )
        positive = y == 0
        est = auroc_ci(x, positive, seed=seed)
        assert est.value == pytest.approx(scipy_auroc(x, positive), abs=1e-12)
        assert (est.low, est.high) == pytest.approx(
            by_hand(scipy_auroc, (x, positive), seed=seed), abs=1e-12
        )
    assert spearman_ci(x, y, seed=0) == spearman_ci(x, y, seed=0)  # seeded: the same twice
    assert spearman_ci(x, y, seed=0) != spearman_ci(x, y, seed=1)


def test_non_finite_pairs_are_left_out() -> None:
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=30), rng.normal(size=30)
    x_nan = x.copy()
    x_nan[[2, 9]] = np.nan
    keep = np.isfinite(x_nan)
    assert spearman_ci(x_nan, y) == spearman_ci(x[keep], y[keep])
    assert spearman_ci(x_nan, y).n == 28
    assert auroc_ci(x_nan, y > 0) == auroc_ci(x[keep], y[keep] > 0)


def test_undefined_statistics_are_none_with_a_reason_never_a_fake_number() -> None:
    y = np.linspace(0, 1, 12)
    est = spearman_ci(np.ones(12), y, what=("gain_score", "the pass rate"))
    assert est == Estimate(
        None, None, None, 12, reason="gain_score is the same for every prompt: nothing to rank"
    )
    assert spearman_ci(y, np.zeros(12), what=("gain_score", "the pass rate")).reason == (
        "the pass rate is the same for every prompt: nothing to rank"
    )
    assert (
        spearman_ci([1.0, 2.0], [2.0, 1.0]).reason
        == "2 prompts with a value: a correlation needs at least 3"
    )
    est = auroc_ci(y, np.zeros(12, bool), what="are zero-variance groups")
    assert (
        est.value is None
        and est.reason == "one class only: 0 of 12 prompts are zero-variance groups"
    )
    est = partial_spearman_ci(-y, y**2, y, what=("length, shortest first", "p", "question length"))
    assert est.value is None and "ranks the prompts exactly as question length does" in est.reason
    assert format_estimate(est) == "n/a"


def test_small_samples_warn_in_one_line() -> None:
    # n = 3 (issue 21: `validate --sample 3` printed +1.000 as if it meant something)
    est = spearman_ci([1.0, 2.0, 3.0], [0.1, 0.5, 0.9])
    assert est.value == 1.0 and est.low is None and est.high is None
    assert est.warning == "n = 3: too few prompts for an interval (at least 8); sample more prompts"
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=12), rng.normal(size=12)
    est = spearman_ci(x, y)
    assert est.low < 0 < est.high
    assert est.warning == "n = 12: the interval includes 0; sample more prompts"
    est = auroc_ci(x, y > 0)
    assert est.low < 0.5 < est.high
    assert est.warning == "n = 12: the interval includes 0.5; sample more prompts"
    strong = spearman_ci(np.arange(64.0), np.arange(64.0) + rng.normal(size=64))
    assert strong.low > 0.9 and strong.warning is None
    few = auroc_ci(np.arange(64.0), np.arange(64) < 2)  # two positives, both ranked lowest
    assert few.value == 0.0 and "only 2 prompts in the smaller class" in few.warning
    assert "\n" not in few.warning


def test_format_estimate() -> None:
    e = Estimate(0.41, 0.2, 0.58, 64)
    assert format_estimate(e) == "+0.41 [+0.20, +0.58] (n = 64)"
    assert format_estimate(e.to_dict(), show_n=False) == "+0.41 [+0.20, +0.58]"
    assert (
        format_estimate(Estimate(0.43, 0.3, 0.561, 48), signed=False)
        == "0.43 [0.30, 0.56] (n = 48)"
    )
    assert format_estimate(Estimate(1.0, None, None, 3)) == "+1.00 (n = 3)"
    assert format_estimate(None) == "n/a" and format_estimate(0.1234) == "+0.123"


def test_a_whole_runs_interval_comes_from_a_seeded_subsample_above_the_cap() -> None:
    """Up to max_rows pairs: spearman_ci itself. Above: the value over every pair, the
    interval of a seeded subsample of max_rows pairs (wider than the whole run's)."""
    from gain_curate.bootstrap import spearman_interval
    from gain_curate.stats import spearman

    rng = np.random.default_rng(3)
    x = rng.normal(size=300)
    y = x + rng.normal(size=300)
    assert spearman_interval(x, y, max_rows=300) == spearman_ci(x, y)
    est = spearman_interval(x, y, max_rows=100, seed=5)
    keep = np.sort(np.random.default_rng(5).choice(300, size=100, replace=False))
    sub = spearman_ci(x[keep], y[keep], seed=5)
    assert (est.low, est.high) == (sub.low, sub.high) and est.n == 300
    assert est.value == pytest.approx(spearman(x, y), abs=1e-12)
