"""The nested-CV pass-rate probe (checks/nested.py) and the recommendation (recommend.py):
it recovers a planted signal, reports chance on shuffled labels, and its figure is not
inflated on pure noise over many feature sets and layers, where picking the best feature
set by its own cross-validated figure is."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gain_curate.checks import nested
from gain_curate.checks.probe import ProbeFit
from gain_curate.checks.recommend import recommend

N, D = 100, 8


def noise_features(rng: np.random.Generator, n: int = N) -> dict[str, np.ndarray]:
    """Six candidate feature sets: two kinds at three layers, all noise."""
    return {f"{k}@L{j}": rng.normal(size=(n, D)) for k in ("a", "b") for j in (1, 2, 3)}


def planted(seed: int = 0) -> tuple[dict[str, np.ndarray], np.ndarray]:
    rng = np.random.default_rng(seed)
    feats = noise_features(rng)
    x = rng.normal(size=(N, D))
    feats["signal@L2"] = x
    p = np.clip(0.5 + 0.15 * x[:, 0] - 0.1 * x[:, 3] + 0.05 * rng.normal(size=N), 0, 1)
    return feats, np.round(p * 8) / 8  # as measured with 8 samples


def reduced(feats: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: nested.reduce(v).z for k, v in feats.items()}


def test_nested_cv_recovers_a_planted_signal() -> None:
    feats, p = planted()
    cv = nested.nested_cv(reduced(feats), p, seed=0)
    rho, _ = nested.figures(cv.heldout, p)
    assert rho > 0.7
    assert [c["features"] for c in cv.chosen] == ["signal@L2"] * nested.FOLDS
    boot = nested.refit_bootstrap(reduced(feats), p, resamples=40, seed=0)
    assert np.quantile(boot[:, 0], 0.025) > 0.4


def test_shuffled_labels_report_chance() -> None:
    feats, p = planted()
    p = np.random.default_rng(1).permutation(p)
    zs = reduced(feats)
    rho, _ = nested.figures(nested.nested_cv(zs, p, seed=0).heldout, p)
    boot = nested.refit_bootstrap(zs, p, resamples=60, seed=0)
    lo, hi = np.quantile(boot[:, 0], [0.025, 0.975])
    assert lo < 0 < hi and abs(rho) < 0.3, (rho, lo, hi)


def test_no_selection_bias_on_pure_noise() -> None:
    """30 seeds of noise labels over 6 feature sets: the nested figure averages ~0 (|mean|
    < 0.05; its standard error is ~0.018); the best single feature set's own CV figure,
    the selection the nested CV avoids, averages well above (measured +0.13)."""
    honest, selected = [], []
    with nested.one_blas_thread():
        for seed in range(30):
            rng = np.random.default_rng(seed)
            zs = reduced(noise_features(rng))
            p = rng.integers(0, 9, N) / 8
            honest.append(nested.figures(nested.nested_cv(zs, p, seed=seed).heldout, p)[0])
            selected.append(
                max(
                    nested.figures(nested.nested_cv({k: z}, p, seed=seed).heldout, p)[0]
                    for k, z in zs.items()
                )
            )
    assert abs(np.mean(honest)) < 0.05, np.mean(honest)
    assert np.mean(selected) > 0.08, np.mean(selected)  # the test can tell inflation


def test_copies_of_a_prompt_share_a_fold() -> None:
    groups = np.sort(np.random.default_rng(0).integers(0, 30, 60))
    folds = nested.group_folds(groups, 5, np.random.default_rng(1))
    assert sorted(np.concatenate(folds).tolist()) == list(range(60))
    for a in range(5):
        for b in range(a + 1, 5):
            assert not set(groups[folds[a]]) & set(groups[folds[b]])


def test_reduction_loses_nothing_below_its_dims() -> None:
    """With n <= REDUCED_DIMS the ridge on the principal components is the ridge on the
    standardised features: the saved probe predicts as a direct fit does."""
    from gain_curate.checks.probe import fit_probe

    feats, p = planted()
    x = feats["signal@L2"]
    r = nested.reduce(x)
    _, ym, c = nested.ridge_coefs(r.z, p, np.array([3.0]))
    direct = fit_probe(x, p, alphas=np.array([3.0]))
    np.testing.assert_allclose(r.axes @ c[:, 0], direct.coef, atol=1e-9)


def test_recommend_picks_the_probe_only_when_its_interval_beats_the_baselines(
    tmp_path: Path,
) -> None:
    feats, p = planted()
    length = np.random.default_rng(2).integers(5, 50, N).astype(float)
    angle = np.random.default_rng(3).normal(size=N)
    got = recommend(feats, p, length, angle, probes_dir=tmp_path, meta={}, refits=40).to_json()
    rec = got["recommended"]
    assert list(rec)[:5] == [
        "ranking",
        "spearman_p",
        "spearman_p_interval",
        "auroc_zero_variance",
        "probe",
    ]
    assert rec["ranking"] == "learnability" and rec["probe"] == str(tmp_path / "recommended.npz")
    assert rec["spearman_p_interval"][0] > max(
        got["baselines"][k]["spearman_p"] for k in ("length", "angle")
    )
    fit = ProbeFit.load(tmp_path / "recommended.npz")
    assert fit.meta["features"] == "signal@L2"
    assert fit.meta["validated"]["spearman_p"] == pytest.approx(rec["spearman_p"])
    assert set(got["baselines"]) == {"length", "angle"}
    assert all(got["baselines"][k]["probe"] is None for k in ("length", "angle"))
    # length as the pass rate: length wins, the former recommendation is removed
    q = np.argsort(np.argsort(-length)) / (N - 1)
    again = recommend(feats, q, length, angle, probes_dir=tmp_path, meta={}, refits=20).to_json()
    assert again["recommended"]["ranking"] == "length"
    assert again["recommended"]["probe"] is None
    assert again["recommended"]["spearman_p"] > 0.99  # ties in length
    assert not (tmp_path / "recommended.npz").exists()
    assert (tmp_path / "learnability.npz").is_file()
    assert again["verdict"].startswith("use --rank-by length: no probe beats it")


def test_auroc_zero_variance_is_one_when_they_rank_last() -> None:
    p = np.array([0.0, 1.0, 0.5, 0.4, 0.6, 1.0])
    pred_good = np.array([0.02, 0.98, 0.5, 0.45, 0.55, 0.97])  # zero-variance: p(1-p) lowest
    assert nested.figures(pred_good, p)[1] == 1.0
    assert nested.figures(pred_good[::-1] * 0 + 0.5, p)[1] == 0.5  # one value: all ties
