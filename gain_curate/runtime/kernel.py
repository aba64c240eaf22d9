"""Which reduction runs the segment sums, decided per device: the fused Triton kernel on
CUDA when a probe launch works there, the torch reference otherwise (kernels/naive.py is its
spec). scoring/reduction.py runs the one chosen."""

from __future__ import annotations

import functools
import os
import warnings

import torch

from gain_curate.errors import ModelError


def resolve_kernel(kernel: str, device: torch.device) -> str:
    """auto -> triton on CUDA when a tiny launch compiles and runs (probed once), torch
    elsewhere or with one warning line when it does not; `triton` without a usable Triton
    is one clear error."""
    interpret = os.environ.get("TRITON_INTERPRET") == "1"
    if kernel == "auto":
        if device.type != "cuda":
            return "torch"
        problem = triton_problem(str(device))
        if problem is not None:
            warnings.warn(
                f"Triton is not usable here ({problem}); scoring with the torch reduction",
                stacklevel=2,
            )
            return "torch"
        return "triton"
    if kernel == "triton":
        if device.type != "cuda" and not interpret:
            raise ModelError(
                "`kernel` triton needs a CUDA device (or TRITON_INTERPRET=1 to interpret it on CPU)"
            )
        problem = triton_problem(str(device))
        if problem is not None:
            raise ModelError(
                f"`kernel` triton: Triton is not usable here ({problem}); "
                "use `kernel` torch or auto"
            )
    return kernel


@functools.cache
def triton_problem(device: str) -> str | None:
    """None when the segment-sum kernel compiles and gives the reference's answer on
    `device`; else one line saying why (not installed, no compiler, a wrong result)."""
    try:
        import triton  # noqa: F401

        from gain_curate.kernels.naive import naive_segment_unit_sums
        from gain_curate.kernels.segment_sum import segment_unit_sums_fwd

        x = torch.arange(1.0, 13.0, device=device).view(4, 3)
        offsets = torch.tensor([0, 1, 4], device=device)
        got = segment_unit_sums_fwd(x, offsets)
        if not torch.allclose(
            got.cpu(), naive_segment_unit_sums(x.cpu(), offsets.cpu()), atol=1e-5
        ):
            return "its probe launch gave a wrong result"
    except ImportError:
        return "triton is not installed: pip install 'gain-curate[triton]'"
    except Exception as e:  # compiler or driver failures surface as many types
        return (
            f"its probe launch failed: {type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}"
        )
    return None
