"""A prepared run (prepare.py) and how it is kept in the run's folder: per input row its
uid, duplicate, reason and tokens; the batch plan cut into parts; run.json.

    OUT/.gain-curate/run.json                  config, request key, config hash, runtime, parts
    OUT/.gain-curate/prepared/rows.parquet     per input row: uid, question, answer, reason,
                                               duplicate_of, token ids up to the question, p,
                                               total_tokens, tail (ids after the question)
    OUT/.gain-curate/prepared/batches.parquet  the batch plan: (shared, rows) in run order
    OUT/.gain-curate/prepared/input.parquet    the input table the shards are built from
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gain_curate.errors import OutputError
from gain_curate.executor.records import RunInfo
from gain_curate.executor.workdir import WorkDir
from gain_curate.runtime.resolve import Runtime
from gain_curate.scoring.config import ScoreConfig, config_dict, config_from_dict

if TYPE_CHECKING:
    import pyarrow as pa

    from gain_curate.inputs.conversation import Segments
    from gain_curate.inputs.sources import InputSpec
    from gain_curate.runfolder.run import ModelInfo
    from gain_curate.scoring.batching import Batch

PREPARED = "prepared"


@dataclass
class Prepared:
    cfg: ScoreConfig
    runtime: Runtime
    config_hash: str
    key: str  # request_key(cfg): flags + cheap input/model fingerprints
    model_info: ModelInfo  # the manifest's `model`
    spec: InputSpec
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
            # the ids after the question to the end of the prompt: --keep-states runs them
            "tail": pa.array(
                [tokens[i].tail if i in tokens else None for i in range(n)], pa.list_(pa.int32())
            ),
        }
    )


def run_record(prep: Prepared) -> RunInfo:
    """run.json: what every other process of the run reads instead of deciding again."""
    return RunInfo(
        config_hash=prep.config_hash,
        key=prep.key,
        launch=prep.launch,
        config=config_dict(prep.cfg),
        runtime=prep.runtime,
        model=prep.model_info,
        input=prep.spec,
        rows=prep.n_rows,
        parts=tuple(prep.parts),
        prefix_ids=prep.prefix_ids,
        pad_id=prep.pad_id,
    )


def save_prepared(prep: Prepared) -> None:
    """The prepared files first, run.json last: a run.json means the rest is complete."""
    import pyarrow as pa

    from gain_curate.runfolder import store

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

    from gain_curate.inputs.conversation import Segments
    from gain_curate.runfolder import store
    from gain_curate.scoring.batching import Batch

    work = WorkDir(out)
    info = work.run_info()
    if info is None:
        raise OutputError(
            f"{out} holds no prepared scoring run ({store.WORK_DIR}/run.json missing): "
            f"run `gain-curate score` with `out` {out} first"
        )
    folder = work.root / PREPARED
    try:
        rows = pq.read_table(folder / "rows.parquet")
        bt = pq.read_table(folder / "batches.parquet").to_pydict()
        table = pq.read_table(folder / "input.parquet") if for_merge else None
    except OSError as e:
        raise OutputError(
            f"{folder}: the prepared run is incomplete ({e}); score again with `overwrite`"
        ) from None
    batches = [Batch(list(r), bool(s)) for s, r in zip(bt["shared"], bt["rows"])]
    running = {k for b in batches for k in b.rows}
    ids, ps, totals = (rows[c].to_pylist() for c in ("input_ids", "p", "total_tokens"))
    # a run prepared before tails were kept has none: its request key differs from any
    # --keep-states run's (probe layers), so such a run is prepared again before it needs them
    tails = rows["tail"].to_pylist() if "tail" in rows.column_names else [[]] * rows.num_rows
    segments = {k: Segments(ids[k], ps[k], totals[k], tails[k]) for k in sorted(running)}
    cfg = config_from_dict({**info.config, "out": str(out)})
    return Prepared(
        cfg,
        info.runtime,
        info.config_hash,
        info.key,
        info.model,
        info.input,
        info.rows,
        segments,
        info.prefix_ids,
        batches,
        list(info.parts),
        rows if for_merge else None,
        table,
        info.pad_id,
        info.launch,
    )
