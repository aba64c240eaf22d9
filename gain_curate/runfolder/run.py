"""A finished run folder, typed: what every reader of OUT gets from `open_run(out)`.

    run = open_run(Path("runs/gsm8k"))        # one line (OutputError) when OUT holds no run
    run.manifest.model.layer, run.manifest.input.question_key, run.manifest.shards[0].rows
    run.table()                               # every shard, in rank order (pa.Table)
    run.states()                              # states.npz (score with `keep_states`)
    uids, scores = run.ranking()              # gain_uid and gain_score by rank position
    run.manifest.section("schedule")          # what later commands added (None if absent)

The JSON on disk is exactly what the writers write (merge.py, then update_manifest for the
sections later commands add); this module only reads it. Older manifests read too: a
section or field written by a later version is None (or empty) when missing.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gain_curate.errors import OutputError
from gain_curate.inputs.sources import InputSpec
from gain_curate.runfolder import store
from gain_curate.runfolder.records import (
    Counts,
    ModelInfo,
    Shard,
    ShardJSON,
    StatesInfo,
    StatesJSON,
    input_spec,
    known,
)

__all__ = [
    "Counts",
    "Manifest",
    "ModelInfo",
    "Run",
    "Shard",
    "ShardJSON",
    "StatesInfo",
    "StatesJSON",
    "input_spec",
    "known",
    "open_run",
    "parse_manifest",
]

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa


@dataclass(frozen=True)
class Manifest:
    """OUT/gain_manifest.json. The typed fields are what every run has; `section(name)`
    reads the rest (signal, stats, prefill, runtime, trainer_flags, and what later commands
    add: schedule, exports, prediction). `raw` is the JSON as read, for writers that update
    one section and write it back (store.update_manifest)."""

    config_hash: str
    input: InputSpec
    model: ModelInfo
    shards: tuple[Shard, ...]
    counts: Counts
    states: StatesInfo | None
    raw: Mapping[str, Any] = field(repr=False, compare=False)

    @property
    def sections(self) -> Mapping[str, Any]:
        return self.raw

    def section(self, name: str) -> Any:
        """A top-level section as written, None when this run has none."""
        return self.raw.get(name)


@dataclass(frozen=True)
class Run:
    """A finished run: its folder and its manifest."""

    out: Path
    manifest: Manifest

    def shard_paths(self) -> list[Path]:
        """Every shard's file, in rank order; one line when one is missing."""
        return store.shard_files(self.out, [s.path for s in self.manifest.shards])

    def table(self, columns: list[str] | None = None) -> pa.Table:
        """Every shard's rows (or just `columns`), in rank order."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        return pa.concat_tables([pq.read_table(p, columns=columns) for p in self.shard_paths()])

    def states(self) -> dict[str, np.ndarray]:
        """OUT/states.npz: row, gain_uid and the (N, d) float16 features the manifest lists."""
        kept = self.manifest.states
        if kept is None:
            raise OutputError(
                f"{self.out} kept no hidden states: score it again with `keep_states` "
                "(the shards stay the same bytes)"
            )
        return store.read_npz(self.out / kept.path)

    def ranking(self) -> tuple[list[str], np.ndarray]:
        """gain_uid and gain_score (NaN where unscored) by rank position."""
        return store.ranking_of(self.shard_paths())


def open_run(out: Path) -> Run:
    """The finished run in OUT; one OutputError line when OUT holds none (or an unreadable
    manifest)."""
    path = out / store.MANIFEST
    if not path.is_file():
        raise OutputError(
            f"{out} holds no scored run ({store.MANIFEST} missing): "
            f"run `gain-curate score` with `out` {out} first"
        )
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return Run(out, parse_manifest(raw))
    except (OSError, ValueError, KeyError, TypeError) as e:
        why = f"missing {e}" if isinstance(e, KeyError) else str(e)
        raise OutputError(
            f"cannot read {path} ({why}): it is not a manifest gain-curate wrote; "
            f"score again with `overwrite`"
        ) from None


def parse_manifest(raw: Mapping[str, Any]) -> Manifest:
    """The typed view of a manifest's JSON (KeyError when a section every run has is absent)."""
    states = raw.get("states")
    counts = raw["counts"]
    return Manifest(
        config_hash=str(raw["config_hash"]),
        input=input_spec(raw["input"]),
        model=ModelInfo.from_json(raw["model"]),
        shards=tuple(Shard.from_json(s) for s in raw["shards"]),
        counts=Counts(
            int(counts["rows"]),
            int(counts["scored"]),
            dict(counts.get("unscored", {})),
            int(counts.get("duplicates", 0)),
        ),
        states=None if states is None else StatesInfo.from_json(states),
        raw=raw,
    )
