"""The pass-rate probe without selection bias: nested cross-validation and a refitting bootstrap.

Candidates: every named feature set ((n, d) prefill states: "prompt_end@L16",
"last_token@L23", ...) times every ridge penalty in probe.ALPHAS. The OUTER k-fold split
reports: for each outer fold, the INNER k-fold split of its training prompts alone chooses
the feature set (hence the layer) and the penalty by least held-out squared error, a ridge
fit on all its training prompts with that choice predicts the outer fold's prompts. Every
held-out prediction so comes from a model, a feature, a layer and a penalty chosen without
that prompt, and the figure over all n held-out predictions carries no selection bias.
Each fold's prediction is centred on its training mean and the whole-sample mean added (one
intercept: a fold's own training mean is low exactly where its held-out prompts pass often,
which ranks them backwards on data without signal).

The interval: a percentile bootstrap over prompts that REFITS: every resample runs the
whole nested cross-validation again (feature, layer and penalty chosen again), its folds
drawn over distinct prompts so the copies of a prompt never straddle a fold.

Cost: each feature set is standardised on all n prompts and reduced to at most REDUCED_DIMS
principal components ONCE, without the pass rates (no label enters, so no selection bias;
below REDUCED_DIMS prompts nothing is lost: a ridge fit lies in the span of its prompts).
A fit is then an eigendecomposition of an (r, r) matrix, every penalty at once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gain_curate.checks.probe import ALPHAS, ProbeFit, learnability

FOLDS = 5
REDUCED_DIMS = 128  # principal components kept per feature set (0.4 s a nested CV at n = 1000)
REFITS = 200  # bootstrap resamples, each a whole nested cross-validation


@contextlib.contextmanager
def one_blas_thread() -> Iterator[None]:
    """numpy's BLAS on one thread while the many small (r, r) fits run: threads only contend
    there (measured on the 2-core EPYC under load: 0.05 s per nested cross-validation of 60
    prompts x 4 feature sets on one thread, 0.2-0.85 s on the default threads). OpenBLAS as
    numpy's wheels bundle it; anything else runs as it is."""
    import ctypes
    from pathlib import Path

    lib = None
    for path in sorted((Path(np.__file__).parent.parent / "numpy.libs").glob("*openblas*.so*")):
        with contextlib.suppress(OSError):
            lib = ctypes.CDLL(str(path))
    names = ("scipy_openblas_get_num_threads64_", "scipy_openblas_set_num_threads64_")
    if lib is None or not all(hasattr(lib, n) for n in names):
        yield
        return
    get, put = (getattr(lib, n) for n in names)
    before = int(get())
    put(1)
    try:
        yield
    finally:
        put(before)


@dataclass
class Reduced:
    """A feature set standardised on all prompts and projected on its top principal axes:
    z = ((x - mean) / scale) @ axes, (n, r); z has mean 0 over the n prompts."""

    z: np.ndarray  # (n, r)
    mean: np.ndarray  # (d,)
    scale: np.ndarray  # (d,)
    axes: np.ndarray  # (d, r)


def reduce(x: np.ndarray, dims: int = REDUCED_DIMS) -> Reduced:
    """(n, d) features -> Reduced (no pass rate is read: label-free)."""
    x = np.asarray(x, np.float64)
    mean = x.mean(0)
    scale = x.std(0)
    scale = np.where(scale > 1e-12 * (1 + np.abs(mean)), scale, 1.0)
    s = (x - mean) / scale
    _, sv, vt = np.linalg.svd(s, full_matrices=False)
    r = int(min(dims, np.sum(sv > 1e-10 * max(sv.max(initial=0.0), 1e-300))))
    axes = vt[: max(r, 1)].T
    return Reduced(s @ axes, mean, scale, axes)


def ridge_coefs(z: np.ndarray, y: np.ndarray, alphas: np.ndarray) -> tuple[Any, float, np.ndarray]:
    """Ridge of y on z (centred on these rows): (z mean (r,), y mean, coefs (r, A))."""
    zm, ym = z.mean(0), float(y.mean())
    zc = z - zm
    evals, evecs = np.linalg.eigh(zc.T @ zc)  # (r,), (r, r)
    b = evecs.T @ (zc.T @ (y - ym))  # (r,)
    return zm, ym, evecs @ (b[:, None] / (np.maximum(evals, 0)[:, None] + alphas[None]))


def group_folds(groups: np.ndarray, k: int, rng: np.random.Generator) -> list[np.ndarray]:
    """k folds of row indices; rows of one group (copies of a prompt) share a fold."""
    uniq, inv = np.unique(groups, return_inverse=True)
    fold_of = np.empty(len(uniq), np.int64)
    fold_of[rng.permutation(len(uniq))] = np.arange(len(uniq)) % k
    return [np.flatnonzero(fold_of[inv] == f) for f in range(k)]


def select(
    zs: dict[str, np.ndarray],
    y: np.ndarray,
    groups: np.ndarray,
    k: int,
    rng: np.random.Generator,
    alphas: np.ndarray,
) -> tuple[str, float]:
    """The (feature set, penalty) with the least k-fold squared error on these rows; ties:
    the larger penalty, then the earlier name."""
    best: tuple[float, int, str, float] | None = None
    folds = group_folds(groups, k, rng)
    for order, (name, z) in enumerate(zs.items()):
        sse = np.zeros(len(alphas))
        for val in folds:
            fit = np.setdiff1d(np.arange(len(y)), val)
            zm, ym, c = ridge_coefs(z[fit], y[fit], alphas)
            sse += (((z[val] - zm) @ c + ym - y[val, None]) ** 2).sum(0)
        a = int(np.flatnonzero(sse <= sse.min() * (1 + 1e-12))[-1])
        key = (float(sse[a]) * (1 - 1e-12), order, name, float(alphas[a]))
        if best is None or key[:2] < best[:2]:
            best = key
    assert best is not None
    return best[2], best[3]


@dataclass
class Nested:
    """Held-out predictions of the nested cross-validation, and what each outer fold chose."""

    heldout: np.ndarray  # (n,) predicted pass rate, one intercept
    chosen: list[dict[str, Any]] = field(default_factory=list)  # per outer fold


def nested_cv(
    zs: dict[str, np.ndarray],
    y: np.ndarray,
    *,
    groups: np.ndarray | None = None,
    folds: int = FOLDS,
    seed: int = 0,
    alphas: np.ndarray = ALPHAS,
) -> Nested:
    """The outer k folds report, the inner k folds of each outer training part choose
    (module docstring). zs: name -> (n, r) reduced features; y: (n,) pass rates."""
    y = np.asarray(y, np.float64)
    n = len(y)
    groups = np.arange(n) if groups is None else np.asarray(groups)
    rng = np.random.default_rng(seed)
    heldout = np.empty(n)
    chosen = []
    for test in group_folds(groups, folds, rng):
        train = np.setdiff1d(np.arange(n), test)
        sub = {k: z[train] for k, z in zs.items()}
        name, alpha = select(sub, y[train], groups[train], folds, rng, np.asarray(alphas))
        zm, ym, c = ridge_coefs(zs[name][train], y[train], np.array([alpha]))
        heldout[test] = (zs[name][test] - zm) @ c[:, 0]  # centred: one intercept below
        chosen.append({"features": name, "alpha": alpha})
    return Nested(heldout + y.mean(), chosen)


def figures(pred: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(Spearman of the predicted with the measured pass rate, AUROC of the learnability
    order for the zero-variance prompts: P(a prompt of pass rate 0 or 1 ranks after one that
    is not), predicted p (1 - p) served high first). NaN where undefined."""
    from gain_curate.checks.rollout_stats import auroc
    from gain_curate.stats import spearman

    rho = spearman(pred, y)
    zv = (y <= 0) | (y >= 1)
    a = auroc(learnability(pred), ~zv)
    return (np.nan if rho is None else rho), (np.nan if a is None else a)


def refit_bootstrap(
    zs: dict[str, np.ndarray],
    y: np.ndarray,
    *,
    resamples: int = REFITS,
    seed: int = 0,
    folds: int = FOLDS,
    advance: Callable[[int], None] = lambda k: None,
) -> np.ndarray:
    """(resamples, 2): figures() of a whole nested cross-validation on each resample of the
    n prompts (drawn with replacement, seeded; copies share a fold)."""
    y = np.asarray(y, np.float64)
    rng = np.random.default_rng([seed, 1])
    out = np.full((resamples, 2), np.nan)
    with one_blas_thread():
        for b in range(resamples):
            idx = np.sort(rng.integers(0, len(y), len(y)))
            if len(np.unique(idx)) >= 2 * folds:
                sub = {k: z[idx] for k, z in zs.items()}
                got = nested_cv(sub, y[idx], groups=idx, seed=seed, folds=folds)
                out[b] = figures(got.heldout, y[idx])
            advance(1)
    return out


def final_probe(
    reduced: dict[str, Reduced],
    y: np.ndarray,
    *,
    seed: int = 0,
    folds: int = FOLDS,
    meta: dict[str, Any] | None = None,
    heldout: np.ndarray | None = None,
) -> ProbeFit:
    """The probe to apply: the k-fold choice of feature set and penalty on ALL prompts, fit
    on all of them, as a ProbeFit over the feature set's raw (d,) states. Its `heldout` are
    the nested cross-validation's predictions (what its figures were measured on)."""
    y = np.asarray(y, np.float64)
    zs = {k: r.z for k, r in reduced.items()}
    rng = np.random.default_rng([seed, 2])
    name, alpha = select(zs, y, np.arange(len(y)), folds, rng, ALPHAS)
    r = reduced[name]
    _, ym, c = ridge_coefs(r.z, y, np.array([alpha]))  # z has mean 0 over these prompts
    return ProbeFit(
        coef=r.axes @ c[:, 0],  # on the standardised (d,) features
        intercept=ym,
        mean=r.mean,
        scale=r.scale,
        alpha=alpha,
        heldout=np.asarray(heldout if heldout is not None else np.full(len(y), np.nan)),
        folds=folds,
        seed=seed,
        meta={
            "n": len(y),
            "d": len(r.mean),
            "features": name,
            "target": "pass_rate",
            **(meta or {}),
        },
    )
