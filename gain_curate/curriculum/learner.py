"""A pass-rate probe that learns while a trainer trains: ridge regression of each prompt's
observed pass rate on its prefill state, refit from the trainer's own rewards, weighted
toward recent steps (the policy drifts, so an old reward says less about today's pass rate).

Every (prompt, pass rate) pair ever observed counts, with weight gamma^(age in steps),
gamma = 2^(-1 / half_life). That weighted fit is kept as sufficient statistics, so a refit
never revisits old pairs: per step the statistics decay by gamma and the step's groups are
added (O(B d^2)); a refit is one symmetric eigendecomposition of the d x d scatter (O(d^3))
and one pass over the N states to re-predict every prompt (O(N d)).

With z the state standardised over ALL N prompts (fixed at the start: every fit speaks the
same coordinates), the fit minimises

    sum_i w_i (y_i - c - z_i . beta)^2 + alpha |beta - beta0|^2

so beta = beta0 + (S + alpha I)^-1 (s - S beta0), S and s the weighted, centred scatter of z
and of (z, y), c = ybar - zbar . beta. beta0 is a starting probe (validate's calibrated one,
rewritten into these coordinates) or 0: with few pairs the fit stays at the start, with many
the data decide. alpha is chosen among ALPHAS by the decayed PREQUENTIAL error: every step's
groups are first predicted by each alpha's fit of the pairs before them (an honest
held-out error that needs no extra fit), and then added.

    probe = OnlineProbe(states, half_life=10.0)
    probe.add(positions, rates)      # a step's groups: rank positions and pass rates in [0, 1]
    probe.refit()                    # -> probe.predicted, (N,) float32
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any, TypedDict

import numpy as np
import torch

ALPHAS = np.logspace(-2, 6, 17)  # ridge penalties (on standardised states, sums of weights)
CHUNK = 8192  # rows per block when reading the (N, d) float16 states (stays in cache)


@dataclass(frozen=True)
class StartProbe:
    """A probe to start from, in raw state coordinates: predict(x) = x @ weight + bias."""

    weight: np.ndarray  # (d,)
    bias: float


class ProbeState(TypedDict):
    """OnlineProbe.state(): float64 arrays as base64 of their bytes (exact, JSON-safe)."""

    stats: dict[str, str]
    alpha: float
    groups: int
    refits: int
    coef: str
    intercept: float
    fits: str | None  # the last refit's fit per alpha: what predicts the next step's pairs


def _b64(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a, np.float64).tobytes()).decode("ascii")


def _unb64(text: str, shape: tuple[int, ...]) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), np.float64).reshape(shape).copy()


def column_stats(states: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of each column of (N, d) states, read in float64 blocks
    (1 where a column is constant)."""
    n, d = states.shape
    s, ss = np.zeros(d), np.zeros(d)
    x = torch.from_numpy(np.ascontiguousarray(states))
    for lo in range(0, n, CHUNK):
        block = x[lo : lo + CHUNK].double()
        s += block.sum(0).numpy()
        ss += (block * block).sum(0).numpy()
    mean = s / max(n, 1)
    var = np.maximum(ss / max(n, 1) - mean * mean, 0.0)
    sd = np.sqrt(var)
    return mean, np.where(sd > 1e-6 * (1 + np.abs(mean)), sd, 1.0)


class OnlineProbe:
    """Recency-weighted ridge of the pass rate on (N, d) prompt states (module docstring)."""

    _STATS = ("w", "sz", "sy", "szz", "szy", "err")

    def __init__(
        self, states: np.ndarray, *, half_life: float, start: StartProbe | None = None
    ) -> None:
        if half_life <= 0:
            raise ValueError(f"`half_life` must be positive (steps), got {half_life}")
        self.states = states  # (N, d), by rank position; float16 on disk and here
        n, d = states.shape
        self.mean, self.scale = column_stats(states)
        self.gamma = 0.5 ** (1.0 / half_life)
        # start probe in z coordinates: x @ w + b = z @ (scale * w) + (mean @ w + b)
        self.beta0 = np.zeros(d) if start is None else start.weight * self.scale
        self.c0 = None if start is None else float(self.mean @ start.weight + start.bias)
        self.w, self.sy = 0.0, 0.0
        self.sz, self.szy = np.zeros(d), np.zeros(d)
        self.szz = np.zeros((d, d))
        self.err = np.zeros(len(ALPHAS))  # decayed prequential squared error per alpha
        self.alpha = float(ALPHAS[-1])
        self.groups, self.refits = 0, 0
        self.coef = self.beta0.copy()  # the served fit (z coordinates)
        self.intercept = 0.5 if self.c0 is None else self.c0
        self._fits: np.ndarray | None = None  # (A, d + 1) per-alpha fits of the last refit
        self.predicted = self._predict_all()

    @property
    def fitted(self) -> bool:
        """Whether predictions come from a start probe or at least one refit on pairs."""
        return self.c0 is not None or (self.refits > 0 and self.groups > 0)

    def z(self, positions: np.ndarray) -> np.ndarray:
        return (self.states[positions].astype(np.float64) - self.mean) / self.scale

    def add(self, positions: np.ndarray, rates: np.ndarray) -> None:
        """One step's groups: the statistics decay by gamma, then these pairs join (weight 1).
        Each alpha's last fit first predicts them: the prequential error."""
        pos = np.asarray(positions, np.int64)
        y = np.asarray(rates, np.float64)
        self.w *= self.gamma
        self.sy *= self.gamma
        self.sz *= self.gamma
        self.szy *= self.gamma
        self.szz *= self.gamma
        self.err *= self.gamma
        if not len(pos):
            return
        z = self.z(pos)
        zt = torch.from_numpy(z.astype(np.float32))
        if self._fits is not None:
            pred = z @ self._fits[:, :-1].T + self._fits[:, -1]  # (m, A)
            self.err += ((pred - y[:, None]) ** 2).sum(0)
        self.w += len(y)
        self.sy += float(y.sum())
        self.sz += z.sum(0)
        self.szy += z.T @ y
        self.szz += (zt.T @ zt).double().numpy()  # float32 per step, summed in float64
        self.groups += len(y)

    def refit(self) -> None:
        """Every alpha's fit of the weighted pairs; serve the one of least prequential error
        (ties: the larger alpha, closer to the start); re-predict all N prompts."""
        self.refits += 1
        if self.w <= 0:
            return
        zbar, ybar = self.sz / self.w, self.sy / self.w
        s_zz = self.szz - self.w * np.outer(zbar, zbar)
        s_zy = self.szy - self.w * zbar * ybar
        e, v = (t.numpy() for t in torch.linalg.eigh(torch.from_numpy((s_zz + s_zz.T) / 2)))
        r = v.T @ (s_zy - s_zz @ self.beta0)  # (d,)
        coefs = self.beta0 + (v @ (r[:, None] / (np.maximum(e, 0.0)[:, None] + ALPHAS))).T
        fits = np.empty((len(ALPHAS), len(zbar) + 1))
        fits[:, :-1] = coefs
        fits[:, -1] = ybar - coefs @ zbar
        self._fits = fits
        best = np.flatnonzero(self.err <= self.err.min() * (1 + 1e-12))[-1]
        self.alpha = float(ALPHAS[best])
        self.coef, self.intercept = fits[best, :-1].copy(), float(fits[best, -1])
        self.predicted = self._predict_all()

    def _predict_all(self) -> np.ndarray:
        """(N,) float32 predicted pass rates, not clipped, read in float32 blocks."""
        weight = self.coef / self.scale
        bias = np.float32(self.intercept - self.mean @ weight)
        x = torch.from_numpy(np.ascontiguousarray(self.states))
        if x.dtype == torch.float16:
            # float16 x float16 with float32 accumulation: 15 ms per 200,000 x 576 here, 20x
            # the float32 conversion; only the result's rounding (4e-4 near 1) is lost
            m = float(np.abs(weight).max()) or 1.0  # |w| / m <= 1: no float16 underflow
            out = (x @ torch.from_numpy((weight / m).astype(np.float16))).float() * m
        else:
            out = x.float() @ torch.from_numpy(weight.astype(np.float32))
        return out.numpy() + bias

    def state(self) -> ProbeState:
        return {
            "stats": {k: _b64(np.asarray(getattr(self, k))) for k in self._STATS},
            "alpha": self.alpha,
            "groups": self.groups,
            "refits": self.refits,
            "coef": _b64(self.coef),
            "intercept": self.intercept,
            "fits": None if self._fits is None else _b64(self._fits),
        }

    def load(self, state: dict[str, Any]) -> None:
        """Back to a saved state (the same states and start probe): the same predictions."""
        d = len(self.mean)
        shapes = {"w": (), "sz": (d,), "sy": (), "szz": (d, d), "szy": (d,), "err": (len(ALPHAS),)}
        for k in self._STATS:
            a = _unb64(state["stats"][k], shapes[k])
            setattr(self, k, float(a) if a.ndim == 0 else a)
        self.alpha = float(state["alpha"])
        self.groups, self.refits = int(state["groups"]), int(state["refits"])
        self.coef, self.intercept = _unb64(state["coef"], (d,)), float(state["intercept"])
        fits = state.get("fits")
        self._fits = None if fits is None else _unb64(fits, (len(ALPHAS), d + 1))
        self.predicted = self._predict_all()
