"""The orders a curriculum can draw over a scored run (`--rank-by`): the angle ranking
(gain_rank), the learnability ranking a probe wrote (gain_learn_rank, `gain-curate
predict`), or the shortest question first (gain_tokens_question). One function decides, for
`gain-curate schedule`, `export` and every trainer adapter."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow.parquet as pq

from gain_curate.errors import OutputError
from gain_curate.runfolder.run import Run

# The orders a schedule can draw over (`--rank-by`), and the column each one sorts by.
# "learnability-online" draws over the angle order until the trainer's rewards have refit
# its probe (curriculum/learning.py); "uniform" ignores the order (the no-curriculum arm).
RANK_BY = ("angle", "learnability", "length", "learnability-online", "uniform")
OVER_ANGLE = ("angle", "learnability-online", "uniform")  # positions are gain_rank
RANK_COLUMNS = {
    "angle": "gain_rank",
    "learnability": "gain_learn_rank",
    "length": "gain_tokens_question",
}
NO_PREDICTION = (
    "rank_by learnability needs gain_pred_pass and gain_learn_rank, which {where} does not "
    "have: run `gain-curate predict {out} --probe PROBE` first"
)


def order_by(rank_by: str, gain_rank: Any, key: Any = None, where: str = "the run") -> np.ndarray:
    """Indices of the given rows in `rank_by` order (position k of the curriculum holds row
    order[k]). angle: gain_rank. learnability: gain_learn_rank (predict.py: high p(1 - p)
    first). length: the shortest question first (gain_tokens_question; ties by gain_rank,
    rows never tokenized last): the one signal the issue-19 measurements found to predict a
    pass. `key` is that column per row (None where a trainer's rows lack it)."""
    ranks = np.asarray(gain_rank, dtype=np.int64)
    if rank_by not in RANK_BY:
        raise ValueError(f"rank_by {rank_by!r} is not one of {', '.join(RANK_BY)}")
    if rank_by in OVER_ANGLE:
        return np.argsort(ranks, kind="stable")
    k = None if key is None else np.array([np.nan if v is None else v for v in key], np.float64)
    if rank_by == "learnability" and (k is None or not np.isfinite(k).all()):
        raise ValueError(NO_PREDICTION.format(where=where, out="OUT"))
    if k is None:
        raise ValueError(
            f"rank_by length needs gain_tokens_question, which {where} does not have: "
            "train on shards written by `gain-curate score`"
        )
    k[~np.isfinite(k) | (k < 0)] = np.inf  # length: rows never tokenized go last
    return np.lexsort((ranks, k))  # by key, then by gain_rank


def read_order(run: Run, rank_by: str) -> np.ndarray:
    """The rank positions (gain_rank, the shards' row order) in `rank_by` order."""
    n = sum(s.rows for s in run.manifest.shards)
    if rank_by in OVER_ANGLE:
        return np.arange(n, dtype=np.int64)
    col = RANK_COLUMNS.get(rank_by)
    if col is None:
        raise ValueError(f"`rank_by` {rank_by!r} is not one of {', '.join(RANK_BY)}")
    paths = run.shard_paths()
    if col not in (pq.read_schema(paths[0]).names if paths else []):
        raise OutputError(NO_PREDICTION.format(where=str(run.out), out=run.out))
    t = run.table(["gain_rank", col])
    return t["gain_rank"].to_numpy()[
        order_by(rank_by, t["gain_rank"].to_numpy(), t[col].to_pylist(), str(run.out))
    ]
