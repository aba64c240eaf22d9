"""A learnability ranking from one prefill: a ridge probe of the pass rate.

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

Which ranking serves a trainer best (the probes' beside the angle score): rankings.py.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

import numpy as np

if TYPE_CHECKING:
    from gain_curate.runfolder.run import Manifest

ALPHAS = np.logspace(-2, 7, 19)  # ridge penalties tried, on standardised features
MIN_PROBE_N = 20  # fewer prompts than this: no probe (k-fold folds of 3 say nothing)
CONVERSATION_FIELDS = ("system_prompt", "few_shot", "instruction", "separator")


class FittedOn(TypedDict):
    """A probe's meta["fitted_on"] as saved (the JSON record in its .npz)."""

    model: str | None
    revision: str | None
    chat_template_sha256: str | None
    conversation: dict[str, Any]  # CONVERSATION_FIELDS of the scoring template
    scored: str


def fitted_on(manifest: Manifest) -> FittedOn:
    """What a probe's features were made by, from the manifest of the run whose states it was
    fit on (saved as meta["fitted_on"]; predict compares it with the target run's): the model
    (name, revision: a hub commit or a local folder's content hash), its chat template's hash,
    and the scoring conversation (system prompt, few-shot turns, instruction, or the input's
    own chat). The layer is in the probe's feature names."""
    model, signal = manifest.model, manifest.section("signal") or {}
    template = signal.get("template") or {}
    return {
        "model": model.name,
        "revision": model.revision,
        "chat_template_sha256": model.chat_template_sha256,
        "conversation": {k: template.get(k) for k in CONVERSATION_FIELDS},
        "scored": (signal.get("conversation") or {}).get("scored", "template"),
    }


def differences(probe: Mapping[str, Any], run: Mapping[str, Any]) -> list[str]:
    """What differs between a probe's fitted_on and a run's, in words ([]: the same states).
    The same revision is the same model whatever its name (a folder moved, a hub id spelt
    otherwise); without revisions the names decide."""
    out = []
    if probe.get("revision") and run.get("revision"):
        if probe["revision"] != run["revision"]:
            out.append(
                f"model {probe.get('model')} at revision {_short(probe['revision'])}, "
                f"this run {run.get('model')} at {_short(run['revision'])}"
            )
    elif probe.get("model") != run.get("model"):
        out.append(f"model {probe.get('model')}, this run {run.get('model')}")
    if probe.get("chat_template_sha256") != run.get("chat_template_sha256"):
        out.append(
            f"chat template {_short(probe.get('chat_template_sha256'))}, "
            f"this run {_short(run.get('chat_template_sha256'))}"
        )
    if probe.get("scored") != run.get("scored"):
        out.append(f"scored {probe.get('scored')}, this run {run.get('scored')}")
    pc, rc = probe.get("conversation") or {}, run.get("conversation") or {}
    changed = [k.replace("_", " ") for k in CONVERSATION_FIELDS if pc.get(k) != rc.get(k)]
    if changed:
        out.append("another scoring conversation (" + ", ".join(changed) + ")")
    return out


def _short(v: Any) -> str:
    text = str(v)
    return text[:19] if len(text) > 19 else text  # sha256:0123456789ab / a commit's head


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

        from gain_curate.runfolder.store import write_bytes_atomic

        info = {
            "intercept": self.intercept,
            "alpha": self.alpha,
            "folds": self.folds,
            "seed": self.seed,
            "meta": self.meta,
        }
        buf = io.BytesIO()  # a file object: savez adds no ".npz" to the name
        np.savez(
            buf,
            coef=self.coef,
            mean=self.mean,
            scale=self.scale,
            heldout=self.heldout,
            info=np.array(json.dumps(info)),
        )
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
            return cls(
                coef=z["coef"],
                mean=z["mean"],
                scale=z["scale"],
                heldout=z["heldout"],
                intercept=float(info["intercept"]),
                alpha=float(info["alpha"]),
                folds=int(info["folds"]),
                seed=int(info["seed"]),
                meta=dict(info["meta"]),
            )


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


def _choose_alpha(
    x: np.ndarray, y: np.ndarray, k: int, seed: list[int], alphas: np.ndarray
) -> float:
    """The penalty with the least squared error over a k-fold split of (x, y); ties: larger."""
    sse = np.zeros(len(alphas))
    for val in _folds(len(y), k, seed):
        fit = np.setdiff1d(np.arange(len(y)), val)
        sse += ((_ridge_predictions(x[fit], y[fit], x[val], alphas) - y[val, None]) ** 2).sum(0)
    best = np.flatnonzero(sse <= sse.min() * (1 + 1e-12))
    return float(alphas[best[-1]])


def fit_probe(
    features: np.ndarray,
    target: np.ndarray,
    *,
    folds: int = 5,
    seed: int = 0,
    alphas: np.ndarray = ALPHAS,
    meta: dict[str, Any] | None = None,
) -> ProbeFit:
    """Ridge probe of `target` (n,) from `features` (n, d), with k-fold held-out predictions
    (module docstring). Needs at least 2 prompts per fold and finite values throughout."""
    x, y = np.asarray(features, np.float64), np.asarray(target, np.float64)
    n = len(y)
    if x.ndim != 2 or len(x) != n:
        raise ValueError(f"features of shape {x.shape} for {n} targets: expected ({n}, d)")
    if folds < 2 or n < 2 * folds:
        raise ValueError(
            f"{n} prompts for {folds}-fold cross-validation: need at least {2 * folds}"
        )
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
    return ProbeFit(
        coef=coef,
        intercept=float(y.mean()),
        mean=mean,
        scale=scale,
        alpha=alpha,
        heldout=heldout,
        folds=folds,
        seed=seed,
        meta={"n": n, "d": x.shape[1], **(meta or {})},
    )


def fit_probes(
    features: dict[str, np.ndarray],
    pass_rate: np.ndarray,
    *,
    folds: int = 5,
    seed: int = 0,
    fitted_on: FittedOn | None = None,
) -> dict[str, ProbeFit]:
    """One pass-rate probe per named feature set ("last_token@L12": (n, d) array; the name
    is kept in the probe's meta["features"], `fitted_on` (probe.fitted_on of the run whose
    states these are) in meta["fitted_on"]); {} below MIN_PROBE_N prompts. Prompts whose
    features are not finite (no states: a row `score` could not run) are left out of the fit
    and get a NaN held-out prediction."""
    y = np.asarray(pass_rate, np.float64)
    out = {}
    for name, x in features.items():
        x = np.asarray(x, np.float64)
        ok = np.isfinite(x).all(1) & np.isfinite(y)
        if ok.sum() < MIN_PROBE_N:
            continue
        meta = {"features": name, "target": "pass_rate"}
        if fitted_on is not None:
            meta["fitted_on"] = fitted_on
        fit = fit_probe(x[ok], y[ok], folds=folds, seed=seed, meta=meta)
        heldout = np.full(len(y), np.nan)
        heldout[ok] = fit.heldout
        fit.heldout = heldout
        out[name] = fit
    return out
