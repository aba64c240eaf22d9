"""GainSchedule: the Gaussian over ranks, no repeats, seeding, the update rule, resume."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from gain_curate.curriculum.draws import EpochDraws
from gain_curate.curriculum.schedule import GainSchedule, ScheduleParams, mu_update
from gain_curate.curriculum.simulate import AccuracyCurve, decile_shares, run_open_loop


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
    # the paper's values, given: n=500, alpha=2, beta=0.5, adj in [0, 1000] (no scaling to N)
    p = ScheduleParams(batch_size=1, n=500, adj_max=1000)
    mu, delta = mu_update(0.0, acc=0.8, ang=0.0, p=p, n_prompts=10_000)
    assert delta == pytest.approx(500 * math.tanh(0.6)) and mu == pytest.approx(268.5248, abs=1e-3)
    # low accuracy would move mu back; adj_min = 0 clamps the step at 0
    assert mu_update(700.0, acc=0.0, ang=0.0, p=p, n_prompts=10_000) == (700.0, 0.0)
    # the angle term pushes forward; adj_max clamps the step
    q = ScheduleParams(batch_size=1, n=500, adj_max=500)
    mu, delta = mu_update(100.0, acc=1.0, ang=1.0, p=q, n_prompts=10_000)
    assert (mu, delta) == (600.0, 500.0)  # raw step 500 tanh(1) + 500 tanh(2) = 862.8
    # mu stays inside [0, N - 1]
    assert mu_update(9_900.0, acc=1.0, ang=0.0, p=p, n_prompts=10_000)[0] == 9_999.0
    r = ScheduleParams(batch_size=1, n=500, adj_max=1000, adj_min=-1000)
    assert mu_update(50.0, acc=0.0, ang=0.0, p=r, n_prompts=10_000)[0] == 0.0


def test_offline_scores_never_push_mu() -> None:
    """The bug this replaces: the offline score as ang was a constant +495 per step."""
    s = GainSchedule(
        2000,
        ScheduleParams(batch_size=10, sigma=5, n=500, seed=3),
        uids=[f"u{i}" for i in range(2000)],
        scores=np.full(2000, 1.34),
    )
    plan = s.plan_epoch()
    s.observe([f"u{r}" for r in plan], [1, 0, 1, 1, 0, 1, 1, 1, 0, 1])
    rec = s.end_epoch()
    assert rec.acc == pytest.approx(0.7) and rec.ang is None
    assert rec.mu_next == pytest.approx(500 * math.tanh(2 * 0.2))
    assert s.epoch == 1 and s.consumed == 0


def test_change_angle_is_online_minus_offline_relative_to_the_first_step() -> None:
    scores = np.linspace(0.5, -0.5, 100)  # by rank
    uids = [f"u{i}" for i in range(100)]
    s = GainSchedule(
        100,
        ScheduleParams(batch_size=2, sigma=5, n=500, adj_min=-1000, adj_max=1000),
        uids=uids,
        scores=scores,
    )
    # step 0: online - offline = +0.10 and +0.20 -> mean 0.15 is the offset; ang = 0
    s.observe_accuracy([0.5])
    s.observe_angles(["u0", "u10"], [scores[0] + 0.10, scores[10] + 0.20])
    rec = s.end_epoch()
    assert rec.ang == pytest.approx(0.0) and rec.mu_next == pytest.approx(0.0)
    assert s.ang_offset == pytest.approx(0.15)
    # step 1: the prompts grew more concentrated: mean (online - offline) = 0.25 -> ang 0.10
    s.observe_accuracy([0.5])
    s.observe_angles(["u3", "u4", "u99"], [scores[3] + 0.2, scores[4] + 0.3, float("nan")])
    rec = s.end_epoch()
    assert rec.ang == pytest.approx(0.10)
    assert rec.mu_next == pytest.approx(500 * math.tanh(0.2))  # 98.69 positions
    # an unscored prompt (NaN offline score) gives no measurement
    s2 = GainSchedule(
        3, ScheduleParams(batch_size=1), uids=["a", "b", "c"], scores=[0.1, np.nan, 0.2]
    )
    s2.observe_angles(["b"], [0.9])
    assert s2.angle_term() is None


def test_level_angle_is_the_batch_mean_and_off_ignores_measurements() -> None:
    uids = [f"u{i}" for i in range(50)]
    s = GainSchedule(
        50, ScheduleParams.paper(batch_size=2, n=4, adj_max=100), uids=uids, scores=np.zeros(50)
    )
    s.observe_accuracy([1.0, 0.0])  # acc 0.5: the accuracy term is 0
    s.observe_angles(["u1", "u2"], [0.3, 0.5])
    rec = s.end_epoch()
    assert rec.ang == pytest.approx(0.4) and rec.delta == pytest.approx(4 * math.tanh(0.8))
    off = GainSchedule(
        50, ScheduleParams(batch_size=2, angle="off"), uids=uids, scores=np.zeros(50)
    )
    off.observe_accuracy([0.5])
    off.observe_angles(["u1"], [0.9])
    assert off.end_epoch().ang is None and off.mu == 0.0


def test_end_of_ranking_policies_by_hand() -> None:
    def at_end(policy: str) -> GainSchedule:
        s = GainSchedule(
            1000, ScheduleParams(batch_size=4, mu0=0, n=500, adj_max=1000, at_end=policy)
        )
        s.mu = 900.0
        s.observe_accuracy([1.0])  # delta = 500 tanh(1) = 380.8 -> target 1280.8 > 999
        return s

    hold = at_end("hold")
    assert hold.end_epoch().mu_next == 999.0 and hold.passes == 0
    restart = at_end("restart")
    rec = restart.end_epoch()
    assert (rec.mu_next, rec.event, rec.passes) == (0.0, "restart", 1)
    uni = at_end("uniform")
    assert uni.end_epoch().event == "uniform" and uni.uniform
    np.testing.assert_allclose(uni.probabilities(), np.full(1000, 1e-3))
    uni.observe_accuracy([1.0])
    assert uni.end_epoch().mu_next == 999.0  # mu no longer moves
    # restart returns to mu0, not to 0
    r = GainSchedule(1000, ScheduleParams(batch_size=4, mu0=50, n=500, at_end="restart"))
    r.mu = 990.0
    r.observe_accuracy([1.0])
    assert r.end_epoch().mu_next == 50.0


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        ({"angle": "offline"}, "angle 'offline' is not one of change, level, off"),
        ({"at_end": "wrap"}, "at_end 'wrap' is not one of restart, hold, uniform, past"),
        ({"sigma": 0.0}, "sigma must be positive"),
        ({"sigma_fraction": -0.1}, "sigma must be positive"),
    ],
)
def test_params_refuse_impossible_values(bad: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ScheduleParams(batch_size=1, **bad)


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
    with pytest.raises(KeyError, match="zz"):
        s.observe(["zz"], [1])
    with pytest.raises(KeyError, match="zz"):
        s.observe_angles(["zz"], [0.5])


def test_state_of_gain_curate_0_1_loads_and_a_newer_one_is_refused() -> None:
    """Version 1 (no version key, offline angle tally): mu, epoch and draws carry over; the
    offline tally is dropped because this version never feeds offline scores to the rule."""
    v1 = {
        "params": {
            "batch_size": 16,
            "mu0": 0.0,
            "sigma": 30.0,
            "sigma_fraction": None,
            "n": 500.0,
            "alpha": 2.0,
            "beta": 0.5,
            "adj_min": 0.0,
            "adj_max": 1000.0,
            "seed": 7,
        },
        "n_prompts": 500,
        "mu": 123.5,
        "epoch": 4,
        "consumed": 5,
        "correct": 2.0,
        "seen": 3,
        "ang_sum": 3 * 1.34,
        "ang_seen": 3,
        "history": [{"epoch": 0, "mu": 0.0}],
    }
    s = GainSchedule(500, ScheduleParams(batch_size=16, sigma=30, seed=7))
    s.load_state_dict(v1)
    assert (s.mu, s.epoch, s.consumed, s.passes) == (123.5, 4, 5, 0)
    assert s.params.angle == "change" and s.params.at_end == "restart"
    assert len(s.remaining()) == 11 and s.angle_term() is None
    rec = s.end_epoch()
    assert rec.acc == pytest.approx(2 / 3) and rec.ang is None
    newer = {**s.state_dict(), "version": 4}
    with pytest.raises(ValueError, match="version 4 is newer"):
        GainSchedule(500, ScheduleParams(batch_size=16)).load_state_dict(newer)


def test_state_dict_round_trips_every_field() -> None:
    uids = [f"u{i}" for i in range(300)]
    a = GainSchedule(
        300,
        ScheduleParams(batch_size=8, sigma=20, at_end="uniform"),
        uids=uids,
        scores=np.linspace(1, 0, 300),
    )
    a.observe_angles(["u1"], [1.5])
    a.observe_accuracy([1.0])
    a.end_epoch()
    a.observe_angles(["u2"], [1.7])
    a.take(3)
    b = GainSchedule(300, ScheduleParams(batch_size=8), uids=uids, scores=np.linspace(1, 0, 300))
    b.load_state_dict(a.state_dict())
    assert b.state_dict() == a.state_dict()
    assert np.array_equal(a.remaining(), b.remaining())


def naive_draw_order(s: GainSchedule, k: int, epoch: int) -> np.ndarray:
    """The draw order by its definition: the exponential race's keys over all N, sorted."""
    u = np.random.default_rng([s.params.seed, epoch]).random(s.n_prompts)
    if s.uniform:
        return np.argsort(u, kind="stable")[:k]
    r = np.arange(s.n_prompts)
    keys = np.log(-np.log1p(-u)) + (r - s.mu) ** 2 / (2 * s.sigma**2)
    return np.argsort(keys, kind="stable")[:k]


@pytest.mark.parametrize(
    ("n", "b", "mu", "sigma"),
    [
        (100, 60, 99, 0.5),
        (100, 60, 0, 1.0),
        (1000, 32, 100, 50),
        (5000, 8, 2500, 3),
        (50, 50, 10, 2),
        (1000, 10, 5000, 10),
        (200_003, 500, 1000, 30),
    ],
)
def test_windowed_draw_order_is_the_full_race(n: int, b: int, mu: float, sigma: float) -> None:
    """The cached plan (keys only near mu, plus the tail positions that can compete) is the
    race over all N, also continued past B (mu past the end: at_end = "past")."""
    s = frozen(n, b, mu=0, sigma=sigma, seed=3)
    s.mu = float(mu)
    for epoch in range(4):
        s.epoch, s.consumed = epoch, 0
        assert np.array_equal(s.plan_epoch(), naive_draw_order(s, b, epoch))
        assert np.array_equal(s.take(3 * b, extend=True), naive_draw_order(s, 3 * b, epoch))
    s.uniform = True
    assert np.array_equal(s.plan_epoch(), naive_draw_order(s, b, s.epoch))


def test_an_epoch_is_planned_once_and_draws_do_not_replan(monkeypatch) -> None:
    s = frozen(10_000, 64, mu=500, sigma=100)
    calls = []
    plan = EpochDraws._smallest_keys
    monkeypatch.setattr(
        EpochDraws, "_smallest_keys", lambda self, at, k: calls.append(k) or plan(self, at, k)
    )
    whole = s.plan_epoch()
    drawn = np.concatenate([s.take(1) for _ in range(64)])
    assert np.array_equal(drawn, whole) and calls == [64] and len(s.take(1)) == 0
    extra = s.take(10, extend=True)  # past B: the same order continued, planned once more
    assert calls == [64, 128] and len(set(np.r_[drawn, extra].tolist())) == 74
    s.end_epoch()  # a new epoch (and a new mu) plans again
    s.take(1)
    assert calls == [64, 128, 64]


def test_a_step_at_a_million_prompts_is_fast() -> None:
    """N = 1,000,000, B = 1,024 (benchmarks/benchmark_schedule.py measures it): plan an
    epoch, hand out its B draws one by one, observe them, end the epoch. Loose bound: 1 s."""
    import time

    n, b = 1_000_000, 1_024
    uids = [f"u{i}" for i in range(n)]
    s = GainSchedule(n, ScheduleParams(batch_size=b), uids=uids)
    best = math.inf
    for _ in range(3):
        t0 = time.perf_counter()
        drawn = [int(s.take(1)[0]) for _ in range(b)]
        s.observe([uids[r] for r in drawn], [1.0] * b)
        s.end_epoch()
        best = min(best, time.perf_counter() - t0)
    assert best < 1.0, f"{best * 1e3:.0f} ms per step"
    assert s.mu > 0 and len(set(drawn)) == b


def test_state_dict_mid_epoch_resumes_identical_next_draws() -> None:
    params = ScheduleParams(batch_size=32, sigma=200, seed=11)
    a = GainSchedule(50_000, params)
    a.observe_accuracy([1.0])
    a.end_epoch()
    a.take(7)
    a.take(40, extend=True)  # past B: draws replacing filtered prompts
    b = GainSchedule(50_000, params)
    b.load_state_dict(a.state_dict())
    assert b.consumed == 47 and np.array_equal(a.take(20, extend=True), b.take(20, extend=True))
    for s in (a, b):
        s.observe_accuracy([0.9])
        s.end_epoch()
    assert np.array_equal(a.take(32), b.take(32))


# --- the dynamics over whole runs (N = 7,473 GSM8K prompts, B = 256, paper defaults) ----


def _run(accuracy: str, steps: int, **kw: object) -> tuple[GainSchedule, list[np.ndarray]]:
    n = 7_473
    params = (
        ScheduleParams.paper(batch_size=256, **kw)
        if kw.pop("paper", False)
        else ScheduleParams(batch_size=256, **kw)
    )
    sched = GainSchedule(n, params, uids=[f"u{i}" for i in range(n)], scores=np.full(n, 1.34))
    return sched, run_open_loop(sched, steps, AccuracyCurve.parse(accuracy))


def test_a_model_stuck_at_20_percent_stays_at_the_top() -> None:
    sched, plans = _run("0.2", 100)
    ranks = np.concatenate(plans)
    assert np.mean(ranks < 0.3 * 7_473) >= 0.90
    assert sched.mu == 0.0  # the accuracy term is negative, adj_min = 0, no angle push


def test_a_model_at_80_percent_covers_every_decile_without_parking_at_the_end() -> None:
    sched, plans = _run("0.8", 300)
    shares = decile_shares(plans, 7_473)
    assert min(shares) > 0 and max(shares) <= 0.25, shares
    assert sched.passes >= 5  # each pass takes ~28 steps of +268.5


def test_a_rising_model_walks_down_the_ranking_then_starts_a_new_pass() -> None:
    sched, plans = _run("0.2:0.9", 300)
    med = [float(np.median(p)) for p in plans]
    assert max(med[:30]) < 0.3 * 7_473  # early, weak model: top of the ranking
    first_restart = next(h.epoch for h in sched.history if h.event == "restart")
    assert 150 < first_restart < 250  # acc passes beta = 0.5 only at step ~128
    later = decile_shares(plans[150:], 7_473)  # once it learns: the whole ranking, evenly
    assert min(later) > 0.05 and max(later) <= 0.15, later


def test_paper_mode_with_a_constant_angle_level_sweeps_as_the_reference_does() -> None:
    """The reference's dynamics (docs/design.md, "The curriculum"): a level of 1.34 adds +495
    every step, so even a model at 20% moves +226.8 per step and sweeps 7,473 prompts in 33
    steps."""
    sched, plans = _run("0.2", 40, paper=True)
    mus = [h.mu_next for h in sched.history]
    step = 500 * math.tanh(2 * (0.2 - 0.5)) + 500 * math.tanh(2 * 1.34)
    np.testing.assert_allclose(mus[:5], step * np.arange(1, 6), rtol=1e-12)
    assert next(k for k, m in enumerate(mus) if m >= 7_472) + 1 == 33
    assert np.mean(np.concatenate(plans[33:]) >= 0.7 * 7_473) > 0.95  # then the bottom


def _reference_update(mean: float, records: list[dict[str, float]]) -> float:
    """Transcription of GAINRL's rule (github wangqinsi1/GAINRL @ 20279ca,
    verl_gainrl/verl/trainer/ppo/gainrl_sampler.py L79-95, defaults L34-58), fed with its
    TRL port's 0/2 reward so that acc / 2 is the fraction correct (without the verl port's
    0/1-reward bug). float32 torch arithmetic as in the original; mean is not clamped."""
    import torch

    n, alpha, beta, adj_max, adj_min = 500, 2, 0.5, 1000, 0
    if not records:
        return mean
    acc_mean = float(np.mean([r["accuracy"] for r in records]))
    ang_mean = float(np.mean([r["angle"] for r in records]))
    acc = torch.tensor(acc_mean, dtype=torch.float32)
    ang = torch.tensor(ang_mean, dtype=torch.float32)
    adjustment = n * torch.tanh(alpha * (acc / 2 - beta)) + n * torch.tanh(alpha * ang)
    adjustment = torch.clamp(adjustment, adj_min, adj_max)
    mean += adjustment.item()
    return mean


def test_paper_mode_matches_the_reference_rule_step_by_step() -> None:
    """A fixed, seeded (synthetic) run: 60 steps of 8 prompts x 4 responses, 0/1 correctness and
    online angle levels per response, accuracy and angles drifting as a learning model's would."""
    rng = np.random.default_rng(1234)
    n_prompts, b, g = 5_000, 8, 4
    sched = GainSchedule(
        n_prompts, ScheduleParams.paper(batch_size=b), uids=[f"u{i}" for i in range(n_prompts)]
    )
    mean = 0.0
    for step in range(60):
        p_correct = 0.15 + 0.7 * step / 59
        ranks = sched.plan_epoch()
        uids = [f"u{r}" for r in ranks for _ in range(g)]
        correct = (rng.random(b * g) < p_correct).astype(float)
        angles = rng.normal(0.05 + 0.3 * np.sin(step / 7), 0.1, size=b * g)
        sched.observe(uids, correct.tolist())
        sched.observe_angles(uids, angles.tolist())
        rec = sched.end_epoch()
        mean = _reference_update(
            mean, [{"accuracy": 2.0 * c, "angle": a} for c, a in zip(correct, angles)]
        )
        assert rec.mu_next == pytest.approx(mean, abs=1e-3), step
    assert mean > n_prompts  # the sequence drives mu past the end: never clamped, as there


# A checkpoint written by gain-curate before EpochRecord (33770b1): 3 epochs, 3 of 8 draws
# taken, 2 results tallied; its next draws as that version drew them.
STATE_33770B1 = (
    '{"version": 3, "params": {"batch_size": 8, "mu0": 0.0, "sigma": 20, "sigma_fraction": '
    'null, "n": 30, "alpha": 2.0, "beta": 0.5, "adj_min": 0.0, "adj_max": 40, "seed": 5, '
    '"angle": "change", "at_end": "restart"}, "n_prompts": 200, "mu": 41.59054415340088, '
    '"epoch": 3, "consumed": 3, "passes": 0, "uniform": false, "ang_offset": 0.69, "correct": '
    '2.0, "seen": 2, "ang_sum": 0.0, "ang_seen": 0, "history": [{"epoch": 0, "mu": 0.0, "acc": '
    '0.75, "ang": 0.0, "delta": 13.863514717800292, "mu_next": 13.863514717800292, "pass": 0, '
    '"event": null}, {"epoch": 1, "mu": 13.863514717800292, "acc": 0.75, "ang": 0.0, "delta": '
    '13.863514717800292, "mu_next": 27.727029435600585, "pass": 0, "event": null}, {"epoch": 2, '
    '"mu": 27.727029435600585, "acc": 0.75, "ang": 0.0, "delta": 13.863514717800292, "mu_next": '
    '41.59054415340088, "pass": 0, "event": null}]}'
)


def test_a_checkpoint_of_the_previous_version_resumes_the_same_draws() -> None:
    import json

    state = json.loads(STATE_33770B1)
    s = GainSchedule(200, ScheduleParams(batch_size=8), uids=[f"u{i}" for i in range(200)])
    s.load_state_dict(state)
    assert s.remaining().tolist() == [34, 55, 36, 60, 44]
    assert s.history[2].mu_next == pytest.approx(41.59054415340088) and s.history[2].passes == 0
    assert json.loads(json.dumps(s.state_dict())) == state  # written back the same
