"""Cutting a run's batch plan into parts: consecutive whole batches of about PART_SECONDS of
estimated work each (or `part_rows` rows), so an interrupted run loses at most the part in
flight and several workers each get a share. The plan itself is made over the WHOLE input
first (scoring.batching), so the cut never changes a score.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gain_curate.runtime.resolve import Runtime

if TYPE_CHECKING:
    from gain_curate.inputs.conversation import Segments
    from gain_curate.scoring.batching import Batch, BatchPlan
    from gain_curate.scoring.config import ScoreConfig

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


def plan_parts(
    cfg: ScoreConfig,
    runtime: Runtime,
    segments: dict[int, Segments],
    dims: Dims,
    workers: int,
) -> tuple[BatchPlan, list[tuple[int, int]]]:
    """The batch plan of the WHOLE input under the runtime's token budget, and its parts."""
    from gain_curate.scoring.batching import plan_batches

    plan = plan_batches(
        segments,
        token_budget=runtime.token_budget,
        share_prefix=cfg.share_prefix,
        device_type=runtime.device,
    )
    seconds = batch_seconds(
        plan.batches,
        segments,
        len(plan.prefix_ids or ()),
        dims,
        device_flops(runtime, _threads()),
    )
    return plan, cut_parts(plan.batches, seconds, cfg.part_rows, workers)


def _threads() -> int:
    import torch

    return torch.get_num_threads()
