"""A prepared run (prepare.py) and how it is kept in the run's folder: per input row its
uid, duplicate, reason and tokens; the batch plan cut into parts; run.json.

    OUT/.gain-curate/run.json                  config, request key, config hash, runtime, parts
    OUT/.gain-curate/prepared/rows.parquet     per input row: uid, question, answer, reason,
                                               duplicate_of, token ids up to the question, p
    OUT/.gain-curate/prepared/batches.parquet  the batch plan: (shared, rows) in run order
    OUT/.gain-curate/prepared/input.parquet    the input table the shards are built from
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gain_curate.errors import OutputError
from gain_curate.runtime.resolve import Runtime
from gain_curate.scoring.config import ScoreConfig, config_dict, config_from_dict
from gain_curate.scoring.workdir import WorkDir

if TYPE_CHECKING:
    import pyarrow as pa

    from gain_curate.scoring.batching import Batch
    from gain_curate.scoring.conversation import Segments

PREPARED = "prepared"


@dataclass
class Prepared:
    cfg: ScoreConfig
    runtime: Runtime
    config_hash: str
    key: str  # request_key(cfg): flags + cheap input/model fingerprints
    model_info: dict[str, Any]
    spec: dict[str, Any]  # sources.InputSpec as a dict
    n_rows: int
    segments: dict[int, Segments]  # input row -> its token segments, for the rows that run
    prefix_ids: list[int] | None
    batches: list[Batch]  # in run order
    parts: list[tuple[int, int]]  # part -> [first, last) batch
    rows: pa.Table | None = None  # per input row (see save_prepared); the merge reads it
    table: pa.Table | None = None  # the input table; the merge reads it
    pad_id: int = 0
    launch: str | None = None

    @property
    def out(self) -> Path:
        return self.cfg.out

    def part_batches(self, part: int) -> list[Batch]:
        a, b = self.parts[part]
        return self.batches[a:b]

    def part_key(self, part: int) -> str:
        """What a finished part must have been made of: its batches' rows, in order."""
        rows = [[int(b.shared), *b.rows] for b in self.part_batches(part)]
        return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]


def prompt_uids(
    questions: list[str | None], answers: list[str | None], raw: list[Any]
) -> list[str]:
    """Content hash of (question, answer, occurrence): stable under reordering, unique."""
    seen: Counter[str] = Counter()
    uids = []
    for q, a, r in zip(questions, answers, raw):
        key = json.dumps([q if q is not None else repr(r), a], ensure_ascii=False)
        uids.append(hashlib.sha256(f"{key}\x00{seen[key]}".encode()).hexdigest()[:16])
        seen[key] += 1
    return uids


def first_occurrences(questions: list[str | None], answers: list[str | None]) -> list[int | None]:
    """Per row, the earlier row with the same question and answer (None for the first)."""
    first: dict[tuple[str, str | None], int] = {}
    out: list[int | None] = []
    for i, (q, a) in enumerate(zip(questions, answers)):
        out.append(None if q is None else first.setdefault((q, a), i))
        if out[-1] == i:
            out[-1] = None
    return out


def part_size(n: int, part_rows: int, workers: int) -> int:
    """Rows per part: --part-rows, cut so that each of `workers` processes gets a part (8 GPUs
    on 7,473 prompts: 8 parts, not one part and seven idle GPUs)."""
    if workers <= 1:
        return part_rows
    return max(1, min(part_rows, -(-n // workers)))


def cut_parts(batches: list[Any], rows_per_part: int) -> list[tuple[int, int]]:
    """Consecutive whole batches, about `rows_per_part` rows each."""
    parts, start, rows = [], 0, 0
    for i, b in enumerate(batches):
        rows += len(b.rows)
        if rows >= rows_per_part:
            parts.append((start, i + 1))
            start, rows = i + 1, 0
    if start < len(batches):
        parts.append((start, len(batches)))
    return parts


def rows_table(
    uids: list[str],
    questions: list[str | None],
    answers: list[str | None],
    reasons: list[str | None],
    duplicate_of: list[int | None],
    tokens: dict[int, Any],
) -> Any:
    import pyarrow as pa

    n = len(uids)
    ids = [tokens[i].input_ids if i in tokens else None for i in range(n)]
    return pa.table(
        {
            "row": pa.array(range(n), pa.int64()),
            "uid": pa.array(uids, pa.string()),
            "question": pa.array(questions, pa.string()),
            "answer": pa.array(answers, pa.string()),
            "reason": pa.array(reasons, pa.string()),
            "duplicate_of": pa.array(duplicate_of, pa.int64()),
            "input_ids": pa.array(ids, pa.list_(pa.int32())),
            "p": pa.array([tokens[i].p if i in tokens else None for i in range(n)], pa.int32()),
            "total_tokens": pa.array(
                [tokens[i].total_tokens if i in tokens else None for i in range(n)], pa.int32()
            ),
        }
    )


def run_record(prep: Prepared) -> dict[str, Any]:
    """run.json: what every other process of the run reads instead of deciding again."""
    return {
        "config_hash": prep.config_hash,
        "key": prep.key,
        "launch": prep.launch,
        "config": config_dict(prep.cfg),
        "runtime": prep.runtime.to_dict(),
        "model": prep.model_info,
        "input": prep.spec,
        "rows": prep.n_rows,
        "parts": [list(p) for p in prep.parts],
        "prefix_ids": prep.prefix_ids,
        "pad_id": prep.pad_id,
    }


def save_prepared(prep: Prepared) -> None:
    """The prepared files first, run.json last: a run.json means the rest is complete."""
    import pyarrow as pa

    from gain_curate.scoring import store

    folder = Path(store.WORK_DIR) / PREPARED
    store.write_table_atomic(prep.rows, prep.out, folder / "rows.parquet")
    store.write_table_atomic(prep.table, prep.out, folder / "input.parquet")
    batches = pa.table(
        {
            "shared": pa.array([b.shared for b in prep.batches], pa.bool_()),
            "rows": pa.array([b.rows for b in prep.batches], pa.list_(pa.int64())),
        }
    )
    store.write_table_atomic(batches, prep.out, folder / "batches.parquet")
    WorkDir(prep.out).write_run(run_record(prep))


def load_prepared(out: Path, *, for_merge: bool = False) -> Prepared:
    """The run as its first process prepared it. Scorers get the segments of every row that
    runs; the merge also gets the per-row table and the input table."""
    import pyarrow.parquet as pq

    from gain_curate.scoring import store
    from gain_curate.scoring.batching import Batch
    from gain_curate.scoring.conversation import Segments

    work = WorkDir(out)
    info = work.run_info()
    if info is None or "runtime" not in info:
        raise OutputError(
            f"{out} holds no prepared scoring run ({store.WORK_DIR}/run.json missing): "
            f"run `gain-curate score --out {out}` first"
        )
    folder = work.root / PREPARED
    try:
        rows = pq.read_table(folder / "rows.parquet")
        bt = pq.read_table(folder / "batches.parquet").to_pydict()
        table = pq.read_table(folder / "input.parquet") if for_merge else None
    except OSError as e:
        raise OutputError(
            f"{folder}: the prepared run is incomplete ({e}); score again with --overwrite"
        ) from None
    batches = [Batch(list(r), bool(s)) for s, r in zip(bt["shared"], bt["rows"])]
    running = {k for b in batches for k in b.rows}
    ids, ps, totals = (rows[c].to_pylist() for c in ("input_ids", "p", "total_tokens"))
    segments = {k: Segments(ids[k], ps[k], totals[k]) for k in sorted(running)}
    cfg = config_from_dict({**info["config"], "out": str(out)})
    return Prepared(
        cfg,
        Runtime.from_dict(info["runtime"]),
        info["config_hash"],
        info["key"],
        info["model"],
        info["input"],
        info["rows"],
        segments,
        info["prefix_ids"],
        batches,
        [tuple(p) for p in info["parts"]],
        rows if for_merge else None,
        table,
        info.get("pad_id", 0),
        info.get("launch"),
    )
