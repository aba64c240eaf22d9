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
from gain_curate.executor.workdir import WorkDir
from gain_curate.runtime.resolve import Runtime
from gain_curate.scoring.config import ScoreConfig, config_dict, config_from_dict

if TYPE_CHECKING:
    import pyarrow as pa

    from gain_curate.inputs.conversation import Segments
    from gain_curate.scoring.batching import Batch

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


# Work per part when --part-rows is not given: an interrupted run loses at most the part in
# flight, whatever the number of rows. Estimated from the batches' FLOPs and a deliberately
# low device rate (below what was measured), so real parts run shorter than this.
PART_SECONDS = 20.0
# Measured with SmolLM2 on the 2-thread EPYC (avx512_bf16): 67e9 per thread in bf16 on a quiet
# machine, 17.6e9 in fp32 with the machine's load at 3-4 (others' jobs).
CPU_FLOPS_PER_THREAD = {"bf16": 40e9, "other": 15e9}
GPU_EFFICIENCY = 0.1  # of the data sheet's dense bf16 peak (fp32: a 16th of it)
UNKNOWN_GPU_FLOPS = 100e12  # a GPU missing from hardware.GPU_PEAKS


@dataclass(frozen=True)
class Dims:
    """The shapes that decide a forward's FLOPs, up to the hooked layer."""

    layers: int  # layers that run: the hooked one's attention included, its MLP not
    hidden: int
    attn: int  # heads x head_dim
    kv: int  # kv heads x head_dim
    inter: int

    @classmethod
    def of(cls, model_config: Any, layer: int) -> Dims:
        text = getattr(model_config, "text_config", None) or model_config
        d, heads = text.hidden_size, text.num_attention_heads
        head_dim = getattr(text, "head_dim", None) or d // heads
        kv = (getattr(text, "num_key_value_heads", None) or heads) * head_dim
        inter = getattr(text, "intermediate_size", None) or 4 * d
        return cls(layer + 1, d, heads * head_dim, kv, inter)


def batch_flops(rows: int, longest: int, context: int, dims: Dims) -> float:
    """One padded (rows, longest) forward that attends to `context` earlier tokens (the
    shared prefix): 2 FLOPs per weight per token, plus QK^T and AV over the causal context."""
    d = dims
    attn_weights = d.hidden * (2 * d.attn + 2 * d.kv)
    per_token = 2 * (d.layers * attn_weights + (d.layers - 1) * 3 * d.hidden * d.inter)
    attention = 4 * d.layers * d.attn * (context + longest / 2)  # per token, causal
    return rows * longest * (per_token + attention)


def device_flops(runtime: Runtime, threads: int) -> float:
    """A low estimate of what the runtime's device sustains (FLOP/s) on these forwards."""
    from gain_curate.runtime.hardware import cpu_has_bf16_units, gpu_peaks

    if runtime.device == "cuda":
        peaks = gpu_peaks(runtime.hardware)
        peak = peaks[0] if peaks else UNKNOWN_GPU_FLOPS
        return GPU_EFFICIENCY * peak / (16 if runtime.dtype == "float32" else 1)
    fast = runtime.dtype == "bfloat16" and cpu_has_bf16_units()
    return max(1, threads) * CPU_FLOPS_PER_THREAD["bf16" if fast else "other"]


def batch_seconds(
    batches: list[Batch],
    segments: dict[int, Segments],
    prefix_len: int,
    dims: Dims,
    rate: float,
) -> list[float]:
    """Estimated seconds of each batch: its rows padded to the longest, the shared prefix
    as context for the rows that run only their question."""
    out = []
    for b in batches:
        lengths = [
            segments[k].q if b.shared and prefix_len else len(segments[k].input_ids) for k in b.rows
        ]
        context = prefix_len if b.shared else 0
        out.append(batch_flops(len(b.rows), max(lengths), context, dims) / rate)
    return out


def cut_parts(
    batches: list[Any],
    seconds: list[float],
    part_rows: int | None,
    workers: int = 1,
) -> list[tuple[int, int]]:
    """Consecutive whole batches: about `part_rows` rows each when given, else at most about
    PART_SECONDS of estimated work each (one batch at least); with several workers, at most
    a worker's share of the rows (8 GPUs on 7,473 prompts: 8 parts, not one and seven idle
    GPUs). The cut never changes a score: batches are planned before it."""
    n = sum(len(b.rows) for b in batches)
    max_rows = part_rows if part_rows is not None else n
    if workers > 1:
        max_rows = max(1, min(max_rows, -(-n // workers)))
    max_seconds = PART_SECONDS if part_rows is None else float("inf")
    parts, start, rows, secs = [], 0, 0, 0.0
    for i, (b, s) in enumerate(zip(batches, seconds)):
        if i > start and secs + s > max_seconds:
            parts.append((start, i))
            start, rows, secs = i, 0, 0.0
        rows, secs = rows + len(b.rows), secs + s
        if rows >= max_rows:
            parts.append((start, i + 1))
            start, rows, secs = i + 1, 0, 0.0
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
            # the ids after the question to the end of the prompt: --keep-states runs them
            "tail": pa.array(
                [tokens[i].tail if i in tokens else None for i in range(n)], pa.list_(pa.int32())
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
    # a run prepared before tails were kept has none: its request key differs from any
    # --keep-states run's (probe layers), so such a run is prepared again before it needs them
    tails = rows["tail"].to_pylist() if "tail" in rows.column_names else [[]] * rows.num_rows
    segments = {k: Segments(ids[k], ps[k], totals[k], tails[k]) for k in sorted(running)}
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
