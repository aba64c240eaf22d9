"""probe.py, served.py, rankings.py: the ridge probe finds a planted signal and only that,
its held-out predictions never saw their prompt, it saves and loads; what the curriculum
serves; every ranking compared with intervals and a verdict, in rollout_statistics and on
the console."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from gain_curate.bootstrap import auroc_ci, spearman_ci
from gain_curate.checks.probe import ProbeFit, fit_probe, fit_probes, learnability
from gain_curate.checks.rankings import compare_rankings, signal_rankings
from gain_curate.checks.rollouts import Rollouts
from gain_curate.checks.served import curriculum_serves


def planted(n: int = 200, d: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """States whose pass rate is sigmoid(w . x) plus noise."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    w = rng.normal(size=d) / np.sqrt(d) * 2
    p = 1 / (1 + np.exp(-x @ w)) + 0.05 * rng.normal(size=n)
    return x, p


def test_probe_recovers_a_planted_linear_signal() -> None:
    x, p = planted()
    fit = fit_probe(x, p, folds=5, seed=0)
    est = spearman_ci(fit.heldout, p)
    assert est.value > 0.6 and est.low > 0, est
    zero_var = p < np.quantile(p, 0.3)  # the lowest pass rates stand for all-wrong groups
    assert auroc_ci(fit.heldout, zero_var).high < 0.5  # predicted low where it is low
    assert fit.alpha in set(np.logspace(-2, 7, 19).tolist())
    # the saved fit is ridge on all prompts: (Z^T Z + alpha I) coef = Z^T (y - mean y)
    z = (x - x.mean(0)) / x.std(0)
    np.testing.assert_allclose(
        z.T @ z @ fit.coef + fit.alpha * fit.coef, z.T @ (p - p.mean()), atol=1e-8
    )
    np.testing.assert_allclose(fit.predict(x), z @ fit.coef + p.mean(), atol=1e-10)


@pytest.mark.parametrize("seed", [0, 1])
def test_probe_reports_chance_on_shuffled_labels(seed: int) -> None:
    x, p = planted(seed=seed)
    shuffled = np.random.default_rng(100 + seed).permutation(p)
    fit = fit_probe(x, shuffled, seed=seed)
    rho = spearman_ci(fit.heldout, shuffled)
    assert rho.low < 0 < rho.high and abs(rho.value) < 0.2, rho
    auc = auroc_ci(fit.heldout, shuffled < np.quantile(shuffled, 0.3))
    assert auc.low < 0.5 < auc.high and abs(auc.value - 0.5) < 0.12, auc
    assert auc.warning == "n = 200: the interval includes 0.5; sample more prompts"


def test_heldout_prediction_never_saw_its_own_prompt() -> None:
    """Changing one prompt's target moves every held-out prediction but its own (with the
    penalty held fixed: the penalty is chosen once from all prompts)."""
    x, p = planted(n=60, d=30)
    alphas = np.array([10.0])
    a = fit_probe(x, p, alphas=alphas)
    q = p.copy()
    q[7] += 5.0
    b = fit_probe(x, q, alphas=alphas)
    # the one shared intercept moves by 5 / n everywhere; nothing else may reach prompt 7
    assert b.heldout[7] - 5.0 / len(p) == pytest.approx(a.heldout[7], abs=1e-12)
    assert np.abs(b.heldout - a.heldout).max() > 0.01


def test_probe_saves_and_loads(tmp_path: Path) -> None:
    x, p = planted(n=40, d=12)
    fit = fit_probe(x, p, meta={"features": "last_token@L12", "target": "pass_rate"})
    path = tmp_path / "probe.npz"
    fit.save(path)
    back = ProbeFit.load(path)
    np.testing.assert_array_equal(back.predict(x), fit.predict(x))
    np.testing.assert_array_equal(back.heldout, fit.heldout)
    assert (back.alpha, back.folds, back.seed) == (fit.alpha, fit.folds, fit.seed)
    assert back.meta == {"n": 40, "d": 12, "features": "last_token@L12", "target": "pass_rate"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["probe.npz"]
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(ValueError, match="not a saved probe"):
        ProbeFit.load(tmp_path / "junk.npz")
    with pytest.raises(ValueError, match=r"the probe takes \(n, 12\)"):
        fit.predict(x[:, :5])


MANIFEST = {  # the parts of a run's manifest a probe's fitted_on reads
    "model": {
        "name": "Qwen2.5-0.5B-Instruct",
        "revision": "7ae557604adf67be50417f59c2c2f167def9a775",
        "chat_template_sha256": "c" * 64,
        "layer": 23,
    },
    "signal": {
        "template": {
            "system_prompt": "Please reason step by step.",
            "few_shot": [["What is 1+1?", "#### 2"]],
            "instruction": None,
            "separator": "\n\n",
            "few_shot_name": "gsm8k-1",
        },
        "conversation": {"scored": "template"},
    },
}


def typed(m: dict) -> SimpleNamespace:
    """The parts of runfolder.run.Manifest that fitted_on reads: `model` and `section()`."""
    return SimpleNamespace(model=SimpleNamespace(**m["model"]), section=m.get)


def test_a_saved_probe_records_the_run_it_was_fit_on(tmp_path: Path) -> None:
    from gain_curate.checks import probe
    from gain_curate.checks.probe import differences

    def fitted_on(m: dict):  # of the manifest's JSON, through its typed view
        return probe.fitted_on(typed(m))

    x, p = planted(n=40, d=12)
    own = fitted_on(MANIFEST)
    assert own == {
        "model": "Qwen2.5-0.5B-Instruct",
        "revision": "7ae557604adf67be50417f59c2c2f167def9a775",
        "chat_template_sha256": "c" * 64,
        "conversation": {
            "system_prompt": "Please reason step by step.",
            "few_shot": [["What is 1+1?", "#### 2"]],
            "instruction": None,
            "separator": "\n\n",
        },
        "scored": "template",
    }
    fit = fit_probes({"last_token@L23": x}, p, fitted_on=own)["last_token@L23"]
    back = ProbeFit.load(fit.save(tmp_path / "probe.npz"))
    assert back.meta["fitted_on"] == own  # through the file's JSON, as predict reads it
    assert differences(own, fitted_on(MANIFEST)) == []
    other = json.loads(json.dumps(MANIFEST))
    other["model"]["name"] = "/models/qwen"  # the same revision under another name: the same
    assert differences(own, fitted_on(other)) == []
    other["model"]["revision"] = "f" * 40
    other["signal"]["template"]["few_shot"] = []
    other["signal"]["template"]["system_prompt"] = None
    other["signal"]["conversation"]["scored"] = "the input's own chat prompt"
    assert differences(own, fitted_on(other)) == [
        "model Qwen2.5-0.5B-Instruct at revision 7ae557604adf67be504, "
        "this run /models/qwen at " + "f" * 19,
        "scored template, this run the input's own chat prompt",
        "another scoring conversation (system prompt, few shot)",
    ]
    no_revisions = {**own, "revision": None}
    assert differences(no_revisions, {**own, "revision": None, "model": "x"}) == [
        "model Qwen2.5-0.5B-Instruct, this run x"
    ]


def test_probe_refuses_what_it_cannot_fit() -> None:
    x, p = planted(n=9, d=4)
    with pytest.raises(ValueError, match="9 prompts for 5-fold cross-validation: need at least 10"):
        fit_probe(x, p)
    with pytest.raises(ValueError, match="NaN"):
        fit_probe(np.where(np.eye(20, 4) > 0, np.nan, 1.0), np.arange(20.0))
    assert fit_probes({"last_token@L1": x}, p) == {}  # below MIN_PROBE_N


def test_learnability_ranks_by_distance_from_one_half() -> None:
    pred = np.array([-0.2, 0.1, 0.5, 0.8, 1.3])
    assert np.argsort(-learnability(pred)).tolist() == [2, 3, 1, 0, 4]


def test_curriculum_serves_less_zero_variance_when_those_rank_last() -> None:
    n = 64
    zero_var = np.arange(n) >= 40  # the 24 zero-variance prompts ...
    scores = -np.arange(n, dtype=np.float64)  # ... at the bottom of the ranking
    out = curriculum_serves(scores, zero_var, batch_size=256, epochs=10, n_run=7473)
    assert out.uniform == pytest.approx(24 / 64)
    assert out.share < 0.05 < out.uniform
    assert out.mu == [0.0] * 10  # no pass rates: mu stays at mu0
    flipped = curriculum_serves(-scores, zero_var, 256, 10, n_run=7473)
    assert flipped.share > 0.95
    # the default sigma scales with N (64 prompts: sigma 9): a small run tells them apart too
    small = curriculum_serves(scores, zero_var, 32, 10)
    assert small.n_run == n and small.share < 0.05
    # the paper's sigma 1000, given, over 64 prompts: the Gaussian is flat, ~uniform
    from gain_curate.curriculum.schedule import ScheduleParams

    flat = curriculum_serves(scores, zero_var, 32, 10, params=ScheduleParams(32, sigma=1000))
    assert flat.share == pytest.approx(out.uniform, abs=0.01)


def test_curriculum_moves_mu_as_the_schedule_does() -> None:
    """With pass rates, each epoch's expected accuracy moves mu by the schedule's own rule."""
    from gain_curate.curriculum.schedule import GainSchedule, ScheduleParams

    n, n_run = 50, 5000
    p = np.full(n, 0.9)
    out = curriculum_serves(
        -np.arange(n, dtype=np.float64), np.zeros(n, bool), 64, 4, n_run=n_run, pass_rate=p
    )
    sched = GainSchedule(n_run, ScheduleParams(batch_size=64))
    expected = []
    for _ in range(4):
        expected.append(sched.mu)
        sched.observe_accuracy([0.9])
        sched.end_epoch()
    assert out.mu == pytest.approx(expected) and expected[-1] > 0


def rollouts_like(n: int, seed: int = 0) -> tuple[dict, Rollouts, np.ndarray]:
    """Signals and rollout results where the pass rate follows a linear read-out of the
    states and nothing else; two thirds of the groups all wrong."""
    rng = np.random.default_rng(seed)
    states = rng.normal(size=(n, 48))
    w = rng.normal(size=48)
    p = np.clip(np.round((states @ w / np.sqrt(48) - 0.3) * 3) / 8, 0, 1)
    signals = {
        "gain_score": rng.normal(size=n),
        "c_intra": rng.normal(size=n),
        "c_inter": rng.normal(size=n),
        "question_tokens": rng.integers(20, 300, n).astype(float),
    }
    rl = Rollouts(
        reward="default",
        pass_rate=p,
        learnability=p * (1 - p),
        zero_variance=(p == 0) | (p == 1),
        mean_length=np.full(n, 100.0),
        truncated=np.zeros(n),
        none_rewards=0,
        max_new_tokens=256,
        grpo_grad_norm=rng.random(n) * (p * (1 - p) > 0),
        records=[],
        seconds={},
    )
    return signals, rl, states


def test_compare_rankings_names_the_probe_and_gives_every_interval() -> None:
    signals, rl, states = rollouts_like(96)
    fits = fit_probes({"last_token@L12": states}, rl.pass_rate)
    table = compare_rankings(
        signal_rankings(signals, fits),
        rl.targets(),
        length=signals["question_tokens"],
        n_run=7473,
        probes=fits,
        resamples=500,
    ).to_json()
    labels = [
        "gain_score",
        "C_intra",
        "C_inter",
        "question length (shortest first)",
        "probe pass rate (last_token@L12)",
        "probe learnability (last_token@L12)",
    ]
    assert list(table["rankings"]) == labels
    keys = {
        "spearman_pass_rate",
        "spearman_learnability",
        "spearman_grpo_grad_norm",
        "partial_spearman_pass_rate_given_length",
        "partial_spearman_learnability_given_length",
        "auroc_zero_variance",
        "curriculum_zero_variance_share",
        "curriculum_minus_uniform",
        "spearman_pass_rate_adjusted",
    }
    for row in table["rankings"].values():
        assert set(row) == keys
        assert all(
            set(e) == {"value", "low", "high", "n", "warning", "reason"} for e in row.values()
        )
    probe = table["rankings"]["probe pass rate (last_token@L12)"]
    assert probe["spearman_pass_rate"]["low"] > 0.3
    assert table["verdict"].startswith(
        "probe pass rate (last_token@L12) predicts the pass rate best: +"
    )
    assert "the angle score: " in table["verdict"] and "its interval includes 0" in table["verdict"]
    assert probe["curriculum_minus_uniform"]["high"] < 0  # easy first: fewer all-wrong groups
    length = table["rankings"]["question length (shortest first)"]
    assert length["spearman_pass_rate"]["value"] == pytest.approx(
        -spearman_ci(signals["question_tokens"], rl.pass_rate).value
    )
    assert length["partial_spearman_pass_rate_given_length"]["value"] is None
    assert table["probes"]["last_token@L12"]["d"] == 48
    assert table["curriculum"]["note"] is None and table["bootstrap"]["resamples"] == 500
    json.dumps(table)  # JSON-ready as it is


def test_no_verdict_without_an_interval_above_zero() -> None:
    signals, rl, _ = rollouts_like(16, seed=3)
    table = compare_rankings(
        signal_rankings(signals), rl.targets(), length=signals["question_tokens"], resamples=300
    ).to_json()
    assert table["verdict"].startswith(
        "no ranking's interval for the pass rate lies above 0 at n = 16"
    )
    assert table["uncertainty"][0].startswith("n = 16: ")
    assert "intervals include 0 (0.5 for an AUROC)" in table["uncertainty"][0]
    assert table["curriculum"]["note"] is None  # the default sigma scales: 16 prompts, sigma 2
    assert table["curriculum"]["sigma"] == 2.0


def test_rollout_statistics_keeps_its_keys_and_prints_intervals(capsys) -> None:
    from gain_curate.checks.rollout_stats import rollout_statistics
    from gain_curate.cli.views import print_validate

    signals, rl, states = rollouts_like(64)
    fits = fit_probes({"last_token@L12": states}, rl.pass_rate)
    out = rollout_statistics(signals, rl, probes=fits, n_run=7473, resamples=300).to_json()
    assert out["spearman_gain_score_vs_pass_rate"] == pytest.approx(
        out["rankings"]["gain_score"]["spearman_pass_rate"]["value"]
    )
    assert out["auroc_score_predicts_zero_variance"] == pytest.approx(
        out["rankings"]["gain_score"]["auroc_zero_variance"]["value"]
    )
    result = {
        "model": "m",
        "sample": 64,
        "weight": "w",
        "rollouts": {
            "settings": {"k": 8, "temperature": 1.0, "max_new_tokens": 256},
            **json.loads(json.dumps(out)),
        },
    }
    for key in (
        "spearman_grad_vs_score",
        "spearman_grad_vs_c_intra",
        "spearman_grad_vs_c_inter",
        "spearman_grad_vs_question_tokens",
        "partial_spearman_grad_vs_score_given_length",
    ):
        result[key] = None
    print_validate(result)
    text = capsys.readouterr().out
    e = out["rankings"]["probe pass rate (last_token@L12)"]["spearman_pass_rate"]
    assert f"{e['value']:+.2f} [{e['low']:+.2f}, {e['high']:+.2f}]" in text
    assert "n = 64, 300 bootstrap resamples, seed 0" in " ".join(text.split())  # titles wrap
    assert f"verdict: {out['verdict']}" in text
    assert [line for line in text.splitlines() if line.startswith("uncertainty:")] == [
        f"uncertainty: {line}" for line in out["uncertainty"]
    ]
