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

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from gain_curate.checks import nested

BASELINES = {"length": "question length (shortest first)", "angle": "the angle score"}


@dataclass(frozen=True)
class Figures:
    """One ranking's figures (module docstring); `n` for a baseline (its bootstrap's)."""

    spearman_p: float | None
    spearman_p_interval: tuple[float | None, float | None]
    auroc_zero_variance: float | None
    probe: str | None = None
    n: int | None = None

    @classmethod
    def of(cls, rho: Any, low: Any, high: Any, auroc: Any, n: int | None = None) -> Figures:
        return cls(_num(rho), (_num(low), _num(high)), _num(auroc), None, n)

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {
            "spearman_p": self.spearman_p,
            "spearman_p_interval": list(self.spearman_p_interval),
            "auroc_zero_variance": self.auroc_zero_variance,
            "probe": self.probe,
        }
        return out if self.n is None else {**out, "n": self.n}


def _num(v: Any) -> float | None:
    return None if v is None or not np.isfinite(v) else float(v)


@dataclass(frozen=True)
class Recommendation:
    """recommend(): which ranking, the probe's and the baselines' figures, the probe (its
    held-out predictions and how it was chosen), and the verdict line."""

    ranking: str  # "learnability" (the probe), or the better baseline
    figures: Figures  # the recommended ranking's
    baselines: dict[str, Figures]
    probe: Figures
    features: str  # the probe's
    method: dict[str, object]  # how the probe was chosen and its interval made
    fit: Any  # nested.final_probe's ProbeFit
    heldout: np.ndarray  # (n,) the nested CV's held-out predicted p
    verdict: str

    def to_json(self) -> dict[str, object]:
        """validate.json's verdict, recommended, baselines and probe."""
        return {
            "verdict": self.verdict,
            "recommended": {"ranking": self.ranking, **self.figures.to_json()},
            "baselines": {k: f.to_json() for k, f in self.baselines.items()},
            "probe": {
                **self.probe.to_json(),
                "features": self.features,
                "alpha": self.fit.alpha,
                **self.method,
            },
        }


def baseline_figures(score: np.ndarray, p: np.ndarray, *, seed: int) -> Figures:
    """A fixed ranking score's figures (module docstring), its interval a plain bootstrap."""
    from gain_curate.bootstrap import auroc_ci, spearman_ci

    zv = (p <= 0) | (p >= 1)
    rho = spearman_ci(score, p, what=("the ranking", "the pass rate"), seed=seed)
    a = auroc_ci(score, ~zv, what="have 0 < p < 1", seed=seed)
    return Figures.of(rho.value, rho.low, rho.high, a.value, rho.n)


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
) -> Recommendation:
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
    probe = Figures.of(rho, lo, hi, auc)
    base = {
        "length": baseline_figures(-np.asarray(length, np.float64), p, seed=seed),
        "angle": baseline_figures(np.asarray(angle, np.float64), p, seed=seed),
    }
    best = max(base, key=lambda k: -np.inf if base[k].spearman_p is None else base[k].spearman_p)
    bar = base[best].spearman_p
    wins = probe.spearman_p_interval[0] is not None and (
        bar is None or probe.spearman_p_interval[0] > bar
    )
    counts: dict[str, int] = {}
    for c in cv.chosen:
        counts[c["features"]] = counts.get(c["features"], 0) + 1
    method: dict[str, object] = {
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
    validated = {**probe.to_json(), **method}
    fit = nested.final_probe(
        reduced, p, seed=seed, heldout=cv.heldout, meta={**meta, "validated": validated}
    )
    probe = replace(probe, probe=str(save_probe(fit, probes_dir, wins)))
    return Recommendation(
        ranking="learnability" if wins else best,
        figures=probe if wins else base[best],
        baselines=base,
        probe=probe,
        features=fit.meta["features"],
        method=method,
        fit=fit,
        heldout=cv.heldout,
        verdict=verdict(probe, base, wins, best, counts, len(p)),
    )


def save_probe(fit: Any, probes_dir: Path, wins: bool) -> Path:
    """OUT/probes/learnability.npz, and recommended.npz when the probe is recommended (a
    former validate's in the same folder is removed when it is not). The probe's path."""
    probes_dir.mkdir(parents=True, exist_ok=True)
    path = fit.save(probes_dir / "learnability.npz")
    rec_path = probes_dir / "recommended.npz"
    if wins:
        fit.save(rec_path)
    elif rec_path.exists():
        rec_path.unlink()
    return rec_path if wins else path


def verdict(
    probe: Figures,
    base: dict[str, Figures],
    wins: bool,
    best: str,
    counts: dict[str, int],
    n: int,
) -> str:
    """One line: which ranking, how well, against length."""

    def fig(f: Figures) -> str:
        v, (lo, hi) = f.spearman_p, f.spearman_p_interval
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
