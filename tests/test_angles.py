"""The O(n d) formula equals the dense O(n^2 d) cosine matrix, and undefined cases are NaN."""

from __future__ import annotations

import math

import pytest
import torch

from gain_curate.kernels.naive import naive_segment_unit_sums
from gain_curate.scoring.angles import angle_scores, naive_angle_concentration


def _scores_from_rows(h_p: torch.Tensor, h_q: torch.Tensor, w: float = 1.0):
    x = torch.cat([h_p, h_q])
    sums = naive_segment_unit_sums(x, torch.tensor([0, len(h_p), len(h_p) + len(h_q)]))
    return angle_scores(sums[1:2], torch.tensor([len(h_q)]), sums[0:1], torch.tensor([len(h_p)]), w)


@pytest.mark.parametrize("p,q,d", [(1, 2, 1), (5, 7, 63), (30, 2, 896), (3, 40, 17)])
def test_formula_equals_dense_cosine_matrix(p: int, q: int, d: int) -> None:
    g = torch.Generator().manual_seed(p * 1000 + q * 10 + d)
    # a shared offset makes the cosines large, as real hidden states are
    offset = torch.randn(d, generator=g)
    h_p = torch.randn(p, d, generator=g) + offset
    h_q = torch.randn(q, d, generator=g) * 3 + offset
    a = _scores_from_rows(h_p, h_q, w=8.0)
    intra, inter = naive_angle_concentration(h_q, h_p)
    assert a.c_intra.item() == pytest.approx(intra, abs=1e-5)
    assert a.c_inter.item() == pytest.approx(inter, abs=1e-5)
    assert a.score.item() == pytest.approx(intra + 8.0 * inter, abs=1e-4)


def test_identical_rows_have_concentration_one() -> None:
    h = torch.randn(1, 16).repeat(6, 1) * torch.arange(1, 7).unsqueeze(1)  # same direction
    a = _scores_from_rows(h[:2], h[2:])
    assert a.c_intra.item() == pytest.approx(1.0, abs=1e-6)
    assert a.c_inter.item() == pytest.approx(1.0, abs=1e-6)


def test_undefined_cases_are_nan() -> None:
    s = torch.ones(3, 4)
    a = angle_scores(s, torch.tensor([1, 2, 2]), s, torch.tensor([3, 0, 3]), 1.0)
    assert math.isnan(a.c_intra[0]) and math.isnan(a.score[0])  # q < 2
    assert not math.isnan(a.c_intra[1]) and math.isnan(a.c_inter[1])  # p = 0
    assert math.isnan(a.score[1])
    assert not math.isnan(a.score[2])


def test_non_finite_rows_give_non_finite_scores() -> None:
    h_q = torch.randn(4, 8)
    h_q[1, 3] = float("inf")
    a = _scores_from_rows(torch.randn(2, 8), h_q)
    assert not math.isfinite(a.score.item())


def test_segment_sums_are_sums_of_unit_rows() -> None:
    x = torch.randn(10, 5, dtype=torch.float64)
    offsets = [0, 3, 3, 10]
    out = naive_segment_unit_sums(x, torch.tensor(offsets))
    u = x / x.norm(dim=-1, keepdim=True)
    for s in range(3):
        torch.testing.assert_close(out[s], u[offsets[s] : offsets[s + 1]].sum(0).float())
