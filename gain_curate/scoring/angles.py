"""Angle concentration (GAIN-RL, arXiv 2506.02281) from per-segment sums of unit vectors.

With u_i = h_i / ||h_i|| and s_X = sum over segment X of u_i (|P| = p, |Q| = q):

    C_intra = (||s_Q||^2 - q) / (q (q - 1))    mean cosine over ordered pairs i != j in Q
    C_inter = (s_Q . s_P) / (q p)              mean cosine between Q and P
    score   = C_intra + w * C_inter

exact, because sum_{i,j} cos(h_i, h_j) = ||sum_i u_i||^2 and cos(h_i, h_i) = 1, and O(n d)
instead of the O(n^2 d) cosine matrix. `naive_angle_concentration` is that dense matrix,
kept as the oracle the tests compare against.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

FORMULA = (
    "C_intra = (||s_Q||^2 - q) / (q (q - 1)); C_inter = (s_Q . s_P) / (q p); "
    "score = C_intra + w C_inter"
)


@dataclass(frozen=True)
class AngleScores:
    """Per-prompt results, float64, (B,) each; NaN where undefined (q < 2, p = 0, non-finite)."""

    c_intra: torch.Tensor
    c_inter: torch.Tensor
    score: torch.Tensor


def angle_scores(
    s_q: torch.Tensor, q: torch.Tensor, s_p: torch.Tensor, p: torch.Tensor, inter_weight: float
) -> AngleScores:
    """(B, d) segment sums and (B,) token counts -> C_intra, C_inter, score in float64."""
    s_q, s_p = s_q.double(), s_p.double()
    q, p = q.double(), p.double()
    nan = torch.full_like(q, float("nan"))
    c_intra = torch.where(q >= 2, (s_q.square().sum(-1) - q) / (q * (q - 1)).clamp_min(1), nan)
    c_inter = torch.where((q >= 1) & (p >= 1), (s_q * s_p).sum(-1) / (q * p).clamp_min(1), nan)
    return AngleScores(c_intra, c_inter, c_intra + inter_weight * c_inter)


def naive_angle_concentration(h_q: torch.Tensor, h_p: torch.Tensor) -> tuple[float, float]:
    """Dense oracle: (q, d) question rows, (p, d) prefix rows -> (C_intra, C_inter).

    Builds the full cosine matrix of the n = p + q rows in float64 and averages its blocks,
    exactly as the paper describes the metric.
    """
    h = torch.cat([h_p, h_q]).double()
    u = h / h.norm(dim=-1, keepdim=True)
    cos = u @ u.T  # (n, n)
    p, q = h_p.shape[0], h_q.shape[0]
    qq = cos[p:, p:]
    off_diag = ~torch.eye(q, dtype=torch.bool)
    return qq[off_diag].mean().item(), cos[p:, :p].mean().item()
