"""Pure-torch references for the kernels in this folder: the spec, the CPU path, the baseline.

segment_unit_sums: rows x[i] of a packed (N, d) hidden-state matrix belong to segment
seg[i]; each row is normalised to unit length in fp32 and the unit rows of a segment are
summed:  out[s] = sum_{i: seg[i] = s} x[i] / max(||x[i]||, eps).
"""

from __future__ import annotations

import torch

# F.normalize's eps: a zero row contributes a zero vector instead of NaN. Post-norm hidden
# states are never exactly zero in practice; the Triton kernel pins the same value.
EPS = 1e-12


def naive_segment_unit_sums(x: torch.Tensor, seg: torch.Tensor, num_segments: int) -> torch.Tensor:
    """(N, d) rows, (N,) int segment ids in [0, num_segments) -> (num_segments, d) fp32 sums."""
    if x.dim() != 2 or seg.shape != x.shape[:1]:
        raise ValueError(
            f"expected x (N, d) and seg (N,), got {tuple(x.shape)} and {tuple(seg.shape)}"
        )
    u = x.float()
    u = u / u.norm(dim=-1, keepdim=True).clamp_min(EPS)
    out = torch.zeros(num_segments, x.shape[1], dtype=torch.float32, device=x.device)
    # index_add_ accumulates rows in index order on CPU (deterministic); on CUDA it uses
    # atomics, which is one reason the Triton kernel exists.
    return out.index_add_(0, seg.long(), u)
