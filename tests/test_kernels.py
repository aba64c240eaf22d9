"""The Triton segment-sum kernel against its torch reference, over odd shapes and dtypes.

Runs under TRITON_INTERPRET=1 on CPU (conftest sets it before triton is imported) and
unchanged on a GPU, where every launch gets CUDA tensors (compiled Triton cannot read host
memory).
"""

from __future__ import annotations

import os

import pytest
import torch

from gain_curate.kernels.naive import naive_segment_unit_sums
from gain_curate.kernels.segment_sum import chunk_table, segment_unit_sums_fwd

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# bf16/fp16 inputs are read as-is and upcast; the reference upcasts the same values, so the
# only difference is fp32 summation order.
TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-5, torch.float16: 1e-5}


def make(
    lengths: list[int], d: int, dtype: torch.dtype, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    n = sum(lengths)
    x = (torch.randn(n, d, generator=g) + 0.5 * torch.randn(1, d, generator=g)).to(dtype)
    offsets = torch.tensor(
        [0, *torch.tensor(lengths, dtype=torch.int64).cumsum(0).tolist()], dtype=torch.int64
    )
    return x.to(DEVICE), offsets


@pytest.mark.parametrize("d", [1, 63, 896, 3584])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_matches_reference_on_odd_shapes(d: int, dtype: torch.dtype) -> None:
    lengths = [1, 5, 1, 70, 3, 1] if d >= 896 else [1, 2, 130, 1, 17, 64, 65, 1]
    x, offsets = make(lengths, d, dtype, seed=d)
    got = segment_unit_sums_fwd(x, offsets)
    want = naive_segment_unit_sums(x, offsets)
    assert got.dtype == torch.float32 and got.shape == (len(lengths), d)
    torch.testing.assert_close(got, want, rtol=TOL[dtype], atol=TOL[dtype] * max(lengths))


def test_many_segments_and_empty_segments() -> None:
    lengths = [(i * 7) % 5 for i in range(300)]  # includes zero-length segments
    x, offsets = make(lengths, 63, torch.float32, seed=3)
    got = segment_unit_sums_fwd(x, offsets, chunk_rows=4)
    torch.testing.assert_close(got, naive_segment_unit_sums(x, offsets), rtol=1e-5, atol=1e-5)
    assert torch.all(got[[i for i, n in enumerate(lengths) if n == 0]] == 0)


def test_empty_input() -> None:
    x = torch.empty(0, 896, device=DEVICE)
    assert segment_unit_sums_fwd(x, torch.zeros(1, dtype=torch.int64)).shape == (0, 896)
    out = segment_unit_sums_fwd(x, torch.zeros(4, dtype=torch.int64))
    assert out.shape == (3, 896) and torch.all(out == 0)


def test_rows_are_unit_normalised_and_zero_rows_are_safe() -> None:
    x, offsets = make([4], 16, torch.float32)
    x = x * torch.tensor([1.0, 1e3, 1e-3, 7.0], device=DEVICE)[:, None]  # scale must not matter
    x[2] = 0  # a zero row adds nothing instead of NaN
    got = segment_unit_sums_fwd(x, offsets)
    u = x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    torch.testing.assert_close(got[0], u.sum(0), rtol=1e-5, atol=1e-5)


def test_deterministic_bit_identical() -> None:
    x, offsets = make([300, 1, 129], 896, torch.bfloat16, seed=5)
    a = segment_unit_sums_fwd(x, offsets, chunk_rows=16)
    b = segment_unit_sums_fwd(x, offsets, chunk_rows=16)
    assert torch.equal(a, b)


def test_chunk_table_covers_every_row_once() -> None:
    lo, hi, seg_chunk = chunk_table([0, 3, 3, 10], 4)
    assert list(zip(lo, hi)) == [(0, 3), (3, 7), (7, 10)]
    assert seg_chunk == [0, 1, 1, 3]


def test_bad_offsets_raise() -> None:
    x = torch.zeros(5, 3, device=DEVICE)
    with pytest.raises(ValueError, match="offsets must rise"):
        segment_unit_sums_fwd(x, torch.tensor([0, 6]))
    with pytest.raises(ValueError, match="packed rows"):
        segment_unit_sums_fwd(torch.zeros(5, device=DEVICE), torch.tensor([0, 5]))


def test_auto_falls_back_to_torch_with_one_warning_when_triton_cannot_launch(monkeypatch) -> None:
    """`--kernel auto` on CUDA probes one tiny launch; a missing compiler is a warning line and
    the torch reduction, never a traceback mid-run. `--kernel triton` then fails in one line."""
    from gain_curate.errors import ModelError
    from gain_curate.runtime import kernel as prefill

    monkeypatch.setattr(
        prefill, "triton_problem", lambda device: "its probe launch failed: RuntimeError: no cc"
    )
    with pytest.warns(UserWarning, match="Triton is not usable here .*no cc.*torch reduction"):
        assert prefill.resolve_kernel("auto", torch.device("cuda")) == "torch"
    with pytest.raises(
        ModelError, match="`kernel` triton: Triton is not usable here .*use `kernel` torch"
    ):
        prefill.resolve_kernel("triton", torch.device("cuda"))
    monkeypatch.setattr(prefill, "triton_problem", lambda device: None)
    assert prefill.resolve_kernel("auto", torch.device("cuda")) == "triton"
    assert prefill.resolve_kernel("auto", torch.device("cpu")) == "torch"


def test_triton_probe_reports_a_missing_triton_in_one_line(monkeypatch) -> None:
    import builtins

    from gain_curate.runtime import kernel as prefill

    real_import = builtins.__import__

    def no_triton(name, *args, **kwargs):
        if name == "triton" or name.startswith("triton."):
            raise ImportError("No module named 'triton'")
        return real_import(name, *args, **kwargs)

    prefill.triton_problem.cache_clear()
    monkeypatch.setattr(builtins, "__import__", no_triton)
    try:
        problem = prefill.triton_problem("cpu-probe-no-triton")
    finally:
        prefill.triton_problem.cache_clear()
    assert problem == "triton is not installed: pip install 'gain-curate[triton]'"


def test_triton_probe_passes_where_the_kernels_run() -> None:
    """The real probe launch, on the device the kernels run on here: compiled on the GPU, or
    interpreted on CPU tensors (conftest sets TRITON_INTERPRET=1 where there is no CUDA).
    Never "cpu" on a CUDA machine without the interpreter: compiled Triton cannot read host
    pointers, so that probe would fail for a reason that says nothing about the kernel."""
    from gain_curate.runtime import kernel as prefill

    interpreted = os.environ.get("TRITON_INTERPRET") == "1"
    device = "cuda" if torch.cuda.is_available() and not interpreted else "cpu"
    if device == "cpu" and not interpreted:
        pytest.skip("no CUDA and TRITON_INTERPRET is not 1: Triton cannot run here")
    assert prefill.triton_problem(device) is None


def test_a_prepared_plan_launches_the_same_sums() -> None:
    """What the kernel benchmark times: launches over a plan built once."""
    from gain_curate.kernels.segment_sum import plan_segments, segment_unit_sums_launch

    x = torch.randn(300, 63, device=DEVICE)
    offsets = torch.tensor([0, 1, 1, 130, 300])
    plan = plan_segments(offsets, x.device)
    want = naive_segment_unit_sums(x.cpu(), offsets)
    for _ in range(2):
        torch.testing.assert_close(
            segment_unit_sums_launch(x, plan).cpu(), want, rtol=1e-5, atol=1e-5
        )
    with pytest.raises(ValueError, match="plan is for 300 rows"):
        segment_unit_sums_launch(x[:10], plan)
