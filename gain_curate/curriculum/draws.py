"""How GainSchedule draws an epoch: the Gaussian p(r) over rank positions and the epoch's
draw order (an exponential race, sampling without replacement), planned once and cached by
an EpochDraws that the schedule holds.

How an epoch is drawn: one exponential race (Efraimidis-Spirakis; the Gumbel-top-k trick in
log space) over all N positions, key(r) = log E(r) + (r - mu)^2 / (2 sigma^2) with E ~ Exp(1)
seeded by (seed, epoch); the draws are the positions in increasing key order. The first B
are a weighted sample without replacement with p(r) ~ exp(-(r - mu)^2 / (2 sigma^2)) (the
first draw is exactly p(r)); continuing the order draws more from the same Gaussian, still
without replacement (a trainer that replaces filtered prompts within a step). The order is
computed once per epoch, O(N + B log B) (one pass of random numbers and one comparison
over N; about 10 ms at N = 1,000,000, B = 1,024) and cached: a draw is O(1).
Far tails never underflow (keys are finite), so B distinct draws always exist. gain-curate
0.1-0.2 (state versions 1-2) drew with numpy's `choice(p=...)`: the same distribution,
other plans, so a state of those versions loaded mid-epoch draws the rest of that epoch
afresh (a prompt of it may come twice).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

WINDOW_SIGMAS = 8.0  # keys are computed within +-8 sigma of mu (and where E is tiny)


@dataclass(frozen=True)
class DrawAt:
    """Everything an epoch's draw order depends on: the same DrawAt, the same order."""

    seed: int
    epoch: int
    mu: float
    sigma: float  # in rank positions
    uniform: bool  # at_end = "uniform" reached: p(r) = 1 / N
    batch_size: int  # B: an order is first planned B long


def _log_exp(u: np.ndarray) -> np.ndarray:
    """log E for E = -log(1 - U) ~ Exp(1); U = 0 gives -inf (drawn first)."""
    with np.errstate(divide="ignore"):
        return np.log(-np.log1p(-u))


def gaussian(n_prompts: int, mu: float, sigma: float, uniform: bool = False) -> np.ndarray:
    """p(r) over rank positions r = 0..N-1 (sums to 1): what one draw follows."""
    if uniform:
        return np.full(n_prompts, 1.0 / n_prompts)
    r = np.arange(n_prompts, dtype=np.float64)
    logits = -((r - mu) ** 2) / (2.0 * sigma**2)
    w = np.exp(logits - logits.max())  # mu may run far past the end (at_end = "past")
    return w / w.sum()


class EpochDraws:
    """One epoch's draw order over N rank positions, cached: planned once per DrawAt, grown
    (B at once, then doubling) when a trainer draws past what was planned."""

    def __init__(self, n_prompts: int) -> None:
        self.n_prompts = n_prompts
        self._at: DrawAt | None = None  # what the cached order was planned for
        self._u = np.empty(0)  # (N,) the epoch's U ~ U[0, 1): E = -log(1 - U) ~ Exp(1)
        self._order = np.empty(0, dtype=np.int64)  # its first positions in draw order

    def order(self, at: DrawAt, size: int) -> np.ndarray:
        """The first `size` (at most N) rank positions of the draw order at `at`, read-only.
        Growing a prefix reuses the epoch's random numbers; deterministic in `at`."""
        if at != self._at:
            rng = np.random.default_rng([at.seed, at.epoch])
            self._at, self._u = at, rng.random(self.n_prompts)
            self._order = np.empty(0, dtype=np.int64)
        size = min(size, self.n_prompts)
        if len(self._order) < size:
            k = max(size, at.batch_size, 2 * len(self._order))  # B at once, then x2
            order = self._smallest_keys(at, min(k, self.n_prompts))
            order.flags.writeable = False
            self._order = order
        return self._order[:size]

    def _smallest_keys(self, at: DrawAt, k: int) -> np.ndarray:
        """The k positions of smallest key log E(r) + (r - mu)^2 / (2 sigma^2), in key order.

        Exact, without a log or a square over all N: keys are computed in a window of
        +-WINDOW_SIGMAS sigma (at least k positions) around mu; outside it every key is at
        least log E + dmin^2 / (2 sigma^2), so only positions with E below
        exp(t - dmin^2 / (2 sigma^2)), t the k-th smallest key of the window, can compete
        (expected about N e^-32 of them at the defaults): one comparison of U over N finds
        them (E < b <=> U < 1 - e^-b), and they join the candidates."""
        n, u = self.n_prompts, self._u
        if at.uniform:
            r, keys = np.arange(n), u  # E is increasing in U: U alone orders a uniform race
        else:
            s2 = 2.0 * at.sigma**2
            h = max(WINDOW_SIGMAS * at.sigma, float(k))
            lo = int(min(max(math.floor(at.mu - h), 0), n - k))
            hi = int(max(min(math.ceil(at.mu + h) + 1, n), lo + k))
            r = np.arange(lo, hi)
            keys = _log_exp(u[lo:hi]) + (r - at.mu) ** 2 / s2
            left = at.mu - (lo - 1) if lo > 0 else math.inf
            dmin = max(min(left, hi - at.mu if hi < n else math.inf), 0.0)
            if math.isfinite(dmin):
                t = float(np.partition(keys, k - 1)[k - 1])
                bound = math.exp(min(t - dmin**2 / s2, 700.0))
                out = np.flatnonzero(u < -math.expm1(-bound))
                out = out[(out < lo) | (out >= hi)]
                if len(out):
                    r = np.concatenate([r, out])
                    keys = np.concatenate([keys, _log_exp(u[out]) + (out - at.mu) ** 2 / s2])
        top = np.argpartition(keys, k - 1)[:k] if k < len(keys) else np.arange(len(keys))
        return r[top[np.argsort(keys[top], kind="stable")]]
