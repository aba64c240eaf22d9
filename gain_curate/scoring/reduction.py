"""The segment sums, by the reduction runtime/kernel.py chose: the fused Triton kernel or the
torch reference (kernels/naive.py is its spec)."""

from __future__ import annotations

import torch


def reduce_rows(x: torch.Tensor, offsets: torch.Tensor, kernel: str) -> torch.Tensor:
    """(N, d) packed rows, (S + 1,) CSR offsets -> (S, d) fp32 unit-vector sums."""
    if kernel == "triton":
        from gain_curate.kernels.segment_sum import segment_unit_sums_fwd

        return segment_unit_sums_fwd(x, offsets)
    from gain_curate.kernels.naive import naive_segment_unit_sums

    return naive_segment_unit_sums(x, offsets)
