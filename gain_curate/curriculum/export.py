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

from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from gain_curate.errors import OutputError
from gain_curate.runfolder import store
from gain_curate.runfolder.run import Run, open_run

PLAN_FIRST = "run `gain-curate schedule {out}` first with `epochs` and `batch_size`"


class PlanFileJSON(TypedDict):
    """The manifest's record of a whole-plan export (exports.verl, exports.openrlhf.plan),
    key order as written."""

    path: str
    rows: int
    epochs: int
    batch_size: int
    sha256: str
    flags: str
    rank_by: str


@dataclass(frozen=True)
class PlanFile:
    """OUT/path: every plan epoch back to back (epochs x batch_size rows), drawn over the
    `rank_by` order, and the trainer flags (one shell line) that train on it in plan order."""

    path: str  # relative to OUT
    rows: int
    epochs: int
    batch_size: int
    sha256: str
    flags: str
    rank_by: str

    def to_json(self) -> PlanFileJSON:
        return {
            "path": self.path,
            "rows": self.rows,
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "sha256": self.sha256,
            "flags": self.flags,
            "rank_by": self.rank_by,
        }


VerlExport = PlanFile  # the verl export: plan.parquet and its data.* flags


def read_plan(out: Path) -> list[np.ndarray]:
    """The plan's rank positions, one array per epoch, in draw order."""
    path = out / "schedule" / "plan.parquet"
    if not path.is_file():
        raise OutputError(f"{path} not found: " + PLAN_FIRST.format(out=out))
    t = pq.read_table(path, columns=["epoch", "position", "gain_rank"]).to_pydict()
    n_epochs = max(t["epoch"]) + 1 if t["epoch"] else 0
    plans: list[list[tuple[int, int]]] = [[] for _ in range(n_epochs)]
    for e, pos, r in zip(t["epoch"], t["position"], t["gain_rank"]):
        plans[e].append((pos, r))
    return [np.array([r for _, r in sorted(p)], dtype=np.int64) for p in plans]


def plan_order(run: Run, rank_by: str | None = None) -> str:
    """The order the plan was drawn over (the manifest's schedule.rank_by; plans made before
    `rank_by` existed: angle). `rank_by` given: refuse a plan over another order."""
    from gain_curate.curriculum.rank_by import NO_PREDICTION, RANK_BY

    out = run.out
    drawn = (run.manifest.section("schedule") or {}).get("rank_by", "angle")
    if rank_by is None or rank_by == drawn:
        return drawn
    if rank_by not in RANK_BY:
        raise OutputError(f"`rank_by` {rank_by!r} is not one of {', '.join(RANK_BY)}")
    if rank_by == "learnability" and run.manifest.section("prediction") is None:
        raise OutputError(NO_PREDICTION.format(where=str(out), out=out))
    raise OutputError(
        f"the plan in {out} was drawn over the {drawn} ranking, not {rank_by}: run "
        f"`gain-curate schedule {out}` first with `rank_by` {rank_by}, `epochs` and `batch_size`"
    )


def rank_ordered(run: Run, columns: list[str] | None = None) -> pa.Table:
    """All shards of a run as one table (optionally only `columns`), row i = rank i."""
    table = run.table(None if columns is None else sorted({*columns, "gain_rank"}))
    if table["gain_rank"].to_pylist() != list(range(table.num_rows)):
        raise OutputError(
            f"the shards of {run.out} are not in rank order: re-run `gain-curate merge {run.out}`"
        )
    return table


def ranked_table(out: Path, columns: list[str] | None = None) -> pa.Table:
    """rank_ordered for the run in OUT."""
    return rank_ordered(open_run(out), columns)


def export_verl(out: Path, rank_by: str | None = None) -> tuple[Path, VerlExport]:
    """OUT/export/verl/plan.parquet and the verl flags that train on it in plan order."""
    plans = read_plan(out)
    run = open_run(out)
    drawn = plan_order(run, rank_by)
    sizes = {len(p) for p in plans}
    table = rank_ordered(run)
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
    record = VerlExport(
        path=str(path.relative_to(out)),
        rows=rows.num_rows,
        epochs=len(plans),
        batch_size=b,
        sha256=store.file_sha256(path),
        flags=" ".join(flags),
        rank_by=drawn,
    )
    exports = run.manifest.section("exports") or {}
    store.update_manifest(out, "exports", {**exports, "verl": record.to_json()})
    return path, record
