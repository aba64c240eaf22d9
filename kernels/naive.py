"""Pure-torch references for the kernels in this folder: the spec, the CPU path, the baseline.

segment_unit_sums: a packed (N, d) matrix of hidden rows is cut into S contiguous segments
by CSR offsets (segment s = rows offsets[s] .. offsets[s+1] - 1); each row is normalised to
unit length in fp32 and the unit rows of a segment are summed:

    out[s] = sum_{offsets[s] <= i < offsets[s+1]} x[i] / max(||x[i]||, eps)
"""

from __future__ import annotations

import torch

# F.normalize's eps: a zero row contributes a zero vector instead of NaN. Post-norm hidden
# states are never exactly zero in practice; the Triton kernel pins the same value.
EPS = 1e-12


def check_segments(x: torch.Tensor, offsets: torch.Tensor) -> None:
    if x.dim() != 2:
        raise ValueError(f"expected packed rows (N, d), got shape {tuple(x.shape)}")
    if offsets.dim() != 1 or offsets.numel() < 1:
        raise ValueError("offsets must be a 1-D tensor of S + 1 row offsets")
    o = offsets.tolist()
    if o[0] != 0 or o[-1] != x.shape[0] or any(a > b for a, b in zip(o, o[1:])):
        raise ValueError(f"offsets must rise from 0 to N = {x.shape[0]}, got {o[:3]}...{o[-3:]}")


def naive_segment_unit_sums(x: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """(N, d) rows, (S + 1,) int offsets -> (S, d) fp32 sums of unit rows per segment."""
    check_segments(x, offsets)
    lengths = offsets.diff().to(x.device)
    seg = torch.repeat_interleave(torch.arange(len(lengths), device=x.device), lengths)
    u = x.float()
    u = u / u.norm(dim=-1, keepdim=True).clamp_min(EPS)
    out = torch.zeros(len(lengths), x.shape[1], dtype=torch.float32, device=x.device)
    # index_add_ accumulates in row order on CPU (deterministic); on CUDA it uses atomics,
    # which is one reason the Triton kernel exists.
    return out.index_add_(0, seg, u)
