"""The online learnability curriculum (`rank_by` "learnability-online"): GAIN-RL's schedule
until the trainer's own rewards say enough, then prompts served by their PREDICTED pass rate,
the prediction refit from those rewards as training goes (gain_curate.curriculum.learner).

Every R steps (`refit_every`) the probe is refit on all (state, pass rate) pairs seen so
far, weighted toward recent steps (`half_life`), and every prompt's pass rate re-predicted.
An epoch then draws B prompts without replacement with weight

    w(i) = exp(-(p_hat(i) - target)^2 / (2 width^2))        target 0.5, width 0.15

a Gaussian over the predicted pass rate, not p (1 - p): a GRPO group of G completions
teaches nothing when all G agree, which happens with probability p^G + (1 - p)^G; both
rules peak at 0.5, but p (1 - p) is nearly flat over the middle (0.21 at p = 0.3 against
0.25 at 0.5), so drawing in proportion to it is close to uniform over most of a dataset,
while the Gaussian's width says how sharply to prefer the middle, and the target can move
(a trainer that wants harder prompts sets 0.3).

It starts from the calibrated probe of `validate` when one is given (`probe`), else from the
angle ranking: until `min_groups` groups were observed it draws exactly as GainSchedule does
over the angle order (mu moves by the rule all along, so the fallback is the same curriculum).
Its state (the probe's statistics, the served fit, the epoch's pending results) is part of
state_dict(): a resumed run draws what an uninterrupted one draws.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from gain_curate.curriculum.draws import _log_exp
from gain_curate.curriculum.learner import OnlineProbe, StartProbe
from gain_curate.curriculum.schedule import GainSchedule, ScheduleParams
from gain_curate.curriculum.state import EpochRecord

ONLINE_VERSION = 1


@dataclass(frozen=True)
class LearningParams:
    refit_every: int = 1  # R: steps between refits
    half_life: float = 10.0  # steps after which a pair weighs half
    target: float = 0.5  # the predicted pass rate served most
    width: float = 0.15  # how sharply: the Gaussian's sd over pass rates
    min_groups: int = 64  # groups seen before the probe serves (without a start probe)
    feature: str | None = None  # states.npz array (None: prompt_end@L<k>, else last_token)

    def __post_init__(self) -> None:
        if self.refit_every < 1:
            raise ValueError(f"`refit_every` must be at least 1, got {self.refit_every}")
        if not self.half_life > 0:
            raise ValueError(f"`half_life` must be positive (steps), got {self.half_life}")
        if not 0.0 <= self.target <= 1.0:
            raise ValueError(f"`target` is a pass rate in [0, 1], got {self.target}")
        if not self.width > 0:
            raise ValueError(f"`width` must be positive (a pass rate sd), got {self.width}")
        if self.min_groups < 0:
            raise ValueError(f"`min_groups` must be at least 0, got {self.min_groups}")

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None) -> LearningParams:
        """From a trainer's gain config: the keys named like the fields, others ignored."""
        cfg = cfg or {}
        kinds = {"refit_every": int, "half_life": float, "target": float, "width": float}
        kinds |= {"min_groups": int, "feature": str}
        kw = {k: kinds[k](cfg[k]) for k in kinds if cfg.get(k) is not None}
        return cls(**kw)


class LearnabilitySchedule(GainSchedule):
    """GainSchedule's interface over N prompts whose (N, d) states (by position) predict
    their pass rates (module docstring). uids are required: results come by gain_uid."""

    def __init__(
        self,
        n_prompts: int,
        params: ScheduleParams,
        *,
        uids: Sequence[str],
        states: np.ndarray,
        learning: LearningParams | None = None,
        start: StartProbe | None = None,
        scores: Sequence[float] | None = None,
    ) -> None:
        super().__init__(n_prompts, params, uids=uids, scores=scores)
        if states.ndim != 2 or len(states) != n_prompts:
            raise ValueError(f"states of shape {states.shape} for {n_prompts} prompts")
        self.learning = learning or LearningParams()
        self.probe = OnlineProbe(states, half_life=self.learning.half_life, start=start)
        self._pending: dict[int, list[float]] = {}  # position -> [sum correct, count]
        self.served_zero_variance: list[float | None] = []  # per epoch
        self._keys_cache: tuple[tuple[int, int, int], np.ndarray] | None = None
        self._set_weights()

    # -- serving

    @property
    def learning_serves(self) -> bool:
        """Whether draws follow the predicted pass rates (else the angle schedule's)."""
        has_start = self.probe.c0 is not None
        return has_start or (self.probe.fitted and self.probe.groups >= self.learning.min_groups)

    def predicted(self) -> np.ndarray:
        """(N,) the current predicted pass rate by position (not clipped)."""
        return self.probe.predicted

    def _set_weights(self) -> None:
        """-log w per position for the current predictions (clipped to [0, 1] first)."""
        p = np.clip(self.probe.predicted.astype(np.float64), 0.0, 1.0)
        lp = self.learning
        self._cost = ((p - lp.target) ** 2 / (2.0 * lp.width**2)).astype(np.float32)
        self._keys_cache = None

    def draw_order(self, size: int, epoch: int | None = None) -> np.ndarray:
        if not self.learning_serves:
            return super().draw_order(size, epoch)
        e = self.epoch if epoch is None else epoch
        key = (self.params.seed, e, self.probe.refits)
        if self._keys_cache is None or self._keys_cache[0] != key:
            self._keys_cache = (key, self._race(e))
        order = self._keys_cache[1]
        size = min(size, self.n_prompts)
        if len(order) < size:  # drawn past what was planned: the whole order
            order = self._race(e, self.n_prompts)
            self._keys_cache = (key, order)
        return order[:size]

    def _race(self, epoch: int, k: int | None = None) -> np.ndarray:
        """The first k (default B, then x2) positions of the exponential race with keys
        log E + cost: a weighted sample without replacement, p(first draw) ~ w."""
        n = self.n_prompts
        k = min(n, k or max(self.params.batch_size, 1))
        rng = np.random.default_rng([self.params.seed, epoch, 1])
        keys = _log_exp(rng.random(n, dtype=np.float32)) + self._cost
        top = np.argpartition(keys, k - 1)[:k] if k < n else np.arange(n)
        order = top[np.argsort(keys[top], kind="stable")]
        order.flags.writeable = False
        return order

    # -- results

    def observe(self, uids: Sequence[str], correct: Sequence[float]) -> None:
        super().observe(uids, correct)
        for r, c in zip(self._ranks(uids), correct):
            tally = self._pending.setdefault(int(r), [0.0, 0.0])
            tally[0] += float(c)
            tally[1] += 1.0

    def end_epoch(self, *, move: bool = True) -> EpochRecord:
        record = super().end_epoch(move=move)
        pos = np.fromiter(self._pending, np.int64, len(self._pending))
        rates = np.array([s / c for s, c in self._pending.values()], np.float64)
        self._pending = {}
        self.served_zero_variance.append(
            float(np.mean((rates == 0) | (rates == 1))) if len(rates) else None
        )
        self.probe.add(pos, rates)
        if self.epoch % self.learning.refit_every == 0:
            self.probe.refit()
            self._set_weights()
        return record

    def online_metrics(self) -> dict[str, float]:
        """The last epoch as trainer metrics (NaN where nothing was observed)."""
        zv = self.served_zero_variance[-1] if self.served_zero_variance else None
        p = self.probe.predicted
        return {
            "gain/zero_var": math.nan if zv is None else zv,
            "gain/refits": float(self.probe.refits),
            "gain/pred_mean": float(np.clip(p, 0, 1).mean()) if len(p) else math.nan,
            "gain/learning_serves": float(self.learning_serves),
        }

    # -- checkpoint

    def state_dict(self) -> Any:
        state: dict[str, Any] = dict(super().state_dict())
        state["online"] = {
            "version": ONLINE_VERSION,
            "learning": asdict(self.learning),
            "probe": self.probe.state(),
            "pending": [[r, s, c] for r, (s, c) in self._pending.items()],
            "served_zero_variance": list(self.served_zero_variance),
        }
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        online = state.get("online")
        if online is None:
            raise ValueError(
                "the checkpoint holds no online learnability state (it was saved with another "
                "`rank_by`): resume with the `rank_by` it was trained with"
            )
        known = {f.name for f in fields(LearningParams)}
        self.learning = LearningParams(
            **{k: v for k, v in online["learning"].items() if k in known}
        )
        self.probe.gamma = 0.5 ** (1.0 / self.learning.half_life)
        self.probe.load(online["probe"])
        self._pending = {int(r): [float(s), float(c)] for r, s, c in online["pending"]}
        self.served_zero_variance = [
            None if v is None else float(v) for v in online["served_zero_variance"]
        ]
        self._set_weights()


def online_schedule(
    n_prompts: int,
    params: ScheduleParams,
    uids: Sequence[str],
    scores: Any,
    cfg: Mapping[str, Any],
) -> LearnabilitySchedule:
    """The schedule a trainer's gain config asks for with rank_by learnability-online:
    `states` (the run folder or its states.npz, required), `probe` (validate's, optional)
    and LearningParams' fields by name."""
    from gain_curate.curriculum.states import load_start_probe, load_states

    if not cfg.get("states"):
        raise ValueError(
            "rank_by learnability-online needs `states`: the run folder the shards came from, "
            "scored with `keep_states` (its states.npz)"
        )
    learning = LearningParams.from_config(cfg)
    states, feature = load_states(cfg["states"], uids, learning.feature)
    start = load_start_probe(cfg["probe"], feature) if cfg.get("probe") else None
    if start is not None and len(start.weight) != states.shape[1]:
        raise ValueError(
            f"`probe` {cfg['probe']} takes {len(start.weight)} values per prompt, the states "
            f"{states.shape[1]}: give a probe fit on this model's states"
        )
    return LearnabilitySchedule(
        n_prompts, params, uids=uids, states=states, learning=learning, start=start, scores=scores
    )
