"""The resumable state of a scoring run under OUT/.gain-curate (docs/design.md).

    OUT/.gain-curate/run.json      the config (and its hash) the parts were made with
    OUT/.gain-curate/prepared/     the prepared rows and batches (prepared.py)
    OUT/.gain-curate/parts/part-NNNNN.parquet + .done   one finished part and its marker
    OUT/.gain-curate/states/part-NNNNN.npz              its pooled states (--keep-states)
    OUT/.gain-curate/ranks/rank-NNNNN.json              who is alive (heartbeats)

A part counts as done only if its marker names this config hash and the part file's
sha256; both are written tmp + rename, so a kill at any moment leaves a part either
finished or absent.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from gain_curate.errors import OutputError
from gain_curate.executor.records import RankState, RunInfo, ScoredPart
from gain_curate.runfolder.run import known
from gain_curate.runfolder.store import (
    MANIFEST,
    STATES,
    WORK_DIR,
    file_sha256,
    read_npz,
    write_bytes_atomic,
    write_npz_atomic,
    written,
)
from gain_curate.scoring.record import PART_SCHEMA, PrefillStats


class WorkDir:
    """The resumable state of one run under OUT/.gain-curate: run.json (what the run is),
    prepared/ (prepared.py), parts/ (finished work and markers), ranks/ (who is alive)."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.root = out / WORK_DIR
        self.parts = self.root / "parts"
        self.states = self.root / "states"  # part-NNNNN.npz: --keep-states, one per part
        self.ranks = self.root / "ranks"

    def run_info(self) -> RunInfo | None:
        """run.json, None when there is none (or one this version cannot read)."""
        path = self.root / "run.json"
        try:
            if not path.is_file():
                return None
            return RunInfo.from_json(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def write_run(self, info: RunInfo) -> None:
        write_bytes_atomic(self.root / "run.json", json.dumps(asdict(info), indent=1).encode())

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """One process at a time decides what OUT holds (prepares, cleans, resumes). The lock
        file is removed on release, still held, so no run leaves it behind; a waiter that
        then holds a removed file (or one a failed run's `discard` removed) takes the new one."""
        import fcntl

        if self.out.exists() and not self.out.is_dir():
            raise OutputError(
                f"output path {self.out} is a file, not a folder: choose another `out`"
            )
        path = self.root / "lock"
        while True:
            try:
                self.root.mkdir(parents=True, exist_ok=True)
                f = open(path, "a+")  # noqa: SIM115
            except OSError as e:
                raise OutputError(
                    f"cannot write {self.root}: {e.strerror or e} (check permissions)"
                ) from None
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                if os.fstat(f.fileno()).st_ino == os.stat(path).st_ino:
                    break  # the file at `path` is the one we hold
            except FileNotFoundError:
                pass
            f.close()
        try:
            yield
        finally:
            path.unlink(missing_ok=True)
            fcntl.flock(f, fcntl.LOCK_UN)
            f.close()

    def footprint(self) -> tuple[bool, bool]:
        """(OUT exists, OUT/.gain-curate exists): taken before a run touches OUT."""
        return self.out.exists(), self.root.exists()

    def discard(self, footprint: tuple[bool, bool]) -> None:
        """A failed run: remove what it created (OUT, or OUT/.gain-curate, as `footprint`
        says it found them), unless a part is finished there: finished work is kept."""
        out_existed, root_existed = footprint
        if any(self.parts.glob("part-*.done")) or (self.out / MANIFEST).exists():
            return
        if not out_existed:
            shutil.rmtree(self.out, ignore_errors=True)
        elif not root_existed:
            shutil.rmtree(self.root, ignore_errors=True)

    def clear(self) -> None:
        """--overwrite: the manifest and all work, but not the lock file (it is held)."""
        (self.out / MANIFEST).unlink(missing_ok=True)
        (self.out / STATES).unlink(missing_ok=True)
        if self.root.is_dir():
            for child in self.root.iterdir():
                if child.name == "lock":
                    continue
                if child.is_dir():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)

    def done(
        self,
        part: int,
        config_hash: str,
        part_key: str | None = None,
        *,
        states: bool = False,
        states_key: str | None = None,
    ) -> bool:
        """Finished with this config (and these batches); `states`: its states too, holding
        the arrays `states_key` names (probe_layers.states_key) when it is given."""
        marker = self.parts / f"part-{part:05d}.done"
        if not marker.is_file():
            return False
        try:
            m = json.loads(marker.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        path = self.parts / f"part-{part:05d}.parquet"
        kept = self.states_path(part)
        return (
            m["config_hash"] == config_hash
            and (part_key is None or m.get("part_key") == part_key)
            and path.is_file()
            and file_sha256(path) == m["sha256"]
            and (
                not states
                or (
                    m.get("states_sha256") is not None
                    and (states_key is None or m.get("states_key") == states_key)
                    and kept.is_file()
                    and file_sha256(kept) == m["states_sha256"]
                )
            )
        )

    def states_path(self, part: int) -> Path:
        return self.states / f"part-{part:05d}.npz"

    def write_part(
        self,
        part: int,
        scored: ScoredPart,
        config_hash: str,
        part_key: str | None = None,
        states_key: str | None = None,
    ) -> None:
        """The part's table, its states if kept (`states_key`: which arrays), then the marker
        naming both."""
        states = scored.states
        states_sha = None if states is None else write_npz_atomic(self.states_path(part), states)
        path = self.parts / f"part-{part:05d}.parquet"
        sink = pa.BufferOutputStream()
        with written(path):
            pq.write_table(scored.table.cast(PART_SCHEMA), sink, compression="zstd")
        data = sink.getvalue().to_pybytes()
        write_bytes_atomic(path, data)
        marker = {
            "config_hash": config_hash,
            "part_key": part_key,
            "rows": scored.table.num_rows,
            "sha256": hashlib.sha256(data).hexdigest(),
            "states_sha256": states_sha,
            "states_key": states_key,
            "prefill": {"token_budget": scored.token_budget, **asdict(scored.stats)},
        }
        write_bytes_atomic(self.parts / f"part-{part:05d}.done", json.dumps(marker).encode())

    def read_parts(
        self,
        part_keys: list[str],
        config_hash: str,
        *,
        states: bool = False,
        states_key: str | None = None,
        advance: Callable[[int], None] = lambda n: None,
    ) -> tuple[pa.Table, list[PrefillStats]]:
        """Every finished part's rows (one table, part order) and its prefill stats; one
        line naming the parts that are not finished."""
        n_parts = len(part_keys)
        missing = [
            p
            for p in range(n_parts)
            if not self.done(p, config_hash, part_keys[p], states=states, states_key=states_key)
        ]
        if missing:
            shown = ", ".join(str(p) for p in missing[:8]) + (" ..." if len(missing) > 8 else "")
            raise OutputError(
                f"{self.out}: {len(missing)} of {n_parts} parts are not finished (parts {shown}): "
                "run the missing `shard` workers (or `gain-curate score` again) before merging"
            )
        tables, stats = [], []
        for p in range(n_parts):
            tables.append(pq.read_table(self.parts / f"part-{p:05d}.parquet"))
            marker = json.loads((self.parts / f"part-{p:05d}.done").read_text())
            stats.append(PrefillStats.from_json(marker["prefill"]))
            advance(1)
        return (pa.concat_tables(tables) if tables else PART_SCHEMA.empty_table()), stats

    def read_states(
        self, n_parts: int, advance: Callable[[int], None] = lambda n: None
    ) -> dict[str, np.ndarray]:
        """Every part's pooled states, in part order (read after read_parts checked them)."""
        parts = []
        for p in range(n_parts):
            parts.append(read_npz(self.states_path(p)))
            advance(1)
        if not parts:
            return {}
        return {k: np.concatenate([q[k] for q in parts]) for k in parts[0]}

    # --- who is alive: each rank's state, refreshed while it works -------------------
    def beat(self, rank: int, state: str, **fields: Any) -> None:
        record = {"rank": rank, "state": state, "time": time.time(), "pid": os.getpid(), **fields}
        write_bytes_atomic(self.ranks / f"rank-{rank:05d}.json", json.dumps(record).encode())

    def rank_state(self, rank: int) -> RankState | None:
        try:
            path = self.ranks / f"rank-{rank:05d}.json"
            return known(RankState, json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError):
            return None
