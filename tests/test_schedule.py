"""GainSchedule: the Gaussian over ranks, no repeats, seeding, the update rule, resume."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from gain_curate.schedule import GainSchedule, ScheduleParams, mu_update


def frozen(n: int, b: int, mu: float, sigma: float, seed: int = 0) -> GainSchedule:
    """A schedule whose mu never moves (adj_min = adj_max = 0)."""
    return GainSchedule(
        n, ScheduleParams(batch_size=b, mu0=mu, sigma=sigma, adj_min=0, adj_max=0, seed=seed)
    )


def test_draws_follow_the_gaussian_over_ranks() -> None:
    s = frozen(60, 1, mu=20, sigma=8)
    counts = np.zeros(60)
    for _ in range(20_000):
        counts[s.plan_epoch()[0]] += 1
        s.end_epoch()
    expected = s.probabilities() * counts.sum()
    keep = expected >= 5  # chi-square needs expected counts of at least 5 per cell
    obs = np.append(counts[keep], counts[~keep].sum())
    exp = np.append(expected[keep], expected[~keep].sum())
    assert stats.chisquare(obs, exp).pvalue > 1e-3
    # and it is not uniform
    assert stats.chisquare(counts, np.full(60, counts.sum() / 60)).pvalue < 1e-6


def test_probabilities_are_the_normalised_gaussian() -> None:
    s = frozen(100, 4, mu=30, sigma=12)
    r = np.arange(100)
    g = np.exp(-((r - 30) ** 2) / (2 * 12**2))
    np.testing.assert_allclose(s.probabilities(), g / g.sum(), rtol=1e-12)


def test_no_duplicates_within_an_epoch_even_far_in_the_tail() -> None:
    for mu, sigma in [(50, 10), (0, 1.0), (99, 0.5)]:
        plan = frozen(100, 60, mu=mu, sigma=sigma).plan_epoch()
        assert len(plan) == 60 and len(set(plan.tolist())) == 60
        assert plan.min() >= 0 and plan.max() < 100


def test_seed_decides_the_plan() -> None:
    a = frozen(1000, 32, 100, 50, seed=1).plan_epoch()
    assert np.array_equal(a, frozen(1000, 32, 100, 50, seed=1).plan_epoch())
    assert not np.array_equal(a, frozen(1000, 32, 100, 50, seed=2).plan_epoch())


def test_update_rule_by_hand() -> None:
    p = ScheduleParams(batch_size=1)  # paper defaults: n=500, alpha=2, beta=0.5, adj in [0, 1000]
    mu, delta = mu_update(0.0, acc=0.8, ang=0.0, p=p, n_prompts=10_000)
    assert delta == pytest.approx(500 * math.tanh(0.6)) and mu == pytest.approx(268.5248, abs=1e-3)
    # low accuracy would move mu back; adj_min = 0 clamps the step at 0
    assert mu_update(700.0, acc=0.0, ang=0.0, p=p, n_prompts=10_000) == (700.0, 0.0)
    # the angle term pushes forward; adj_max clamps the step
    q = ScheduleParams(batch_size=1, adj_max=500)
    mu, delta = mu_update(100.0, acc=1.0, ang=1.0, p=q, n_prompts=10_000)
    assert (mu, delta) == (600.0, 500.0)  # raw step 500 tanh(1) + 500 tanh(2) = 862.8
    # mu stays inside [0, N - 1]
    assert mu_update(9_900.0, acc=1.0, ang=0.0, p=p, n_prompts=10_000)[0] == 9_999.0
    r = ScheduleParams(batch_size=1, adj_min=-1000)
    assert mu_update(50.0, acc=0.0, ang=0.0, p=r, n_prompts=10_000)[0] == 0.0


def test_end_epoch_uses_the_epochs_accuracy_and_offline_scores() -> None:
    scores = np.linspace(0.5, -0.5, 2000)  # by rank
    s = GainSchedule(
        2000,
        ScheduleParams(batch_size=10, sigma=5, seed=3),
        uids=[f"u{i}" for i in range(2000)],
        scores=scores,
    )
    plan = s.plan_epoch()
    s.observe([f"u{r}" for r in plan], [1, 0, 1, 1, 0, 1, 1, 1, 0, 1])
    rec = s.end_epoch()
    ang = scores[plan].mean()
    assert rec["acc"] == pytest.approx(0.7) and rec["ang"] == pytest.approx(ang)
    want = min(max(500 * math.tanh(2 * 0.2) + 500 * math.tanh(2 * ang), 0), 1000)
    assert rec["mu_next"] == pytest.approx(want)
    assert s.epoch == 1 and s.consumed == 0


def test_sigma_as_fraction_of_n() -> None:
    s = GainSchedule(4000, ScheduleParams(batch_size=8, sigma_fraction=0.1))
    assert s.sigma == 400


def test_state_dict_mid_epoch_resumes_the_remaining_draws() -> None:
    params = ScheduleParams(batch_size=16, sigma=30, seed=7)
    a = GainSchedule(500, params, scores=np.full(500, 0.1))
    a.observe_accuracy([1, 1, 0])
    a.end_epoch()
    a.take(5)
    state = a.state_dict()
    b = GainSchedule(500, params, scores=np.full(500, 0.1))
    b.load_state_dict(state)
    assert np.array_equal(a.remaining(), b.remaining()) and len(b.remaining()) == 11
    assert b.mu == a.mu and b.epoch == 1


def test_observe_rejects_unknown_uids() -> None:
    s = GainSchedule(3, ScheduleParams(batch_size=1), uids=["a", "b", "c"])
    with pytest.raises(KeyError):
        s.observe(["zz"], [1])
