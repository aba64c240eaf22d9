"""Everything that touches disk: the ranked Parquet shards and the manifest (DESIGN.md 4).

    OUT/
      gain_manifest.json                  written last, atomically (tmp + rename)
      data/train-00000-of-0000N.parquet   rows sorted by gain_rank, one Arrow schema for all
      states.npz                          score --keep-states: pooled hidden states per row
      .gain-curate/                       staging and work parts (hidden from loaders)

Columns are verl's RL schema (data_source, prompt, ability, reward_model, extra_info) so
`data.train_files` can point at the shards, then the input's other columns, then the
gain_* columns. One explicit schema is built for the whole run and every shard is a slice
of one table, so the shards always concatenate.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from gain_curate.errors import OutputError

MANIFEST = "gain_manifest.json"
WORK_DIR = ".gain-curate"
STATES = "states.npz"  # score --keep-states: row, gain_uid, question_mean, last_token
VERL_COLUMNS = ("data_source", "prompt", "ability", "reward_model", "extra_info")
# Names verl's RLHFDataset / DataProto use for itself: an input column with one of these
# names moves into extra_info as input_<name> instead of shadowing it at top level.
VERL_RESERVED = frozenset(
    {"index", "uid", "raw_prompt", "raw_prompt_ids", "full_prompts", "multi_modal_data",
     "multi_modal_inputs", "input_ids", "attention_mask", "position_ids", "tools_kwargs",
     "interaction_kwargs", "dummy_tensor"}
)  # fmt: skip
PROMPT_TYPE = pa.list_(pa.struct([("content", pa.string()), ("role", pa.string())]))
REWARD_TYPE = pa.struct([("ground_truth", pa.string()), ("style", pa.string())])
GAIN_FIELDS = [
    pa.field("gain_uid", pa.string(), nullable=False),
    pa.field("gain_rank", pa.int64(), nullable=False),
    pa.field("gain_score", pa.float64()),
    pa.field("gain_c_intra", pa.float64()),
    pa.field("gain_c_inter", pa.float64()),
    pa.field("gain_tokens_prefix", pa.int32()),
    pa.field("gain_tokens_question", pa.int32()),
    pa.field("gain_unscored_reason", pa.string()),
    pa.field("gain_duplicate_of", pa.string()),  # gain_uid of the first occurrence, else null
]
# `gain-curate predict` adds these two after the others (predict.py): a probe's predicted
# pass rate, and the learnability ranking (high p(1 - p) first) as a rank position.
PREDICT_FIELDS = [pa.field("gain_pred_pass", pa.float64()), pa.field("gain_learn_rank", pa.int64())]
# The orders a schedule can draw over (`--rank-by`), and the column each one sorts by.
RANK_BY = ("angle", "learnability", "length")
RANK_COLUMNS = {
    "angle": "gain_rank",
    "learnability": "gain_learn_rank",
    "length": "gain_tokens_question",
}
NO_PREDICTION = "rank_by learnability needs gain_pred_pass and gain_learn_rank, which {where} does not have: run `gain-curate predict {out} --probe PROBE` first"  # fmt: skip


@dataclass
class RankedRows:
    """Per input row, in INPUT order; `order[r]` is the input row at rank r."""

    uids: list[str]
    answers: list[str | None]
    score: np.ndarray  # float64, NaN where unscored
    c_intra: np.ndarray
    c_inter: np.ndarray
    tokens_prefix: np.ndarray  # int64, -1 where never tokenized
    tokens_question: np.ndarray
    reasons: list[str | None]
    order: np.ndarray  # int64 permutation
    duplicate_of: list[int | None]  # input row of the first occurrence, None for originals


def rank_order(
    score: np.ndarray, uids: list[str], duplicate_of: list[int | None] | None = None
) -> np.ndarray:
    """Highest score first, ties by gain_uid; unscored (NaN) rows last, in input order. A
    duplicate (same question and answer as an earlier row) carries its first occurrence's
    score and ranks right after it, so the curriculum reaches both at the same time."""
    dup = duplicate_of or [None] * len(uids)
    originals = [i for i in range(len(uids)) if dup[i] is None]
    scored = [i for i in originals if np.isfinite(score[i])]
    scored.sort(key=lambda i: (-score[i], uids[i]))
    copies: dict[int, list[int]] = {}
    for i, first in enumerate(dup):
        if first is not None:
            copies.setdefault(first, []).append(i)
    unscored = [i for i in originals if not np.isfinite(score[i])]
    order = [j for i in scored + unscored for j in (i, *copies.get(i, ()))]
    return np.asarray(order, dtype=np.int64)


def order_by(rank_by: str, gain_rank: Any, key: Any = None, where: str = "the run") -> np.ndarray:
    """Indices of the given rows in `rank_by` order (position k of the curriculum holds row
    order[k]). angle: gain_rank. learnability: gain_learn_rank (predict.py: high p(1 - p)
    first). length: the shortest question first (gain_tokens_question; ties by gain_rank,
    rows never tokenized last): the one signal the issue-19 measurements found to predict a
    pass. `key` is that column per row (None where a trainer's rows lack it)."""
    ranks = np.asarray(gain_rank, dtype=np.int64)
    if rank_by not in RANK_BY:
        raise ValueError(f"rank_by {rank_by!r} is not one of {', '.join(RANK_BY)}")
    if rank_by == "angle":
        return np.argsort(ranks, kind="stable")
    k = None if key is None else np.array([np.nan if v is None else v for v in key], np.float64)
    if rank_by == "learnability" and (k is None or not np.isfinite(k).all()):
        raise ValueError(NO_PREDICTION.format(where=where, out="OUT"))
    if k is None:
        raise ValueError(f"rank_by length needs gain_tokens_question, which {where} does not have: train on shards written by `gain-curate score`")  # fmt: skip
    k[~np.isfinite(k) | (k < 0)] = np.inf  # length: rows never tokenized go last
    return np.lexsort((ranks, k))  # by key, then by gain_rank


def build_table(
    table: pa.Table,
    rows: RankedRows,
    *,
    question_key: str,
    answer_key: str | None,
    data_source: str,
    split: str,
    prompts: list[list[dict[str, Any]] | None],
    questions: list[str | None] | None = None,
    replace_data_source: bool = False,
) -> pa.Table:
    """Input table + scores -> the output table in rank order, with its explicit schema.

    Per input row, `prompts` is the conversation the trainer renders (template.conversations;
    None: no question, one empty user turn); an input's own chat `prompt` column is kept as
    it is. `questions`: the question text found in an input's own chat, written to
    extra_info.question where the input has none (what online measurement looks for).
    data_source: the input's own column (nulls filled) unless `replace_data_source`."""
    order = pa.array(rows.order)
    n = len(rows.uids)
    rank_of = np.empty(n, dtype=np.int64)
    rank_of[rows.order] = np.arange(n)
    taken = table.take(order)
    names = set(table.column_names)

    cols: dict[str, pa.Array | pa.ChunkedArray] = {}
    if "data_source" in names and not replace_data_source:
        own = pc.cast(taken["data_source"], pa.string())
        cols["data_source"] = pc.fill_null(own, pa.scalar(data_source, pa.string()))
    else:
        cols["data_source"] = pa.array([data_source] * n, pa.string())
    if "prompt" in names and _is_chat(table.schema.field("prompt").type):
        cols["prompt"] = taken["prompt"]
    else:
        empty = [{"content": "", "role": "user"}]
        msgs = [[{"content": m.get("content"), "role": m.get("role")} for m in (prompts[i] or empty)] for i in rows.order]  # fmt: skip
        cols["prompt"] = pa.array(msgs, PROMPT_TYPE)
    cols["ability"] = (
        taken["ability"] if "ability" in names else pa.array(["math"] * n, pa.string())
    )
    if "reward_model" in names:
        cols["reward_model"] = taken["reward_model"]
    else:
        gts = [{"ground_truth": rows.answers[i], "style": "rule"} for i in rows.order]
        cols["reward_model"] = pa.array(gts, REWARD_TYPE)

    # extra_info: the input's own fields, the consumed question/answer columns, reserved
    # top-level names, then index (the input row), split, gain_uid and gain_rank.
    extra: dict[str, pa.Array | pa.ChunkedArray] = {}
    if "extra_info" in names and pa.types.is_struct(table.schema.field("extra_info").type):
        ei = taken["extra_info"].combine_chunks()
        for k in range(ei.type.num_fields):
            extra[ei.type.field(k).name] = ei.field(k)
    top = question_key.split(".")[0]
    consumed = {top} if top not in VERL_COLUMNS else set()
    if answer_key and answer_key.split(".")[0] not in VERL_COLUMNS:
        consumed.add(answer_key.split(".")[0])
    for name in table.column_names:
        if name in consumed:
            extra.setdefault("question" if name == top else "answer", taken[name])
        elif name in VERL_RESERVED:
            extra[f"input_{name}"] = taken[name]
    if questions is not None and any(q is not None for q in questions):
        extra.setdefault("question", pa.array([questions[i] for i in rows.order], pa.string()))
    extra["index"] = pa.array(rows.order, pa.int64())
    extra.setdefault("split", pa.array([split] * n, pa.string()))
    extra["gain_uid"] = pa.array([rows.uids[i] for i in rows.order], pa.string())
    extra["gain_rank"] = pa.array(np.arange(n), pa.int64())
    cols["extra_info"] = pa.StructArray.from_arrays(
        [_combine(a) for a in extra.values()], names=list(extra)
    )
    for name in table.column_names:
        if name not in VERL_COLUMNS and name not in consumed and name not in VERL_RESERVED:
            cols[name] = taken[name]

    def f(values: np.ndarray) -> pa.Array:
        return pa.array(values[rows.order], pa.float64(), mask=~np.isfinite(values[rows.order]))

    def tokens(values: np.ndarray) -> pa.Array:
        return pa.array(values[rows.order], pa.int32(), mask=values[rows.order] < 0)

    gain = [
        pa.array([rows.uids[i] for i in rows.order], pa.string()),
        pa.array(np.arange(n), pa.int64()),
        f(rows.score),
        f(rows.c_intra),
        f(rows.c_inter),
        tokens(rows.tokens_prefix),
        tokens(rows.tokens_question),
        pa.array([rows.reasons[i] for i in rows.order], pa.string()),
        pa.array(
            [None if (j := rows.duplicate_of[i]) is None else rows.uids[j] for i in rows.order],
            pa.string(),
        ),  # fmt: skip
    ]
    fields = [pa.field(k, v.type) for k, v in cols.items()] + GAIN_FIELDS
    schema = pa.schema(fields)  # explicit; the input's HF metadata is dropped on purpose
    return pa.Table.from_arrays([_combine(v) for v in cols.values()] + gain, schema=schema)


def _is_chat(t: pa.DataType) -> bool:
    return pa.types.is_list(t) and pa.types.is_struct(t.value_type)


def _combine(a: pa.Array | pa.ChunkedArray) -> pa.Array:
    return a.combine_chunks() if isinstance(a, pa.ChunkedArray) else a


def shard_name(i: int, n: int) -> str:
    return f"train-{i:05d}-of-{n:05d}.parquet"


def write_shards(table: pa.Table, out: Path, *, rows_per_shard: int) -> list[dict[str, Any]]:
    """Write the ranked table as shards under OUT/data, all at once or not at all.

    Shards are staged in OUT/.gain-curate/staging and the folder is renamed into place, so
    a crash leaves either the old data folder or the new one, never a mix.
    """
    n_shards = max(1, -(-table.num_rows // rows_per_shard))
    staging = out / WORK_DIR / "staging"
    try:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        shards = []
        for i in range(n_shards):
            part = table.slice(i * rows_per_shard, rows_per_shard)
            path = staging / shard_name(i, n_shards)
            pq.write_table(part, path, compression="zstd")
            first = i * rows_per_shard
            shards.append(
                {
                    "path": f"data/{path.name}",
                    "rows": part.num_rows,
                    "sha256": file_sha256(path),
                    "rank_range": [first, first + part.num_rows - 1],
                }
            )
        data = out / "data"
        if data.exists():
            shutil.rmtree(data)
        staging.rename(data)
    except OSError as e:
        shutil.rmtree(staging, ignore_errors=True)
        raise OutputError(
            f"cannot write shards under {out}: {e.strerror or e} (check free space and permissions)"
        ) from None
    return shards


def write_manifest(out: Path, manifest: dict[str, Any]) -> Path:
    """Atomic: the manifest appears whole, after the shards it describes, or not at all."""
    path = out / MANIFEST
    tmp = out / WORK_DIR / (MANIFEST + ".tmp")
    try:
        tmp.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(manifest, indent=2, allow_nan=False) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"cannot write {path}: {e.strerror or e} (check free space and permissions)") from None  # fmt: skip
    return path


def update_manifest(out: Path, key: str, value: Any) -> None:
    """Set one top-level section of the manifest, atomically."""
    manifest = read_manifest(out)
    manifest[key] = value
    write_manifest(out, manifest)


def read_manifest(out: Path) -> dict[str, Any]:
    path = out / MANIFEST
    if not path.is_file():
        raise OutputError(
            f"{out} holds no scored run ({MANIFEST} missing): run `gain-curate score --out {out}` first"
        )
    return json.loads(path.read_text(encoding="utf-8"))


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_ranking(out: Path) -> tuple[list[str], np.ndarray]:
    """gain_uid and gain_score by rank position, from the shards the manifest lists."""
    manifest = read_manifest(out)
    uids: list[str] = []
    scores: list[float | None] = []
    for shard in manifest["shards"]:
        path = out / shard["path"]
        if not path.is_file():
            raise OutputError(
                f"shard {path} listed in {MANIFEST} is missing: re-run `gain-curate score`"
            )
        t = pq.read_table(path, columns=["gain_uid", "gain_score"])
        uids += t["gain_uid"].to_pylist()
        scores += t["gain_score"].to_pylist()
    return uids, np.array([np.nan if s is None else s for s in scores], dtype=np.float64)


def read_order(out: Path, rank_by: str) -> np.ndarray:
    """The rank positions (gain_rank, the shards' row order) in `rank_by` order."""
    manifest = read_manifest(out)
    n = sum(s["rows"] for s in manifest["shards"])
    if rank_by == "angle":
        return np.arange(n, dtype=np.int64)
    col = RANK_COLUMNS.get(rank_by)
    if col is None:
        raise ValueError(f"--rank-by {rank_by!r} is not one of {', '.join(RANK_BY)}")
    names = pq.read_schema(out / manifest["shards"][0]["path"]).names if manifest["shards"] else []
    if col not in names:
        raise OutputError(NO_PREDICTION.format(where=str(out), out=out))
    t = pa.concat_tables([pq.read_table(out / s["path"], columns=["gain_rank", col]) for s in manifest["shards"]])  # fmt: skip
    return t["gain_rank"].to_numpy()[order_by(rank_by, t["gain_rank"].to_numpy(), t[col].to_pylist(), str(out))]  # fmt: skip


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
    try:
        tmp.parent.mkdir(parents=True, exist_ok=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, tmp, compression="zstd")
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"cannot write {path}: {e.strerror or e} (check free space and permissions)") from None  # fmt: skip
    return path


# --- resumable work parts -------------------------------------------------------------
# OUT/.gain-curate/run.json      the config (and its hash) the parts were made with
# OUT/.gain-curate/parts/part-NNNNN.parquet + .done   one finished part and its marker
# A part counts as done only if its marker names this config hash and the part file's
# sha256; both are written tmp + rename, so a kill at any moment leaves a part either
# finished or absent.

PART_SCHEMA = pa.schema(
    [("row", pa.int64()), ("score", pa.float64()), ("c_intra", pa.float64()), ("c_inter", pa.float64()),
     ("tokens_prefix", pa.int64()), ("tokens_question", pa.int64()), ("reason", pa.string())]
)  # fmt: skip


def write_npz_atomic(path: Path, arrays: dict[str, np.ndarray]) -> str:
    """Arrays as an uncompressed .npz (np.load reads it) that appears whole or not at all;
    returns its sha256. Zip entries carry a fixed timestamp (np.savez stamps the clock), so
    the same arrays are the same bytes whoever writes them."""
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as z:
            for name, a in arrays.items():
                info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                with z.open(info, "w", force_zip64=True) as f:
                    np.lib.format.write_array(f, np.ascontiguousarray(a), allow_pickle=False)
        digest = file_sha256(tmp)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"cannot write {path}: {e.strerror or e} (check free space and permissions)") from None  # fmt: skip
    return digest


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of a .npz written by write_npz_atomic (no pickles)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise OutputError(f"cannot read {path}: {e}; score again with --keep-states --overwrite") from None  # fmt: skip


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
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise OutputError(
            f"cannot write {path}: {e.strerror or e} (check free space and permissions)"
        ) from None


class WorkDir:
    """The resumable state of one run under OUT/.gain-curate: run.json (what the run is),
    prepared/ (prepare.py), parts/ (finished work and markers), ranks/ (who is alive)."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.root = out / WORK_DIR
        self.parts = self.root / "parts"
        self.states = self.root / "states"  # part-NNNNN.npz: --keep-states, one per part
        self.ranks = self.root / "ranks"

    def run_info(self) -> dict[str, Any] | None:
        path = self.root / "run.json"
        try:
            return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
        except (OSError, ValueError):
            return None

    def write_run(self, info: dict[str, Any]) -> None:
        write_bytes_atomic(self.root / "run.json", json.dumps(info, indent=1).encode())

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """One process at a time decides what OUT holds (prepares, cleans, resumes). The lock
        file stays when --overwrite clears the rest, so waiters keep holding the same file."""
        import fcntl

        if self.out.exists() and not self.out.is_dir():
            raise OutputError(f"output path {self.out} is a file, not a folder: choose another --out")  # fmt: skip
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            f = open(self.root / "lock", "a+")  # noqa: SIM115
        except OSError as e:
            raise OutputError(f"cannot write {self.root}: {e.strerror or e} (check permissions)") from None  # fmt: skip
        try:
            fcntl.flock(f, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
            f.close()

    def clear(self) -> None:
        """--overwrite: the manifest and all work, but not the lock file."""
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

    def done(self, part: int, config_hash: str, part_key: str | None = None, *,
             states: bool = False) -> bool:  # fmt: skip
        """Finished with this config (and these batches); `states`: its pooled states too."""
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
            and (not states or (m.get("states_sha256") is not None and kept.is_file()
                                and file_sha256(kept) == m["states_sha256"]))
        )  # fmt: skip

    def states_path(self, part: int) -> Path:
        return self.states / f"part-{part:05d}.npz"

    def write_part(self, part: int, table: pa.Table, config_hash: str, stats: dict[str, Any],
                   part_key: str | None = None, states: dict[str, np.ndarray] | None = None) -> None:  # fmt: skip
        """The part's table, its pooled states if kept, then the marker naming both."""
        states_sha = None if states is None else write_npz_atomic(self.states_path(part), states)
        path = self.parts / f"part-{part:05d}.parquet"
        sink = pa.BufferOutputStream()
        try:
            pq.write_table(table.cast(PART_SCHEMA), sink, compression="zstd")
        except OSError as e:
            raise OutputError(
                f"cannot write {path}: {e.strerror or e} (check free space and permissions)"
            ) from None
        data = sink.getvalue().to_pybytes()
        write_bytes_atomic(path, data)
        marker = {
            "config_hash": config_hash,
            "part_key": part_key,
            "rows": table.num_rows,
            "sha256": hashlib.sha256(data).hexdigest(),
            "states_sha256": states_sha,
            "prefill": stats,
        }
        write_bytes_atomic(self.parts / f"part-{part:05d}.done", json.dumps(marker).encode())

    def read_parts(self, part_keys: list[str], config_hash: str, *,
                   states: bool = False) -> tuple[pa.Table, list[dict[str, Any]]]:  # fmt: skip
        n_parts = len(part_keys)
        missing = [p for p in range(n_parts) if not self.done(p, config_hash, part_keys[p], states=states)]  # fmt: skip
        if missing:
            shown = ", ".join(str(p) for p in missing[:8]) + (" ..." if len(missing) > 8 else "")
            raise OutputError(f"{self.out}: {len(missing)} of {n_parts} parts are not finished (parts {shown}): "
                              "run the missing --shard workers (or `gain-curate score` again) before merging")  # fmt: skip
        tables = [pq.read_table(self.parts / f"part-{p:05d}.parquet") for p in range(n_parts)]
        stats = [
            json.loads((self.parts / f"part-{p:05d}.done").read_text())["prefill"]
            for p in range(n_parts)
        ]
        return (pa.concat_tables(tables) if tables else PART_SCHEMA.empty_table()), stats

    def read_states(self, n_parts: int) -> dict[str, np.ndarray]:
        """Every part's pooled states, in part order (read after read_parts checked them)."""
        parts = [read_npz(self.states_path(p)) for p in range(n_parts)]
        if not parts:
            return {}
        return {k: np.concatenate([q[k] for q in parts]) for k in parts[0]}

    # --- who is alive: each rank's state, refreshed while it works -------------------
    def beat(self, rank: int, state: str, **fields: Any) -> None:
        record = {"rank": rank, "state": state, "time": time.time(), "pid": os.getpid(), **fields}
        write_bytes_atomic(self.ranks / f"rank-{rank:05d}.json", json.dumps(record).encode())

    def rank_state(self, rank: int) -> dict[str, Any] | None:
        try:
            return json.loads((self.ranks / f"rank-{rank:05d}.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
