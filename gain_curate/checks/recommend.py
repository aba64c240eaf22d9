"""Which ranking to train on: the nested-CV probe against length and the angle score.

Each ranking's figures, on the same prompts (validate --json's `recommended` / `baselines`):
- spearman_p: Spearman of the ranking's score with the measured pass rate p. The probe's
  score is its held-out predicted p from the nested cross-validation (nested.py); length's
  is minus the question's token count (shortest first); the angle's is gain_score.
- spearman_p_interval: [lo, hi], 95% percentile bootstrap over prompts. The probe's
  REFITS: each resample runs the whole nested cross-validation again (nested.REFITS
  resamples); a baseline has nothing to fit and resamples its scores (bootstrap.RESAMPLES).
- auroc_zero_variance: P(the ranking's serving order puts a prompt with p = 0 or 1 (a
  zero-variance GRPO group) after one with 0 < p < 1), ties one half: 1.0 = every
  zero-variance prompt last, 0.5 = chance. The probe serves by its learnability order
  (predicted p (1 - p), high first: --rank-by learnability); length shortest first; angle
  by gain_score, high first.
- probe: the saved probe's path (the probe only; null for a baseline).
`recommended` is the probe ("learnability") when its interval's lower bound exceeds the
best baseline's spearman_p; else the baseline with the higher spearman_p.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from gain_curate.checks import nested

BASELINES = {"length": "question length (shortest first)", "angle": "the angle score"}


def _figures(rho: Any, low: Any, high: Any, auroc: Any, probe: str | None) -> dict[str, Any]:
    def num(v: Any) -> float | None:
        return None if v is None or not np.isfinite(v) else float(v)

    return {
        "spearman_p": num(rho),
        "spearman_p_interval": [num(low), num(high)],
        "auroc_zero_variance": num(auroc),
        "probe": probe,
    }


def baseline_figures(score: np.ndarray, p: np.ndarray, *, seed: int) -> dict[str, Any]:
    """A fixed ranking score's figures (module docstring), its interval a plain bootstrap."""
    from gain_curate.bootstrap import auroc_ci, spearman_ci

    zv = (p <= 0) | (p >= 1)
    rho = spearman_ci(score, p, what=("the ranking", "the pass rate"), seed=seed)
    a = auroc_ci(score, ~zv, what="have 0 < p < 1", seed=seed)
    return {**_figures(rho.value, rho.low, rho.high, a.value, None), "n": rho.n}


def recommend(
    features: dict[str, np.ndarray],
    p: np.ndarray,
    length: np.ndarray,
    angle: np.ndarray,
    *,
    probes_dir: Path,
    meta: dict[str, Any],
    seed: int = 0,
    refits: int = nested.REFITS,
    advance: Any = lambda k: None,
) -> dict[str, Any]:
    """The nested-CV probe over `features` (name -> (n, d), every row finite) of the pass
    rates p (n,), its figures beside length's and the angle's, the recommendation, the
    saved probes (OUT/probes/learnability.npz; recommended.npz when it is recommended) and
    the verdict line. The probe's meta records its figures ("validated")."""
    p = np.asarray(p, np.float64)
    reduced = {k: nested.reduce(v) for k, v in features.items()}
    zs = {k: r.z for k, r in reduced.items()}
    cv = nested.nested_cv(zs, p, seed=seed)
    rho, auc = nested.figures(cv.heldout, p)
    boot = nested.refit_bootstrap(zs, p, resamples=refits, seed=seed, advance=advance)
    ok = np.isfinite(boot[:, 0])
    lo, hi = np.quantile(boot[ok, 0], [0.025, 0.975]) if ok.sum() >= 10 else (None, None)
    probe = _figures(rho, lo, hi, auc, None)
    base = {
        "length": baseline_figures(-np.asarray(length, np.float64), p, seed=seed),
        "angle": baseline_figures(np.asarray(angle, np.float64), p, seed=seed),
    }
    best = max(
        base, key=lambda k: -np.inf if base[k]["spearman_p"] is None else base[k]["spearman_p"]
    )
    bar = base[best]["spearman_p"]
    wins = lo is not None and (bar is None or lo > bar)
    counts: dict[str, int] = {}
    for c in cv.chosen:
        counts[c["features"]] = counts.get(c["features"], 0) + 1
    method = {
        "selection": f"nested {nested.FOLDS}-fold cross-validation: the inner folds choose "
        "feature, layer and ridge penalty, the outer folds report",
        "interval": f"percentile bootstrap over prompts, {refits} resamples, each refitting the "
        "whole nested cross-validation",
        "candidates": list(features),
        "chosen_per_outer_fold": cv.chosen,
        "reduced_dims": nested.REDUCED_DIMS,
        "n": len(p),
        "seed": seed,
    }
    fit = nested.final_probe(
        reduced, p, seed=seed, heldout=cv.heldout, meta={**meta, "validated": {**probe, **method}}
    )
    probes_dir.mkdir(parents=True, exist_ok=True)
    path = fit.save(probes_dir / "learnability.npz")
    rec_path = probes_dir / "recommended.npz"
    if wins:
        fit.save(rec_path)
    elif rec_path.exists():  # a former validate's recommendation in the same folder
        rec_path.unlink()
    probe["probe"] = str(rec_path if wins else path)
    recommended = {
        **(probe if wins else {**base[best], "probe": None}),
        "ranking": "learnability" if wins else best,
    }
    return {
        "recommended": {"ranking": recommended.pop("ranking"), **recommended},
        "baselines": base,
        "probe": {**probe, "features": fit.meta["features"], "alpha": fit.alpha, **method},
        "probe_fit": fit,
        "heldout": cv.heldout,
        "verdict": verdict(probe, base, wins, best, counts, len(p)),
    }


def verdict(
    probe: dict[str, Any],
    base: dict[str, dict[str, Any]],
    wins: bool,
    best: str,
    counts: dict[str, int],
    n: int,
) -> str:
    """One line: which ranking, how well, against length."""

    def fig(f: dict[str, Any]) -> str:
        v, (lo, hi) = f["spearman_p"], f["spearman_p_interval"]
        out = "n/a" if v is None else f"{v:+.2f}"
        return out + (f" [{lo:+.2f}, {hi:+.2f}]" if lo is not None and hi is not None else "")

    chosen = ", ".join(f"{k} in {c} of {sum(counts.values())} folds" for k, c in counts.items())
    length = f"length (shortest first) {fig(base['length'])}"
    if wins:
        return (
            f"use --rank-by learnability: the probe ({chosen}) predicts the pass rate at "
            f"Spearman {fig(probe)} (nested CV, n = {n}), against {length} and the angle "
            f"score {fig(base['angle'])}"
        )
    return (
        f"use --rank-by {best}: no probe beats it by its interval (probe {fig(probe)}, "
        f"nested CV, n = {n}); {length}, the angle score {fig(base['angle'])}"
    )
