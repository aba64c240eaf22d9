"""What every trainer adapter needs: the ranking of the rows a trainer loaded, and the
schedule parameters from a trainer's config.

`rank_by` (verl `+data.gain.rank_by=learnability`, TRL `gain_params={"rank_by": ...}`):
the order the schedule draws over, `angle` (default: extra_info.gain_rank), `learnability`
(the gain_learn_rank column `gain-curate predict` adds), `length` (gain_tokens_question,
shortest first), `uniform` (no curriculum) or `learnability-online` (over the angle order,
then by the pass rates a probe refit from the trainer's rewards predicts: `states`, the
run folder, and the keys of curriculum.learning.LearningParams); rank_by.order_by decides,
the same function `gain-curate schedule` uses."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from gain_curate.curriculum.rank_by import RANK_BY, RANK_COLUMNS, order_by
from gain_curate.curriculum.schedule import EpochRecord, GainSchedule, ScheduleParams

PARAM_KEYS = ("mu0", "n", "alpha", "beta", "adj_min", "adj_max", "seed", "angle", "at_end")


def ranking(
    extra_info: Sequence[Mapping[str, Any]],
    scores: Sequence[float | None] | None,
    rank_by: str = "angle",
    keys: Sequence[Any] | None = None,
) -> tuple[list[int], list[str], np.ndarray]:
    """Rows as a trainer loaded them (possibly filtered or reordered) -> rank order.

    Returns (row index at each rank position, gain_uid by position, gain_score by position).
    Rows carry their ids in extra_info because that is what survives into a trainer's batch.
    `rank_by` other than angle sorts by `keys`, that order's column per row (rank_keys).
    """
    if not extra_info or any(
        e is None or "gain_uid" not in e or "gain_rank" not in e for e in extra_info
    ):
        raise ValueError(
            "the dataset has no extra_info.gain_uid / gain_rank: "
            "train on shards written by `gain-curate score`"
        )
    ranks = [extra_info[i]["gain_rank"] for i in range(len(extra_info))]
    rows = order_by(rank_by, ranks, keys, where="the trainer's dataset").tolist()
    uids = [extra_info[i]["gain_uid"] for i in rows]
    s = np.array(
        [np.nan if scores is None or scores[i] is None else scores[i] for i in rows],
        dtype=np.float64,
    )
    return rows, uids, s


def rank_by_of(cfg: Mapping[str, Any] | None) -> str:
    """The order a trainer's gain config asks for (default angle), checked."""
    value = str((cfg or {}).get("rank_by") or "angle")
    if value not in RANK_BY:
        raise ValueError(f"gain rank_by {value!r} is not one of {', '.join(RANK_BY)}")
    return value


def rank_keys(table: Any, rank_by: str) -> list[Any] | None:
    """Per row of a trainer's dataset (HF datasets or pandas), the column `rank_by` sorts by;
    None for angle (extra_info.gain_rank) or when the dataset lacks the column."""
    col = RANK_COLUMNS.get(rank_by)
    if col is None:  # angle, learnability-online, uniform: extra_info.gain_rank
        return None
    names = getattr(table, "column_names", None)
    names = list(names) if names is not None else list(getattr(table, "columns", []))
    if col not in names:
        return None
    values = table[col]  # Arrow gives scalars: to Python values
    return values.to_pylist() if hasattr(values, "to_pylist") else list(values)


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
    mode = cfg.get("mode", "default")
    if mode not in ("default", "paper"):
        raise ValueError(f"gain mode {mode!r} is not one of default, paper")
    return (
        ScheduleParams.paper(batch_size, **kw)
        if mode == "paper"
        else ScheduleParams(batch_size=batch_size, **kw)
    )


def offline_scores(table: Any, inter_weight: float) -> list[float | None] | None:
    """Each row's offline C_intra + w C_inter (the baseline of the "change" angle term),
    from a dataset with the gain_* columns; gain_score where the parts are missing."""
    cols = set(table.column_names)
    if {"gain_c_intra", "gain_c_inter"} <= cols:
        return [
            None if a is None or b is None else a + inter_weight * b
            for a, b in zip(table["gain_c_intra"], table["gain_c_inter"])
        ]
    return list(table["gain_score"]) if "gain_score" in cols else None


def step_metrics(
    rec: EpochRecord, online_mean: float | None = None, schedule: GainSchedule | None = None
) -> dict[str, float]:
    """One schedule step as trainer metrics (NaN where a value was not measured), also
    written as one line to the `gain_curate` logger (INFO), so every trainer shows it; the
    online learnability mode's own (gain/zero_var, gain/refits, ...) when `schedule` is one."""
    nan = float("nan")
    out = {
        "gain/mu": float(rec.mu_next),
        "gain/acc": float(rec.acc),
        "gain/ang": nan if rec.ang is None else float(rec.ang),
        "gain/angle_online": nan if online_mean is None else online_mean,
        "gain/delta": float(rec.delta),
        "gain/pass": float(rec.passes),
    }
    online = getattr(schedule, "online_metrics", None)
    extra = online() if online is not None else {}
    out.update(extra)
    ang = "not measured" if rec.ang is None else f"{rec.ang:+.4f}"
    event = f", {rec.event}" if rec.event else ""
    served = ""
    if extra:
        zv = extra["gain/zero_var"]
        who = "predicted pass rates" if extra["gain/learning_serves"] else "the angle schedule"
        served = f"; zero-variance groups {zv:.2f}, served by {who}"
    LOG.info(
        f"gain-curate step {rec.epoch}: acc {rec.acc:.3f}, ang {ang}, "
        f"mu {rec.mu:.1f} -> {rec.mu_next:.1f} (pass {rec.passes}{event}){served}"
    )
    return out


def _stream_log() -> logging.Logger:
    log = logging.getLogger("gain_curate")
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
    return log


LOG = _stream_log()


def build_schedule(
    extra_info: Sequence[Mapping[str, Any]],
    scores: Sequence[float | None] | None,
    params: ScheduleParams,
    rank_by: str = "angle",
    keys: Sequence[Any] | None = None,
    gain_cfg: Mapping[str, Any] | None = None,
) -> tuple[GainSchedule, list[int]]:
    """The schedule over the rows in `rank_by` order, and the dataset row at each position.
    learnability-online reads `states` (and `probe`, `refit_every`, ...) from `gain_cfg`."""
    rows, uids, s = ranking(extra_info, scores, rank_by, keys)
    if rank_by == "learnability-online":
        from gain_curate.curriculum.learning import online_schedule

        return online_schedule(len(rows), params, uids, s, gain_cfg or {}), rows
    sched = GainSchedule(len(rows), params, uids=uids, scores=s)
    sched.uniform = rank_by == "uniform"  # every draw uniform over the rows, mu aside
    return sched, rows


def per_prompt(uids: Sequence[str], correct: Sequence[float]) -> tuple[list[str], list[float]]:
    """Group per-response results by prompt: (uids, mean correctness), first-seen order.

    Trainers reorder rows (verl balances batches) and repeat each prompt n times."""
    groups: dict[str, list[float]] = defaultdict(list)
    for u, c in zip(uids, correct):
        groups[u].append(float(c))
    return list(groups), [float(np.mean(v)) for v in groups.values()]
