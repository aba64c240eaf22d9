"""Fused segment sums of unit-normalised hidden rows (Triton), deterministic.

    out[s] = sum_{offsets[s] <= i < offsets[s+1]} x[i] / max(||x[i]||_2, eps)

x is read exactly once, in its own dtype (bf16, fp16 or fp32); every row is upcast to fp32
before any arithmetic (the interpreter computes garbage in bf16, and the GPU would lose
precision). Two kernels, no atomics, so results are bit-identical from run to run:

1. `_chunk_sums_kernel`: one program per chunk of at most CHUNK_ROWS rows of ONE segment;
   it walks its rows BLOCK_N at a time, normalises them and writes one fp32 partial row.
   Chunking keeps long segments from serialising on one SM.
2. `_reduce_chunks_kernel`: one program per (segment, block of d); adds that segment's
   partials in chunk order.

The partials are CHUNK_ROWS times smaller than x, so the second pass costs ~1/CHUNK_ROWS of
the first. The whole row must fit one tile (d <= MAX_D): wider models raise.
`naive.naive_segment_unit_sums` is the spec and the CPU path.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from gain_curate.kernels.naive import EPS, check_segments

MAX_D = 16384
CHUNK_ROWS = 64


@triton.jit
def _chunk_sums_kernel(
    x_ptr,  # (N, d) rows, any float dtype
    chunk_lo_ptr,  # (C,) first row of each chunk
    chunk_hi_ptr,  # (C,) one past its last row
    partial_ptr,  # (C, d) fp32 out
    d,
    stride_x,
    eps,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    c = tl.program_id(0).to(tl.int64)
    lo = tl.load(chunk_lo_ptr + c)
    hi = tl.load(chunk_hi_ptr + c)
    o_d = tl.arange(0, BLOCK_D)
    m_d = o_d < d
    acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    for r0 in range(lo, hi, BLOCK_N):
        o_n = r0 + tl.arange(0, BLOCK_N).to(tl.int64)
        m_n = o_n < hi
        p_x = x_ptr + o_n[:, None] * stride_x + o_d[None, :]
        b_x = tl.load(p_x, mask=m_n[:, None] & m_d[None, :], other=0.0).to(tl.float32)
        b_norm = tl.sqrt(tl.sum(b_x * b_x, axis=1))
        b_inv = 1.0 / tl.maximum(b_norm, eps)
        acc += tl.sum(b_x * b_inv[:, None], axis=0)
    tl.store(partial_ptr + c * d + o_d, acc, mask=m_d)


@triton.jit
def _reduce_chunks_kernel(
    partial_ptr,  # (C, d) fp32
    seg_chunk_ptr,  # (S + 1,) chunk offsets per segment
    out_ptr,  # (S, d) fp32
    d,
    BLOCK_D: tl.constexpr,
):
    s = tl.program_id(0).to(tl.int64)
    o_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    m_d = o_d < d
    c_lo = tl.load(seg_chunk_ptr + s)
    c_hi = tl.load(seg_chunk_ptr + s + 1)
    acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    for c in range(c_lo, c_hi):
        acc += tl.load(partial_ptr + c * d + o_d, mask=m_d, other=0.0)
    tl.store(out_ptr + s * d + o_d, acc, mask=m_d)


def chunk_table(offsets: list[int], chunk_rows: int) -> tuple[list[int], list[int], list[int]]:
    """Split each segment into chunks of <= chunk_rows rows: (chunk_lo, chunk_hi, seg_chunk)."""
    lo: list[int] = []
    hi: list[int] = []
    seg_chunk = [0]
    for a, b in zip(offsets, offsets[1:]):
        for r in range(a, b, chunk_rows):
            lo.append(r)
            hi.append(min(r + chunk_rows, b))
        seg_chunk.append(len(lo))
    return lo, hi, seg_chunk


@dataclass(frozen=True)
class SegmentPlan:
    """The launch tables for one set of offsets, on the kernel's device: built once, so a
    benchmark (or a caller reusing offsets) times the kernels alone."""

    chunk_lo: torch.Tensor  # (C,) int64 first row of each chunk
    chunk_hi: torch.Tensor  # (C,) int64 one past its last row
    seg_chunk: torch.Tensor  # (S + 1,) int64 CSR over chunks
    num_segments: int
    rows: int


def plan_segments(
    offsets: torch.Tensor, device: torch.device, *, chunk_rows: int = CHUNK_ROWS
) -> SegmentPlan:
    lo, hi, seg_chunk = chunk_table([int(v) for v in offsets.tolist()], chunk_rows)
    as_dev = lambda v: torch.tensor(v, dtype=torch.int64, device=device)  # noqa: E731
    return SegmentPlan(
        as_dev(lo), as_dev(hi), as_dev(seg_chunk), offsets.numel() - 1, int(offsets[-1])
    )


def segment_unit_sums_fwd(
    x: torch.Tensor, offsets: torch.Tensor, *, chunk_rows: int = CHUNK_ROWS
) -> torch.Tensor:
    """(N, d) rows on the kernel's device, (S + 1,) int offsets -> (S, d) fp32 segment sums."""
    check_segments(x, offsets)
    return segment_unit_sums_launch(x, plan_segments(offsets, x.device, chunk_rows=chunk_rows))


def segment_unit_sums_launch(x: torch.Tensor, plan: SegmentPlan) -> torch.Tensor:
    """The two kernels over a prepared plan: no host work but the allocations."""
    n, d = x.shape
    if d > MAX_D:
        raise ValueError(
            f"segment_unit_sums: d = {d} exceeds the kernel's single-tile limit {MAX_D}"
        )
    if n != plan.rows:
        raise ValueError(f"segment_unit_sums: the plan is for {plan.rows} rows, x has {n}")
    if x.stride(1) != 1:
        x = x.contiguous()
    num_segments = plan.num_segments
    out = torch.zeros(num_segments, d, dtype=torch.float32, device=x.device)
    if n == 0 or num_segments == 0:
        return out
    chunks = plan.chunk_lo.numel()
    partial = torch.empty(chunks, d, dtype=torch.float32, device=x.device)
    block_d = triton.next_power_of_2(d)
    # ~8K fp32 values per row block keeps the tile in registers for every d up to MAX_D.
    block_n = max(1, min(16, 8192 // block_d))
    num_warps = 4 if block_d <= 1024 else 8 if block_d <= 4096 else 16
    reduce_d = min(block_d, 1024)
    # Launch on x's device, not the current one: a worker scoring on cuda:3 must not launch
    # on cuda:0 (Triton uses torch.cuda.current_device()).
    guard = torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()
    with guard:
        _chunk_sums_kernel[(chunks,)](
            x,
            plan.chunk_lo,
            plan.chunk_hi,
            partial,
            d,
            x.stride(0),
            EPS,
            BLOCK_N=block_n,
            BLOCK_D=block_d,
            num_warps=num_warps,
        )
        _reduce_chunks_kernel[(num_segments, triton.cdiv(d, reduce_d))](
            partial, plan.seg_chunk, out, d, BLOCK_D=reduce_d, num_warps=4
        )
    return out
