"""What every trainer adapter needs: the ranking of the rows a trainer loaded, and the
schedule parameters from a trainer's config."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from gain_curate.schedule import GainSchedule, ScheduleParams

PARAM_KEYS = ("mu0", "n", "alpha", "beta", "adj_min", "adj_max", "seed")


def ranking(
    extra_info: Sequence[Mapping[str, Any]], scores: Sequence[float | None] | None
) -> tuple[list[int], list[str], np.ndarray]:
    """Rows as a trainer loaded them (possibly filtered or reordered) -> rank order.

    Returns (row index at each rank position, gain_uid by position, gain_score by position).
    Rows carry their ids in extra_info because that is what survives into a trainer's batch.
    """
    if not extra_info or any(
        e is None or "gain_uid" not in e or "gain_rank" not in e for e in extra_info
    ):
        raise ValueError(
            "the dataset has no extra_info.gain_uid / gain_rank: train on shards written by `gain-curate score`"
        )
    rows = sorted(range(len(extra_info)), key=lambda i: extra_info[i]["gain_rank"])
    uids = [extra_info[i]["gain_uid"] for i in rows]
    s = np.array(
        [np.nan if scores is None or scores[i] is None else scores[i] for i in rows],
        dtype=np.float64,
    )
    return rows, uids, s


def schedule_params(cfg: Mapping[str, Any] | None, batch_size: int) -> ScheduleParams:
    """ScheduleParams from a config mapping: sigma as a number or '0.05N', the rest by name."""
    cfg = dict(cfg or {})
    kw: dict[str, Any] = {k: cfg[k] for k in PARAM_KEYS if cfg.get(k) is not None}
    sigma = cfg.get("sigma")
    if isinstance(sigma, str) and sigma.strip().upper().endswith("N"):
        kw["sigma_fraction"] = float(sigma.strip()[:-1])
    elif sigma is not None:
        kw["sigma"] = float(sigma)
    if cfg.get("sigma_fraction") is not None:
        kw["sigma_fraction"] = float(cfg["sigma_fraction"])
    return ScheduleParams(batch_size=batch_size, **kw)


def build_schedule(extra_info: Sequence[Mapping[str, Any]], scores: Sequence[float | None] | None,
                   params: ScheduleParams) -> tuple[GainSchedule, list[int]]:  # fmt: skip
    rows, uids, s = ranking(extra_info, scores)
    return GainSchedule(len(rows), params, uids=uids, scores=s), rows


def per_prompt(uids: Sequence[str], correct: Sequence[float]) -> tuple[list[str], list[float]]:
    """Group per-response results by prompt: (uids, mean correctness), first-seen order.

    Trainers reorder rows (verl balances batches) and repeat each prompt n times."""
    groups: dict[str, list[float]] = defaultdict(list)
    for u, c in zip(uids, correct):
        groups[u].append(float(c))
    return list(groups), [float(np.mean(v)) for v in groups.values()]
