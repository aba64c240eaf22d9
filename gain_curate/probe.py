"""A learnability ranking from one prefill, and which ranking serves a GRPO trainer best.

The probe: ridge regression from a prompt's prefill hidden states (e.g. the mean of the
question tokens' states, or the last prompt token's state, at some layer: (n, d) features)
to its pass rate p measured by `validate --rollouts`. The ridge penalty is chosen over
ALPHAS by k-fold cross-validation (least held-out squared error); held-out predictions then
come from another k-fold split with that penalty, the features standardised on each fold's
training prompts only, so every prompt's prediction comes from a model that never saw it.
Two things would rank the held-out prompts backwards on data without any signal, so neither
is done: adding each fold's own intercept (its training mean is low exactly where its
held-out prompts pass often), and choosing a penalty per fold (folds then predict on
different scales; -0.05 Spearman on average under the null, measured). The saved probe is
refit on all prompts and predicts p for a scored run; its learnability ranking serves high
p (1 - p) first.

Ridge by SVD: with Z = U S V^T the standardised training features and y centred,
coef(alpha) = V diag(s / (s^2 + alpha)) U^T y: one SVD gives every penalty, and d >> n
(896 to 3584 features, 64 prompts) costs O(n^2 d).

compare_rankings puts every ranking (gain_score, C_intra, C_inter, question length, the
probes' held-out predictions) against the same rollouts, each statistic with its seeded
bootstrap interval (stats.py), and says from the intervals which ranking predicts best.
Bootstrap intervals of a probe treat its held-out predictions as fixed (the refits inside
the cross-validation are not redone per resample).
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gain_curate.stats import (
    LEVEL,
    MIN_INTERVAL_N,
    RESAMPLES,
    Estimate,
    auroc_ci,
    interval,
    partial_spearman_ci,
    resample_values,
    spearman_ci,
)

ALPHAS = np.logspace(-2, 7, 19)  # ridge penalties tried, on standardised features
MIN_PROBE_N = 20  # fewer prompts than this: no probe (k-fold folds of 3 say nothing)
EPOCHS = 10  # "the first steps" of the curriculum: this many schedule epochs
BATCH_SIZE = 256  # the README's schedule example; per-draw shares do not depend on it


@dataclass
class ProbeFit:
    """A fitted linear probe: predict(features) = ((features - mean) / scale) @ coef + intercept."""

    coef: np.ndarray  # (d,) on standardised features
    intercept: float
    mean: np.ndarray  # (d,) feature means of the prompts it was fit on
    scale: np.ndarray  # (d,) feature standard deviations (1 where a feature is constant)
    alpha: float  # ridge penalty of the final fit
    heldout: np.ndarray  # (n,) each prompt's prediction from the k-fold fit that left it out
    folds: int
    seed: int
    meta: dict[str, Any] = field(default_factory=dict)  # what the features are, the target

    def predict(self, features: np.ndarray) -> np.ndarray:
        x = np.asarray(features, np.float64)
        if x.ndim != 2 or x.shape[1] != len(self.coef):
            raise ValueError(f"features of shape {x.shape}: the probe takes (n, {len(self.coef)})")
        return (x - self.mean) / self.scale @ self.coef + self.intercept

    def save(self, path: Path) -> Path:
        """One .npz: the arrays, and everything else as a JSON string (no pickle); written
        whole or not at all. Returns the path."""
        import io

        from gain_curate.store import write_bytes_atomic

        info = {"intercept": self.intercept, "alpha": self.alpha, "folds": self.folds,
                "seed": self.seed, "meta": self.meta}  # fmt: skip
        buf = io.BytesIO()  # a file object: savez adds no ".npz" to the name
        np.savez(buf, coef=self.coef, mean=self.mean, scale=self.scale, heldout=self.heldout,
                 info=np.array(json.dumps(info)))  # fmt: skip
        write_bytes_atomic(Path(path), buf.getvalue())
        return Path(path)

    @classmethod
    def load(cls, path: Path) -> ProbeFit:
        """A probe saved by `save`; ValueError (or OSError) when the file is not one."""
        try:
            z = np.load(Path(path), allow_pickle=False)
        except zipfile.BadZipFile as e:
            raise ValueError(f"not a saved probe ({e})") from None
        if not isinstance(z, np.lib.npyio.NpzFile) or "info" not in z.files:
            raise ValueError("not a saved probe (no probe arrays in it)")
        with z:
            info = json.loads(str(z["info"]))
            return cls(coef=z["coef"], mean=z["mean"], scale=z["scale"], heldout=z["heldout"],
                       intercept=float(info["intercept"]), alpha=float(info["alpha"]),
                       folds=int(info["folds"]), seed=int(info["seed"]), meta=dict(info["meta"]))  # fmt: skip


def learnability(pred_pass: np.ndarray) -> np.ndarray:
    """The learnability ranking key p (1 - p) of predicted pass rates, not clipped: equal to
    0.25 - (p - 0.5)^2, so a prediction outside [0, 1] still ranks by its distance from 0.5."""
    p = np.asarray(pred_pass, np.float64)
    return p * (1 - p)


def _standardise(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = x.mean(0)
    scale = x.std(0)
    return mean, np.where(scale > 1e-12 * (1 + np.abs(mean)), scale, 1.0)


def _ridge_predictions(
    x_fit: np.ndarray, y_fit: np.ndarray, x_new: np.ndarray, alphas: np.ndarray
) -> np.ndarray:
    """(m_new, len(alphas)) predictions of ridge fits on (x_fit, y_fit), standardised on x_fit."""
    mean, scale = _standardise(x_fit)
    u, s, vt = np.linalg.svd((x_fit - mean) / scale, full_matrices=False)
    uty = u.T @ (y_fit - y_fit.mean())  # (r,)
    shrink = s / (s**2 + alphas[:, None])  # (A, r)
    return ((x_new - mean) / scale @ vt.T) @ (shrink * uty).T + y_fit.mean()


def _folds(n: int, k: int, seed: int | list[int]) -> list[np.ndarray]:
    return np.array_split(np.random.default_rng(seed).permutation(n), k)


def _choose_alpha(x: np.ndarray, y: np.ndarray, k: int, seed: list[int], alphas: np.ndarray) -> float:  # fmt: skip
    """The penalty with the least squared error over a k-fold split of (x, y); ties: larger."""
    sse = np.zeros(len(alphas))
    for val in _folds(len(y), k, seed):
        fit = np.setdiff1d(np.arange(len(y)), val)
        sse += ((_ridge_predictions(x[fit], y[fit], x[val], alphas) - y[val, None]) ** 2).sum(0)
    best = np.flatnonzero(sse <= sse.min() * (1 + 1e-12))
    return float(alphas[best[-1]])


def fit_probe(
    features: np.ndarray, target: np.ndarray, *, folds: int = 5, seed: int = 0,
    alphas: np.ndarray = ALPHAS, meta: dict[str, Any] | None = None,
) -> ProbeFit:  # fmt: skip
    """Ridge probe of `target` (n,) from `features` (n, d), with k-fold held-out predictions
    (module docstring). Needs at least 2 prompts per fold and finite values throughout."""
    x, y = np.asarray(features, np.float64), np.asarray(target, np.float64)
    n = len(y)
    if x.ndim != 2 or len(x) != n:
        raise ValueError(f"features of shape {x.shape} for {n} targets: expected ({n}, d)")
    if folds < 2 or n < 2 * folds:
        raise ValueError(f"{n} prompts for {folds}-fold cross-validation: need at least {2 * folds}")  # fmt: skip
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("features or targets hold NaN or inf")
    alpha = _choose_alpha(x, y, folds, [seed, 0], np.asarray(alphas, np.float64))
    heldout = np.empty(n)
    for val in _folds(n, folds, seed):
        fit = np.setdiff1d(np.arange(n), val)
        pred = _ridge_predictions(x[fit], y[fit], x[val], np.array([alpha]))[:, 0]
        heldout[val] = pred - y[fit].mean() + y.mean()  # one intercept for all folds
    mean, scale = _standardise(x)
    u, s, vt = np.linalg.svd((x - mean) / scale, full_matrices=False)
    coef = vt.T @ (s / (s**2 + alpha) * (u.T @ (y - y.mean())))
    return ProbeFit(coef=coef, intercept=float(y.mean()), mean=mean, scale=scale, alpha=alpha,
                    heldout=heldout, folds=folds, seed=seed, meta={"n": n, "d": x.shape[1], **(meta or {})})  # fmt: skip


def fit_probes(
    features: dict[str, np.ndarray], pass_rate: np.ndarray, *, folds: int = 5, seed: int = 0
) -> dict[str, ProbeFit]:
    """One pass-rate probe per named feature set ("last_token@L12": (n, d) array; the name
    is kept in the probe's meta["features"]); {} below MIN_PROBE_N prompts. Prompts whose
    features are not finite (no states: a row `score` could not run) are left out of the fit
    and get a NaN held-out prediction."""
    y = np.asarray(pass_rate, np.float64)
    out = {}
    for name, x in features.items():
        x = np.asarray(x, np.float64)
        ok = np.isfinite(x).all(1) & np.isfinite(y)
        if ok.sum() < MIN_PROBE_N:
            continue
        fit = fit_probe(x[ok], y[ok], folds=folds, seed=seed, meta={"features": name, "target": "pass_rate"})  # fmt: skip
        heldout = np.full(len(y), np.nan)
        heldout[ok] = fit.heldout
        fit.heldout = heldout
        out[name] = fit
    return out


# --- what the curriculum serves ----------------------------------------------------------------


def _served_shares(
    score: np.ndarray, zero_var: np.ndarray, pass_rate: np.ndarray | None, n_run: int,
    params: Any, epochs: int,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Per row of (B, n) arrays: the mean over the first `epochs` schedule epochs of the
    expected zero-variance share of a draw, (B,), and mu at each epoch, (B, epochs). The n
    prompts of a row, ranked by score (high first, ties by position, NaN last), stand for a
    uniform sample of a run of n_run: the i-th sits at rank position (i + 0.5) n_run / n, and
    a draw lands on it with weight p(position) (a ratio estimator of the run's share)."""
    from gain_curate.schedule import GainSchedule

    b, n = score.shape
    order = np.argsort(np.where(np.isfinite(score), -score, np.inf), axis=-1, kind="stable")
    zv = np.take_along_axis(np.asarray(zero_var, np.float64), order, -1)
    pr = None if pass_rate is None else np.take_along_axis(np.asarray(pass_rate, np.float64), order, -1)  # fmt: skip
    position = (np.arange(n) + 0.5) * n_run / n
    scheds = [GainSchedule(n_run, params) for _ in range(b)]
    shares, mus = np.zeros(b), np.zeros((b, epochs))
    for e in range(epochs):
        mus[:, e] = [s.mu for s in scheds]
        logits = -((position - mus[:, e, None]) ** 2) / (2 * scheds[0].sigma ** 2)
        w = np.exp(logits - logits.max(-1, keepdims=True))  # mu may pass the end ("past")
        w[[s.uniform for s in scheds]] = 1.0
        w /= w.sum(-1, keepdims=True)
        shares += (w * zv).sum(-1) / epochs
        if pr is None:
            continue  # mu stays at mu0
        for s, acc in zip(scheds, (w * pr).sum(-1)):  # the expected fraction correct moves mu
            s.observe_accuracy([float(acc)])
            s.end_epoch()
    return shares, mus


def curriculum_serves(
    scores: np.ndarray, zero_var: np.ndarray, batch_size: int = BATCH_SIZE, epochs: int = EPOCHS,
    *, n_run: int | None = None, pass_rate: np.ndarray | None = None, params: Any = None,
) -> dict[str, Any]:  # fmt: skip
    """The expected share of zero-variance groups among the draws of the default schedule's
    first `epochs` epochs over the ranking `scores` (served high first), against uniform
    sampling (the share of zero-variance groups, mean(zero_var)).

    The prompts are a sample of a run of n_run ranked prompts (default: just these); the
    default schedule (ScheduleParams defaults: mu0 = 0, sigma = 1000 rank positions) draws
    from the top of the run's ranking first, so only a run much larger than sigma shows a
    difference. With `pass_rate`, mu moves after every epoch by the rule with the epoch's
    expected accuracy (the model as sampled; no angle term, as at the first measured step);
    without, mu stays at mu0. A draw's share: the first draw of an epoch exactly; the rest of
    its B draws (without replacement) nearly so while B is small beside sigma."""
    from gain_curate.schedule import ScheduleParams

    n_run = int(n_run or len(scores))
    params = params or ScheduleParams(batch_size=min(batch_size, n_run))
    pr = None if pass_rate is None else np.asarray(pass_rate, np.float64)[None]
    share, mus = _served_shares(np.asarray(scores, np.float64)[None],
                                np.asarray(zero_var, bool)[None], pr, n_run, params, epochs)  # fmt: skip
    return {"share": float(share[0]), "uniform": float(np.mean(zero_var)), "epochs": epochs,
            "batch_size": params.batch_size, "n_run": n_run, "mu": mus[0].tolist()}  # fmt: skip


# --- every ranking against the same rollouts ----------------------------------------------------


def signal_rankings(signals: dict[str, np.ndarray], probes: dict[str, ProbeFit] | None = None) -> dict[str, np.ndarray]:  # fmt: skip
    """The rankings to compare, each a score served high first, by label: gain_score, C_intra,
    C_inter, question length (shortest first), and per probe its predicted pass rate and its
    learnability ranking p (1 - p)."""
    out = {"gain_score": signals["gain_score"], "C_intra": signals["c_intra"],
           "C_inter": signals["c_inter"], "question length (shortest first)": -np.asarray(signals["question_tokens"], np.float64)}  # fmt: skip
    for name, fit in (probes or {}).items():
        out[f"probe pass rate ({name})"] = fit.heldout
        out[f"probe learnability ({name})"] = learnability(fit.heldout)
    return out


def compare_rankings(
    rankings: dict[str, np.ndarray], rl: dict[str, Any], *, length: np.ndarray,
    n_run: int | None = None, batch_size: int = BATCH_SIZE, epochs: int = EPOCHS, seed: int = 0,
    resamples: int = RESAMPLES, probes: dict[str, ProbeFit] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Per ranking (label -> score, served high first), with seeded bootstrap intervals (the
    same resamples for every statistic): Spearman with p, p (1 - p) and the GRPO gradient
    norm; the partial Spearman with p and p (1 - p) at fixed question length; the AUROC of
    the ranking for a zero-variance group (below 0.5: it ranks them lower); the zero-variance
    share of the default curriculum's first `epochs` epochs of draws over a run of n_run
    prompts, and its difference from uniform sampling. Plus the one-line verdict. JSON-ready."""
    from gain_curate.schedule import ScheduleParams

    p, zv = np.asarray(rl["pass_rate"], np.float64), np.asarray(rl["zero_variance"], np.float64)
    n, n_run = len(p), int(n_run or len(p))
    params = ScheduleParams(batch_size=min(batch_size, n_run))
    kw = {"seed": seed, "resamples": resamples}
    targets = {"pass_rate": (p, "the pass rate"), "learnability": (rl["learnability"], "p (1 - p)")}
    if "grpo_grad_norm" in rl:
        targets["grpo_grad_norm"] = (rl["grpo_grad_norm"], "the GRPO gradient norm")
    enough = n >= MIN_INTERVAL_N
    uniform_values = resample_values(lambda z: z.mean(-1), (zv,), **kw) if enough else np.empty(0)

    def served(s: np.ndarray, z: np.ndarray, q: np.ndarray) -> np.ndarray:
        return _served_shares(s, z, q, n_run, params, epochs)[0]

    rows: dict[str, dict[str, Any]] = {}
    for label, score in rankings.items():
        score = np.asarray(score, np.float64)
        row: dict[str, Estimate] = {}
        for t, (y, name) in targets.items():
            row[f"spearman_{t}"] = spearman_ci(score, y, what=(label, name), **kw)
        for t in ("pass_rate", "learnability"):
            what = (label, targets[t][1], "question length")
            row[f"partial_spearman_{t}_given_length"] = partial_spearman_ci(score, targets[t][0], length, what=what, **kw)  # fmt: skip
        row["auroc_zero_variance"] = auroc_ci(score, zv > 0, what="are zero-variance groups", **kw)
        # the served share and its difference from uniform, on the same resamples
        share = served(score[None], zv[None], p[None])[0]
        shares = resample_values(served, (score, zv, p), **kw) if enough else np.empty(0)
        row["curriculum_zero_variance_share"] = interval(share, shares, n, null=None)
        row["curriculum_minus_uniform"] = interval(share - zv.mean(), shares - uniform_values, n, null=0.0)  # fmt: skip
        rows[label] = {k: v.to_dict() for k, v in row.items()}
    # the verdict picks one of m rankings: its interval must hold for all m at once (Bonferroni)
    m = sum(row["spearman_pass_rate"]["value"] is not None for row in rows.values())
    for label, score in rankings.items():
        adjusted = spearman_ci(score, p, level=1 - (1 - LEVEL) / max(m, 1), **kw)
        rows[label]["spearman_pass_rate_adjusted"] = adjusted.to_dict()
    note = None
    if n_run <= params.sigma:  # the Gaussian is nearly flat over the run
        note = (f"the default schedule (sigma = {params.sigma:g} rank positions) draws nearly "
                f"uniformly from a run of {n_run} prompts, so every ranking serves about the "
                "uniform share; measured over a scored run's N (validate --run) it tells them apart")  # fmt: skip
    curriculum = {"n_run": n_run, "batch_size": params.batch_size, "epochs": epochs, "mu0": params.mu0,
                  "sigma": params.sigma, "note": note,
                  "uniform_share": interval(zv.mean(), uniform_values, n, null=None).to_dict()}  # fmt: skip
    return {
        "bootstrap": {"resamples": resamples, "seed": seed, "level": 0.95,
                      "method": "percentile bootstrap over prompts"},
        "curriculum": curriculum,
        "rankings": rows,
        "probes": {name: {"alpha": f.alpha, "folds": f.folds,
                          "d": len(f.coef), **f.meta} for name, f in (probes or {}).items()},
        "verdict": verdict(rows, n),
        "uncertainty": uncertainty_lines(rows, n),
    }  # fmt: skip


def uncertainty_lines(rows: dict[str, dict[str, Any]], n: int) -> list[str]:
    """One line for the intervals that include their null; each other warning and each
    reason for an undefined statistic once."""
    skip = ("curriculum_zero_variance_share", "spearman_pass_rate_adjusted")  # no null; a repeat
    ests = [(label, k, e) for label, row in rows.items() for k, e in row.items() if k not in skip]
    tested = [e for _, _, e in ests if e["low"] is not None]
    open_ = [e for e in tested if e["warning"] and "the interval includes" in e["warning"]]
    out = []
    if open_:
        out.append(f"n = {n}: {len(open_)} of {len(tested)} intervals include 0 (0.5 for an AUROC), "
                   "so this sample cannot tell their sign; sample more prompts")  # fmt: skip
    seen: set[str] = set()
    for _, _, e in ests:
        for line in (e["warning"], e["reason"] and f"n/a: {e['reason']}"):
            if line and "the interval includes" not in line and line not in seen:
                seen.add(line)
                out.append(line)
    return out


def verdict(rows: dict[str, dict[str, Any]], n: int) -> str:
    """Which ranking predicts the pass rate best, from the intervals: the highest Spearman
    whose interval lies above 0 once adjusted for the number of rankings compared (else the
    best unadjusted one, named as possibly chance), the rankings whose intervals overlap it,
    and the angle score."""
    from gain_curate.stats import format_estimate

    ests = {label: Estimate(**row["spearman_pass_rate"]) for label, row in rows.items()}
    adj = {label: Estimate(**row["spearman_pass_rate_adjusted"]) for label, row in rows.items()}
    m = sum(e.value is not None for e in ests.values())
    above = sorted((e.value, label) for label, e in ests.items() if e.excludes(0.0) and e.value > 0)
    held = [(v, label) for v, label in above if adj[label].excludes(0.0)]
    against = [label for label, e in ests.items() if e.excludes(0.0) and e.value < 0]
    if not above:
        line = (f"no ranking's interval for the pass rate lies above 0 at n = {n}: this sample "
                "cannot tell which ranking predicts it; sample more prompts")  # fmt: skip
        return line + (f" ({', '.join(against)} rank it backwards)" if against else "")
    best = (held or above)[-1][1]
    b, a = ests[best], adj[best]
    span = f"[{a.low:+.2f}, {a.high:+.2f}]" if a.low is not None else "none"
    if held:
        line = f"{best} predicts the pass rate best: {format_estimate(b)}"
        if m > 1:
            line += f"; adjusted for the {m} rankings compared: {span}"
        close = [label for _, label in above if label != best and ests[label].high >= b.low]
        if close:
            line += f"; not clearly ahead of {', '.join(reversed(close))}"
    else:
        line = (f"{best} looks best for the pass rate: {format_estimate(b)}, but adjusted for the "
                f"{m} rankings compared its interval {span} includes 0, so it may be chance; "
                "sample more prompts")  # fmt: skip
    angle = ests.get("gain_score")
    if best != "gain_score" and angle is not None:
        line += f"; the angle score: {format_estimate(angle, show_n=False)}"
        if angle.value is not None and not angle.excludes(0.0):
            line += ", its interval includes 0"
    return line
