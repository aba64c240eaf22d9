"""The online learnability curriculum on a synthetic policy with KNOWN pass rates: a linear
function of the stored states whose direction drifts during training (gain_curate.curriculum
.learning). Rewards are drawn from the current truth, G = 4 completions per prompt."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.stats import spearmanr

from gain_curate.curriculum.learner import OnlineProbe, StartProbe
from gain_curate.curriculum.learning import LearnabilitySchedule, LearningParams
from gain_curate.curriculum.schedule import GainSchedule, ScheduleParams

N, D, B, G, STEPS, DRIFT_AT = 3000, 24, 32, 4, 80, 20


class Policy:
    """p_t(x) = clip(0.5 + x . a_t, 0, 1), a_t turning from a0 to a1 over steps 20-40."""

    def __init__(self, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.x = rng.standard_normal((N, D)).astype(np.float16)
        a0, a1 = rng.standard_normal(D), rng.standard_normal(D)
        self.a0 = 0.45 * a0 / np.linalg.norm(a0)
        self.a1 = 0.45 * a1 / np.linalg.norm(a1)
        self.rng = np.random.default_rng(seed + 1)

    def truth(self, step: int) -> np.ndarray:
        f = min(max((step - DRIFT_AT) / 20, 0.0), 1.0)
        a = (1 - f) * self.a0 + f * self.a1
        return np.clip(0.5 + self.x.astype(np.float64) @ a, 0.0, 1.0)

    def rewards(self, positions: np.ndarray, step: int) -> np.ndarray:
        """Mean correctness of G completions per prompt."""
        p = self.truth(step)[positions]
        return self.rng.binomial(G, p) / G


def static_start(policy: Policy) -> StartProbe:
    """What `validate` would fit before training: ridge on 256 prompts' step-0 pass rates
    measured with 8 rollouts each."""
    rng = np.random.default_rng(7)
    idx = rng.choice(N, 256, replace=False)
    y = rng.binomial(8, policy.truth(0)[idx]) / 8
    x = policy.x[idx].astype(np.float64)
    xm = np.c_[x, np.ones(len(x))]
    coef = np.linalg.solve(xm.T @ xm + 1e-3 * np.eye(D + 1), xm.T @ y)
    return StartProbe(coef[:-1], float(coef[-1]))


def run(sched: GainSchedule, policy: Policy, steps: int = STEPS) -> list[float]:
    """Zero-variance share of the groups served per step."""
    uids, shares = sched.uids, []
    for step in range(steps):
        plan = sched.plan_epoch()
        r = policy.rewards(plan, step)
        shares.append(float(np.mean((r == 0) | (r == 1))))
        sched.observe([uids[i] for i in plan], r)
        sched.end_epoch()
    return shares


def uids() -> list[str]:
    return [f"u{i}" for i in range(N)]


def params() -> ScheduleParams:
    return ScheduleParams(batch_size=B, sigma=150, n=40, adj_max=80)


def test_online_tracks_the_drifting_truth_and_serves_fewer_zero_variance_groups() -> None:
    policy = Policy()
    start = static_start(policy)
    online = LearnabilitySchedule(N, params(), uids=uids(), states=policy.x, start=start)
    shares_online = run(online, policy)

    # the static probe: the same rule, predictions frozen at validate's fit
    static = LearnabilitySchedule(
        N, params(), uids=uids(), states=policy.x, start=start, learning=LearningParams()
    )
    static.probe.refit = lambda: None  # never refit: the ranking fixed before training
    shares_static = run(static, Policy())

    uniform = GainSchedule(N, params(), uids=uids())
    uniform.uniform = True  # what rank_by "uniform" builds
    shares_uniform = run(uniform, Policy())

    now = policy.truth(STEPS - 1)
    rho_online = spearmanr(online.predicted(), now).statistic
    rho_static = spearmanr(static.predicted(), now).statistic
    print(f"spearman online {rho_online:.3f} static {rho_static:.3f}")
    assert rho_online > 0.8, rho_online
    assert rho_online > rho_static + 0.3, (rho_online, rho_static)
    after = slice(DRIFT_AT + 20, STEPS)
    zv = {
        k: float(np.mean(v[after]))
        for k, v in [
            ("online", shares_online),
            ("static", shares_static),
            ("uniform", shares_uniform),
        ]
    }
    print(zv)
    assert zv["online"] < zv["static"] - 0.05, zv
    assert zv["online"] < zv["uniform"] - 0.05, zv


def test_without_a_start_probe_it_follows_the_angle_schedule_until_min_groups() -> None:
    policy = Policy(3)
    lp = LearningParams(min_groups=3 * B)
    sched = LearnabilitySchedule(N, params(), uids=uids(), states=policy.x, learning=lp)
    gain = GainSchedule(N, params(), uids=uids())
    for step in range(3):
        assert np.array_equal(sched.plan_epoch(), gain.plan_epoch())
        r = policy.rewards(sched.plan_epoch(), step)
        for s in (sched, gain):
            s.observe([f"u{i}" for i in s.plan_epoch()], r)
            s.end_epoch()
    assert sched.learning_serves
    assert not np.array_equal(sched.plan_epoch(), gain.plan_epoch())


@pytest.mark.parametrize("refit_every", [1, 3])
def test_resume_draws_what_an_uninterrupted_run_draws(refit_every: int) -> None:
    lp = LearningParams(refit_every=refit_every, min_groups=B)

    def make() -> LearnabilitySchedule:
        return LearnabilitySchedule(N, params(), uids=uids(), states=Policy().x, learning=lp)

    whole, policy = make(), Policy()
    draws_whole = []
    for step in range(12):
        plan = whole.plan_epoch()
        draws_whole.append(plan)
        whole.observe([f"u{i}" for i in plan[:20]], policy.rewards(plan[:20], step))
        whole.observe([f"u{i}" for i in plan[20:]], policy.rewards(plan[20:], step))
        whole.end_epoch()

    first, policy = make(), Policy()
    draws = []
    for step in range(12):
        plan = first.plan_epoch()
        draws.append(plan)
        first.observe([f"u{i}" for i in plan[:20]], policy.rewards(plan[:20], step))
        if step == 7:  # saved mid-epoch, through JSON as the TRL checkpoint writes it
            saved = json.loads(json.dumps(first.state_dict()))
            first = make()
            first.load_state_dict(saved)
        first.observe([f"u{i}" for i in plan[20:]], policy.rewards(plan[20:], step))
        first.end_epoch()
    for a, b in zip(draws, draws_whole):
        assert np.array_equal(a, b)
    assert np.array_equal(first.predicted(), whole.predicted())


def test_a_state_without_the_online_part_is_refused_in_one_line() -> None:
    plain = GainSchedule(N, params(), uids=uids()).state_dict()
    sched = LearnabilitySchedule(N, params(), uids=uids(), states=Policy().x)
    with pytest.raises(ValueError, match="no online learnability state"):
        sched.load_state_dict(plain)


def test_the_probe_recovers_a_fixed_linear_truth_and_starts_from_the_start_probe() -> None:
    policy = Policy(5)
    truth = policy.truth(0)
    probe = OnlineProbe(policy.x, half_life=50.0)
    assert np.allclose(probe.predicted, 0.5)
    rng = np.random.default_rng(0)
    for _ in range(20):
        pos = rng.choice(N, B, replace=False)
        probe.add(pos, truth[pos])
        probe.refit()
    assert np.corrcoef(probe.predicted, truth)[0, 1] > 0.95
    start = static_start(policy)
    fresh = OnlineProbe(policy.x, half_life=10.0, start=start)
    want = policy.x.astype(np.float64) @ start.weight + start.bias
    assert np.allclose(fresh.predicted, want, atol=2e-3)


def test_bad_learning_params_name_the_setting() -> None:
    for kw, name in [
        ({"refit_every": 0}, "refit_every"),
        ({"width": 0}, "width"),
        ({"target": 1.5}, "target"),
        ({"half_life": -1}, "half_life"),
    ]:
        with pytest.raises(ValueError, match=f"`{name}`"):
            LearningParams(**kw)


def test_closed_loop_serves_each_ranking_against_known_pass_rates() -> None:
    """Known pass rates that the states predict: the online probe serves fewer zero-variance
    groups than uniform and than an angle order that knows nothing of them."""
    from gain_curate.curriculum.closed_loop import compare, make_loop

    policy = Policy(11)
    truth = policy.truth(0)[:400]
    ids = uids()[:400]
    loop = make_loop(truth, ids, batch_size=32, group_size=4)
    assert loop.batch_size == 32 and len(loop.uids) == 400

    import tempfile
    from pathlib import Path

    from gain_curate.runfolder.store import write_npz_atomic

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "states.npz"
        write_npz_atomic(path, {"gain_uid": np.array(ids), "prompt_end@L3": policy.x[:400]})
        learn = np.argsort(np.argsort(-(truth * (1 - truth))))  # a perfect static probe
        got = {
            z.ranking: z
            for z in compare(
                loop, {"batch_size": 32, "sigma": 40, "n": 10}, learn, {"states": str(path)}
            )
        }
    lines = [z.line(50) for z in got.values()]
    print(*lines, sep="\n")
    assert lines[0].startswith("zero-variance share, first 50 steps: uniform ")
    assert [z.ranking for z in got.values()] == [
        "uniform",
        "angle",
        "learnability",
        "learnability-online",
    ]
    assert got["learnability-online"].share < got["uniform"].share - 0.05, lines
    assert got["learnability-online"].share < got["angle"].share - 0.05, lines
    assert got["learnability"].share < got["uniform"].share, lines
    none = compare(loop, {"batch_size": 32}, None, None)
    assert none[2].share is None and "gain-curate predict" in none[2].line(50)
    assert none[3].share is None and "keep_states" in none[3].line(50)
    with pytest.raises(ValueError, match="at least 16"):
        make_loop(np.full(10, 0.5), ids[:10], 4)


def test_validates_probe_starts_the_online_probe_with_the_same_predictions(tmp_path) -> None:
    """A probe as `validate` saves it (ridge on standardised states), read by states.py and
    rewritten into the online probe's coordinates: the same predictions at step 0."""
    from gain_curate.checks.probe import fit_probe
    from gain_curate.curriculum.states import load_start_probe, load_states
    from gain_curate.errors import InputError
    from gain_curate.runfolder.store import write_npz_atomic

    policy = Policy(2)
    x = policy.x[:300]
    fit = fit_probe(x.astype(np.float64), policy.truth(0)[:300], meta={"features": "prompt_end@L3"})
    path = fit.save(tmp_path / "learnability.npz")
    states = tmp_path / "run"
    ids = uids()[:300]
    write_npz_atomic(states / "states.npz", {"gain_uid": np.array(ids), "prompt_end@L3": x})
    got, name = load_states(states, ids[::-1] + ["not-in-the-file"])
    assert name == "prompt_end@L3" and got.shape == (301, D)
    assert np.array_equal(got[0], x[-1])  # by gain_uid, not by position
    start = load_start_probe(path, name)
    probe = OnlineProbe(x, half_life=10.0, start=start)
    assert np.allclose(probe.predicted, fit.predict(x.astype(np.float64)), atol=2e-3)
    with pytest.raises(InputError, match="reads prompt_end@L3, the online probe reads last_token"):
        load_start_probe(path, "last_token")
    with pytest.raises(InputError, match="no states.npz there"):
        load_states(tmp_path / "nowhere", ids)
    with pytest.raises(InputError, match="none of the trainer's prompts"):
        load_states(states, ["a", "b"])
    with pytest.raises(InputError, match="`feature` 'question_mean' is not in the states"):
        load_states(states, ids, "question_mean")
