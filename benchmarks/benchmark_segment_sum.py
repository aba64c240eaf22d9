"""Bandwidth of the fused segment-sum kernel against the torch reference (GPU only).

    python benchmarks/benchmark_segment_sum.py [--rows 16384 --d 3584 --seg 128]

Reports time, the fraction of HBM bandwidth the kernel reaches (bytes of x read once +
the small outputs, over the device's peak), and appends a row to benchmarks/RESULTS.md.
On a machine without CUDA it says so and records nothing: the interpreter's timings mean
nothing.
"""

from __future__ import annotations

import argparse
import sys
from datetime import date
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=16384)
    ap.add_argument("--d", type=int, default=3584)
    ap.add_argument("--seg", type=int, default=128, help="rows per segment")
    ap.add_argument("--no-append", action="store_true")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("segment-sum bandwidth: not measured (no CUDA device on this machine)")
        return
    import triton.testing

    from gain_curate.kernels.naive import naive_segment_unit_sums
    from gain_curate.kernels.segment_sum import (
        plan_segments,
        segment_unit_sums_fwd,
        segment_unit_sums_launch,
    )
    from gain_curate.runtime.hardware import gpu_peaks

    x = torch.randn(args.rows, args.d, device="cuda", dtype=torch.bfloat16)
    offsets = torch.arange(0, args.rows + 1, args.seg)
    if offsets[-1] != args.rows:
        offsets = torch.cat([offsets, torch.tensor([args.rows])])
    torch.testing.assert_close(
        segment_unit_sums_fwd(x, offsets), naive_segment_unit_sums(x, offsets), rtol=1e-4, atol=1e-3
    )
    # the kernels alone: launch tables built once, outside the timed call
    plan = plan_segments(offsets, x.device)
    ms_triton = triton.testing.do_bench(lambda: segment_unit_sums_launch(x, plan))
    offsets_dev = offsets.to(x.device)
    ms_torch = triton.testing.do_bench(lambda: naive_segment_unit_sums(x, offsets_dev))
    name = torch.cuda.get_device_name()
    peaks = gpu_peaks(name)
    peak = peaks[1] if peaks else None
    nbytes = x.numel() * x.element_size() + (len(offsets) - 1) * args.d * 4
    frac = f"{nbytes / (ms_triton * 1e-3) / peak:.0%}" if peak else "unknown peak"
    row = (
        f"| {date.today().isoformat()} | {name} | "
        f"segment_sum bf16 {args.rows}x{args.d}, {args.seg}-row segments "
        f"| triton {ms_triton * 1e3:.0f} us | torch {ms_torch * 1e3:.0f} us "
        f"| {ms_torch / ms_triton:.1f}x | HBM {frac} |"
    )
    print(row)
    if not args.no_append:
        with RESULTS.open("a", encoding="utf-8") as f:
            f.write(f"\n{row}\n")


if __name__ == "__main__":
    sys.exit(main())
