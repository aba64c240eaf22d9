"""Everything that touches disk: the ranked Parquet shards and the manifest (docs/design.md).

    OUT/
      gain_manifest.json                  written last, atomically (tmp + rename)
      data/train-00000-of-0000N.parquet   rows sorted by gain_rank, one Arrow schema for all
                                          (named by the input's split: test-00000-of-...)
      states.npz                          score --keep-states: pooled hidden states per row
      .gain-curate/                       staging and work parts (hidden from loaders)

The table the shards hold is built by table.py (verl's RL schema, then the scored record's
gain_* columns); the work parts under OUT/.gain-curate by workdir.py. Every file is written
here, whole or not at all (tmp + rename), by one of the write_* functions.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shlex
import shutil
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from gain_curate.errors import OutputError
from gain_curate.runfolder.records import ManifestJSON, Shard

MANIFEST = "gain_manifest.json"
WORK_DIR = ".gain-curate"
STATES = "states.npz"  # --keep-states: row, gain_uid, question_mean, last_token, prompt_end@L<k>


def shard_name(i: int, n: int, split: str = "train") -> str:
    """`test-00000-of-00001.parquet`: the split as a file-name word (`train[:10%]`: train)."""
    word = re.sub(r"[^\w.-]+", "_", split.split("[")[0]).strip("._") or "train"
    return f"{word}-{i:05d}-of-{n:05d}.parquet"


def verl_files_key(split: str) -> str:
    """verl's flag for a split's files: train trains, every other split validates."""
    return "data.train_files" if split.split("[")[0] == "train" else "data.val_files"


def verl_files_flag(split: str, files: list[str]) -> str:
    """verl's flag for these shards as one shell word that bash and zsh pass as it is:
    `'data.train_files=[/a/x.parquet,/b c/y.parquet]'`. A path Hydra cannot read bare
    (`,` `=` `'` `"` brackets, ...) is quoted inside the list."""
    value = ",".join(_hydra_string(f) for f in files)
    return shlex.quote(f"{verl_files_key(split)}=[{value}]")


def _hydra_string(text: str) -> str:
    """One list element for Hydra's override parser: bare when its grammar reads it back
    as it is, else in double quotes (a quote, and backslashes before one, escaped)."""
    if "/" in text and re.fullmatch(r"[A-Za-z0-9_./+@%-]+(?: +[A-Za-z0-9_./+@%-]+)*", text):
        return text  # a path (never read as a number or a bool), spaces inside kept
    body = re.sub(r'(\\*)"', r'\1\1\\"', text)  # a quote, and backslashes before it
    return '"' + re.sub(r"(\\+)$", r"\1\1", body) + '"'  # and before the closing quote


def shard_count(n_rows: int, rows_per_shard: int) -> int:
    return max(1, -(-n_rows // rows_per_shard))


def write_shards(
    tables: Callable[[int, int], pa.Table],
    n_rows: int,
    out: Path,
    *,
    rows_per_shard: int,
    split: str = "train",
    advance: Callable[[int], None] = lambda n: None,
) -> list[Shard]:
    """Write the ranked rows as shards under OUT/data (named by `split`), all at once or not
    at all:
    `tables(first, end)` builds the rows ranked first..end-1 (one shard's, so a million rows
    are never one table); advance(1) as each shard is written.

    Shards are staged in OUT/.gain-curate/staging and the folder is renamed into place, so
    a crash leaves either the old data folder or the new one, never a mix.
    """
    n_shards = shard_count(n_rows, rows_per_shard)
    staging = out / WORK_DIR / "staging"
    with written(f"shards under {out}", staging):
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        shards = []
        for i in range(n_shards):
            first = i * rows_per_shard
            part = tables(first, min(first + rows_per_shard, n_rows))
            path = staging / shard_name(i, n_shards, split)
            pq.write_table(part, path, compression="zstd")
            rank_range = (first, first + part.num_rows - 1)
            shards.append(Shard(f"data/{path.name}", part.num_rows, file_sha256(path), rank_range))
            advance(1)
        data = out / "data"
        if data.exists():
            shutil.rmtree(data)
        staging.rename(data)
    return shards


@contextlib.contextmanager
def written(what: Any, *staged: Path) -> Iterator[None]:
    """Writing `what`: an OSError becomes one line (what, why, what to check) after the
    `staged` files or folders are removed, so a failed write leaves nothing half-written."""
    try:
        yield
    except OSError as e:
        for path in staged:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        raise OutputError(
            f"cannot write {what}: {e.strerror or e} (check free space and permissions)"
        ) from None


def write_manifest(out: Path, manifest: ManifestJSON) -> Path:
    """Atomic: the manifest appears whole, after the shards it describes, or not at all."""
    path = out / MANIFEST
    tmp = out / WORK_DIR / (MANIFEST + ".tmp")
    with written(path, tmp):
        tmp.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(manifest, indent=2, allow_nan=False) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    return path


def update_manifest(out: Path, key: str, value: Any) -> None:
    """Set one top-level section of the manifest, atomically."""
    manifest = read_manifest(out)
    manifest[key] = value  # type: ignore[literal-required]
    write_manifest(out, manifest)


def read_manifest(out: Path) -> ManifestJSON:
    """The manifest's JSON, for writers that update a section (readers: run.open_run)."""
    path = out / MANIFEST
    if not path.is_file():
        raise OutputError(
            f"{out} holds no scored run ({MANIFEST} missing): "
            f"run `gain-curate score` with `out` {out} first"
        )
    return json.loads(path.read_text(encoding="utf-8"))


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_ranking(out: Path) -> tuple[list[str], np.ndarray]:
    """gain_uid and gain_score by rank position, from the shards the manifest lists
    (readers: run.open_run(out).ranking())."""
    return ranking_of(shard_files(out, [s["path"] for s in read_manifest(out)["shards"]]))


def shard_files(out: Path, rel: list[str]) -> list[Path]:
    """OUT/rel for every shard the manifest lists, in rank order; one line for a missing one."""
    paths = [out / r for r in rel]
    for path in paths:
        if not path.is_file():
            raise OutputError(
                f"shard {path} listed in {MANIFEST} is missing: re-run `gain-curate score`"
            )
    return paths


def ranking_of(paths: list[Path]) -> tuple[list[str], np.ndarray]:
    """gain_uid and gain_score (NaN where unscored) of these shards, in order."""
    uids: list[str] = []
    scores: list[float | None] = []
    for path in paths:
        t = pq.read_table(path, columns=["gain_uid", "gain_score"])
        uids += t["gain_uid"].to_pylist()
        scores += t["gain_score"].to_pylist()
    return uids, np.array([np.nan if s is None else s for s in scores], dtype=np.float64)


PLAN_SCHEMA = pa.schema(
    [
        ("epoch", pa.int32()),
        ("position", pa.int32()),
        ("gain_uid", pa.string()),
        ("gain_rank", pa.int64()),
    ]
)


def write_plan(out: Path, plans: list[np.ndarray], uids: list[str]) -> Path:
    """OUT/schedule/plan.parquet: one row per draw (epoch, position in epoch, uid, rank)."""
    epoch = np.concatenate([np.full(len(p), e, dtype=np.int32) for e, p in enumerate(plans)])
    position = np.concatenate([np.arange(len(p), dtype=np.int32) for p in plans])
    ranks = np.concatenate(plans).astype(np.int64)
    table = pa.Table.from_arrays(
        [
            pa.array(epoch),
            pa.array(position),
            pa.array([uids[r] for r in ranks], pa.string()),
            pa.array(ranks),
        ],
        schema=PLAN_SCHEMA,
    )
    return write_table_atomic(table, out, Path("schedule") / "plan.parquet")


def write_table_atomic(table: pa.Table, out: Path, rel: Path) -> Path:
    """OUT/rel written whole or not at all: staged under OUT/.gain-curate, then renamed."""
    path = out / rel
    tmp = out / WORK_DIR / (str(rel).replace("/", "-") + ".tmp")
    with written(path, tmp):
        tmp.parent.mkdir(parents=True, exist_ok=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, tmp, compression="zstd")
        os.replace(tmp, path)
    return path


def write_npz_atomic(path: Path, arrays: dict[str, np.ndarray]) -> str:
    """Arrays as an uncompressed .npz (np.load reads it) that appears whole or not at all;
    returns its sha256. Zip entries carry a fixed timestamp (np.savez stamps the clock), so
    the same arrays are the same bytes whoever writes them."""
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with written(path, tmp):
        path.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as z:
            for name, a in arrays.items():
                info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                with z.open(info, "w", force_zip64=True) as f:
                    np.lib.format.write_array(f, np.ascontiguousarray(a), allow_pickle=False)
        digest = file_sha256(tmp)
        os.replace(tmp, path)
    return digest


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of a .npz written by write_npz_atomic (no pickles)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise OutputError(
            f"cannot read {path}: {e}; score again with `keep_states` and `overwrite`"
        ) from None


def write_png(fig: Any, path: Path) -> Path:
    """A matplotlib figure as a PNG that appears whole or not at all."""
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    write_bytes_atomic(path, buf.getvalue())
    return path


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """tmp + rename in the same folder (created if missing); one line on failure."""
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with written(path, tmp):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(data)
        os.replace(tmp, path)
