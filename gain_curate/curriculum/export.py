"""Open-loop exports of the plan (`gain-curate schedule`) for trainers without a hook.

    gain-curate export runs/gsm8k --format verl
    # any verl (0.5 - 0.9, either trainer): data.train_files=[runs/gsm8k/export/verl/plan.parquet]
    #   data.shuffle=False data.train_batch_size=B trainer.total_epochs=1

The verl export is the plan's draws as rows, all epochs back to back, in verl's schema:
row k of plan epoch e is the shard row of that rank, with extra_info gaining
gain_plan_epoch and gain_plan_position (gain_uid and gain_rank are already there). A
sequential sampler with batch size B then trains step e on plan epoch e.

The plan already chose its order (`gain-curate schedule --rank-by angle|learnability|length`):
an export follows it, and `--rank-by X` on an export only checks that the plan was drawn over
X (a plan over another order is refused, naming the schedule command that makes one).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from gain_curate.errors import OutputError
from gain_curate.runfolder import store


def read_plan(out: Path) -> list[np.ndarray]:
    """The plan's rank positions, one array per epoch, in draw order."""
    path = out / "schedule" / "plan.parquet"
    if not path.is_file():
        raise OutputError(
            f"{path} not found: run `gain-curate schedule {out} --epochs E --batch-size B` first"
        )
    t = pq.read_table(path, columns=["epoch", "position", "gain_rank"]).to_pydict()
    n_epochs = max(t["epoch"]) + 1 if t["epoch"] else 0
    plans: list[list[tuple[int, int]]] = [[] for _ in range(n_epochs)]
    for e, pos, r in zip(t["epoch"], t["position"], t["gain_rank"]):
        plans[e].append((pos, r))
    return [np.array([r for _, r in sorted(p)], dtype=np.int64) for p in plans]


def plan_order(out: Path, rank_by: str | None = None) -> str:
    """The order the plan was drawn over (the manifest's schedule.rank_by; plans made before
    --rank-by existed: angle). `rank_by` given: refuse a plan over another order."""
    from gain_curate.curriculum.rank_by import NO_PREDICTION, RANK_BY

    manifest = store.read_manifest(out)
    drawn = (manifest.get("schedule") or {}).get("rank_by", "angle")
    if rank_by is None or rank_by == drawn:
        return drawn
    if rank_by not in RANK_BY:
        raise OutputError(f"--rank-by {rank_by!r} is not one of {', '.join(RANK_BY)}")
    if rank_by == "learnability" and "prediction" not in manifest:
        raise OutputError(NO_PREDICTION.format(where=str(out), out=out))
    raise OutputError(
        f"the plan in {out} was drawn over the {drawn} ranking, not {rank_by}: run "
        f"`gain-curate schedule {out} --rank-by {rank_by} --epochs E --batch-size B` first"
    )


def ranked_table(out: Path, columns: list[str] | None = None) -> pa.Table:
    """All shards of a run as one table (optionally only `columns`), row i = rank i."""
    manifest = store.read_manifest(out)
    cols = None if columns is None else sorted({*columns, "gain_rank"})
    table = pa.concat_tables(
        [pq.read_table(out / s["path"], columns=cols) for s in manifest["shards"]]
    )
    if table["gain_rank"].to_pylist() != list(range(table.num_rows)):
        raise OutputError(
            f"the shards of {out} are not in rank order: re-run `gain-curate merge {out}`"
        )
    return table


def export_verl(out: Path, rank_by: str | None = None) -> tuple[Path, dict[str, Any]]:
    """OUT/export/verl/plan.parquet and the verl flags that train on it in plan order."""
    plans = read_plan(out)
    drawn = plan_order(out, rank_by)
    sizes = {len(p) for p in plans}
    table = ranked_table(out)
    ranks = np.concatenate(plans)
    rows = table.take(pa.array(ranks))
    epoch = np.concatenate([np.full(len(p), e, dtype=np.int32) for e, p in enumerate(plans)])
    position = np.concatenate([np.arange(len(p), dtype=np.int32) for p in plans])
    ei = rows["extra_info"].combine_chunks()
    fields = {ei.type.field(k).name: ei.field(k) for k in range(ei.type.num_fields)}
    fields["gain_plan_epoch"], fields["gain_plan_position"] = pa.array(epoch), pa.array(position)
    extra = pa.StructArray.from_arrays(list(fields.values()), names=list(fields))
    rows = rows.set_column(rows.schema.get_field_index("extra_info"), "extra_info", extra)
    path = store.write_table_atomic(rows, out, Path("export") / "verl" / "plan.parquet")
    (b,) = sizes
    flags = [
        store.verl_files_flag("train", [str(path.resolve())]),  # one shell word
        "data.shuffle=False",
        f"data.train_batch_size={b}",
        "trainer.total_epochs=1",
    ]
    record = {
        "path": str(path.relative_to(out)),
        "rows": rows.num_rows,
        "epochs": len(plans),
        "batch_size": b,
        "sha256": store.file_sha256(path),
        "flags": " ".join(flags),
        "rank_by": drawn,
    }
    manifest = store.read_manifest(out)
    store.update_manifest(out, "exports", {**manifest.get("exports", {}), "verl": record})
    return path, record
