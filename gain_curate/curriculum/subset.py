"""A curated subset of a scored run as verl-schema shards, for a trainer that reads files:

    gain-curate export runs/gsm8k --format subset --drop-unscored --drop-duplicates \
--pass-band 0.1:0.9 --top 0.5 --val-size 500
    # verl: 'data.train_files=[runs/gsm8k/export/subset/train-00000-of-00001.parquet]'
    #       'data.val_files=[runs/gsm8k/export/subset/val-00000-of-00001.parquet]'

The run's rows (same columns) in the `rank_by` order, filtered in this order, each filter on
what the one before kept: unscored rows (no gain_score), duplicates (the same prompt
conversation again: the first in rank order stays), the pass band (gain_pred_pass, which
`gain-curate predict` adds, in [lo, hi]; no prediction: dropped), then the top fraction of
what is left. A held-out split takes the rows whose sha256(seed, gain_uid) is smallest, so the
same run, filters and seed give the same split, and a row keeps its side when others come or
go. Both splits stay in rank order; OUT/export/subset is written whole or not at all.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from gain_curate.errors import OutputError
from gain_curate.runfolder import store
from gain_curate.runfolder.records import Shard
from gain_curate.runfolder.run import Run, open_run

SUBSET_DIR = Path("export") / "subset"


@dataclass(frozen=True)
class SubsetSpec:
    """What to keep: None / False for a filter not asked for."""

    top: float | None = None  # the top fraction of what the other filters kept, (0, 1]
    pass_band: tuple[float, float] | None = None  # gain_pred_pass in [lo, hi]
    drop_unscored: bool = False
    drop_duplicates: bool = False
    val_fraction: float | None = None  # held out: this fraction of the kept rows, (0, 1)
    val_size: int | None = None  # or this many
    seed: int = 0

    def __post_init__(self) -> None:
        if self.top is not None and not 0.0 < self.top <= 1.0:
            raise ValueError(f"`top` {self.top:g} is not a fraction in (0, 1]: give e.g. 0.5")
        if self.pass_band is not None:
            lo, hi = self.pass_band
            if not 0.0 <= lo <= hi <= 1.0:
                raise ValueError(
                    f"`pass_band` {lo:g}:{hi:g} is not LO:HI with 0 <= LO <= HI <= 1: "
                    "give e.g. 0.1:0.9"
                )
        if self.val_fraction is not None and self.val_size is not None:
            raise ValueError("give `val_fraction` or `val_size`, not both")
        if self.val_fraction is not None and not 0.0 < self.val_fraction < 1.0:
            raise ValueError(
                f"`val_fraction` {self.val_fraction:g} is not in (0, 1): give e.g. 0.05"
            )
        if self.val_size is not None and self.val_size < 1:
            raise ValueError(f"`val_size` {self.val_size} is not a positive number of rows")


def parse_band(text: str) -> tuple[float, float]:
    """`0.1:0.9` -> (0.1, 0.9); ValueError naming the setting otherwise."""
    parts = str(text).split(":")
    try:
        lo, hi = (float(v) for v in parts)
    except ValueError:
        raise ValueError(f"`pass_band` {text!r} is not LO:HI: give e.g. 0.1:0.9") from None
    SubsetSpec(pass_band=(lo, hi))  # the range check
    return lo, hi


@dataclass
class Subset:
    """The export: shard paths (relative to OUT), rows, what each filter dropped, the flags."""

    train: list[Shard]
    val: list[Shard]
    n_rows: int  # the run's rows
    dropped: dict[str, int] = field(default_factory=dict)  # filter -> rows it dropped
    flags: str = ""
    rank_by: str = "angle"

    def to_json(self, spec: SubsetSpec) -> dict[str, Any]:
        return {
            "path": str(SUBSET_DIR),
            "rank_by": self.rank_by,
            "rows": self.n_rows,
            "train_rows": sum(s.rows for s in self.train),
            "val_rows": sum(s.rows for s in self.val),
            "dropped": dict(self.dropped),
            "filters": {
                "top": spec.top,
                "pass_band": None if spec.pass_band is None else list(spec.pass_band),
                "drop_unscored": spec.drop_unscored,
                "drop_duplicates": spec.drop_duplicates,
                "val_fraction": spec.val_fraction,
                "val_size": spec.val_size,
                "seed": spec.seed,
            },
            "train": [shard_json(s) for s in self.train],
            "val": [shard_json(s) for s in self.val],
            "flags": self.flags,
        }


def shard_json(s: Shard) -> dict[str, Any]:
    return {"path": s.path, "rows": s.rows, "sha256": s.sha256}


def keep_mask(table: pa.Table, spec: SubsetSpec, out: Path) -> tuple[np.ndarray, dict[str, int]]:
    """Rows (in the table's order) that pass the filters, and how many each one dropped."""
    keep = np.ones(table.num_rows, dtype=bool)
    dropped: dict[str, int] = {}

    def apply(name: str, ok: np.ndarray) -> None:
        dropped[name] = int((keep & ~ok).sum())
        keep[:] = keep & ok

    if spec.drop_unscored:
        score = table["gain_score"].to_numpy(zero_copy_only=False).astype(np.float64)
        apply("unscored", np.isfinite(score))
    if spec.drop_duplicates:
        seen: set[str] = set()
        first = np.zeros(table.num_rows, dtype=bool)
        for i, conv in enumerate(table["prompt"].to_pylist()):
            key = json.dumps(conv, sort_keys=True, ensure_ascii=False)
            if keep[i] and key not in seen:  # the first kept row of each prompt stays
                seen.add(key)
                first[i] = True
        apply("duplicates", first | ~keep)
    if spec.pass_band is not None:
        if "gain_pred_pass" not in table.column_names:
            raise OutputError(
                f"`pass_band` needs gain_pred_pass, which {out} does not have: "
                f"run `gain-curate predict {out}` with `probe` PROBE first"
            )
        lo, hi = spec.pass_band
        p = table["gain_pred_pass"].to_numpy(zero_copy_only=False).astype(np.float64)
        with np.errstate(invalid="ignore"):
            apply("pass_band", np.isfinite(p) & (p >= lo) & (p <= hi))
    if spec.top is not None:
        k = math.ceil(spec.top * int(keep.sum()))
        ok = np.zeros(table.num_rows, dtype=bool)
        ok[np.flatnonzero(keep)[:k]] = True
        apply("top", ok)
    return keep, dropped


def held_out(uids: list[str], spec: SubsetSpec) -> np.ndarray:
    """A bool per row: in the validation split (the smallest sha256(seed, uid))."""
    n = len(uids)
    val = np.zeros(n, dtype=bool)
    if spec.val_fraction is None and spec.val_size is None:
        return val
    k = spec.val_size if spec.val_size is not None else max(1, round(spec.val_fraction * n))
    if k >= n:
        raise OutputError(
            f"a validation split of {k} rows leaves none of the {n} kept rows to train on: "
            "lower `val_size` or `val_fraction`, or keep more rows"
        )
    keys = [hashlib.sha256(f"{spec.seed}:{u}".encode()).hexdigest() for u in uids]
    val[np.argsort(np.array(keys), kind="stable")[:k]] = True
    return val


def write_splits(
    out: Path, splits: dict[str, pa.Table], rows_per_shard: int
) -> dict[str, list[Shard]]:
    """OUT/export/subset/<split>-0000i-of-0000n.parquet for each split, staged and renamed
    into place as one folder: the old subset or the new one, never a mix."""
    staging = out / store.WORK_DIR / "subset-staging"
    final = out / SUBSET_DIR
    written: dict[str, list[Shard]] = {}
    with store.written(f"the subset under {final}", staging):
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        for split, table in splits.items():
            n = store.shard_count(table.num_rows, rows_per_shard)
            written[split] = []
            for i in range(n):
                part = table.slice(i * rows_per_shard, rows_per_shard)
                path = staging / store.shard_name(i, n, split)
                pq.write_table(part, path, compression="zstd")
                first = i * rows_per_shard
                written[split].append(
                    Shard(
                        str(SUBSET_DIR / path.name),
                        part.num_rows,
                        store.file_sha256(path),
                        (first, first + part.num_rows - 1),
                    )
                )
        final.parent.mkdir(parents=True, exist_ok=True)
        if final.exists():
            shutil.rmtree(final)
        staging.rename(final)
    return written


def export_subset(out: Path, spec: SubsetSpec, rank_by: str | None = None) -> Subset:
    """The run's rows in `rank_by` order, filtered and split as `spec` says, written as
    verl-schema shards under OUT/export/subset; recorded in the manifest (exports.subset)."""
    from gain_curate.curriculum.export import rank_ordered
    from gain_curate.curriculum.rank_by import read_order

    run = open_run(out)
    order = read_order(run, rank_by or "angle")  # gain_rank at each position
    table = rank_ordered(run).take(pa.array(order))
    keep, dropped = keep_mask(table, spec, out)
    kept = table.filter(pa.array(keep))
    if kept.num_rows == 0:
        raise OutputError(
            f"the filters kept none of the {table.num_rows} rows of {out}: "
            "widen `pass_band`, raise `top`, or drop a filter"
        )
    val = held_out(kept["gain_uid"].to_pylist(), spec)
    splits = {"train": kept.filter(pa.array(~val))}
    if val.any():
        splits["val"] = kept.filter(pa.array(val))
    shards = write_splits(out, splits, rows_per_shard(run, table.num_rows))
    files = {k: [str((out / s.path).resolve()) for s in v] for k, v in shards.items()}
    flags = [store.verl_files_flag(k, v) for k, v in files.items()]
    res = Subset(
        shards["train"],
        shards.get("val", []),
        table.num_rows,
        dropped,
        " ".join(flags),
        rank_by or "angle",
    )
    exports = run.manifest.section("exports") or {}
    store.update_manifest(out, "exports", {**exports, "subset": res.to_json(spec)})
    return res


def rows_per_shard(run: Run, n: int) -> int:
    """The run's own shard size (its first shard's rows), so a subset shards the same way."""
    shards = run.manifest.shards
    return max(1, shards[0].rows if shards else n)
