"""What the machine can do fast, decided once: bf16 matrix units on the CPU, and the names
every benchmark row carries (CPU model and its matrix units, or the GPU model).

CPUs with bf16 matrix units (Intel AMX-BF16, AVX512-BF16) run a bf16 matmul about 2x faster
than fp32 (measured 2.1x on such a Xeon); elsewhere (AVX2-only EPYC) bf16 is emulated and
slower, so `--dtype auto` is bf16 only where the flags say the units are there.
"""

from __future__ import annotations

import functools
import os
import platform
from pathlib import Path

BF16_UNITS = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo flags, best first
MATRIX_UNITS = (
    "amx_bf16",
    "amx_int8",
    "amx_tile",
    "avx512_bf16",
    "avx512_vnni",
    "avx512f",
    "avx2",
    "fma",
)


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo; `GAIN_CURATE_CPU_FLAGS="avx2 fma"` stands in
    for them (to run the suite as on the project's other CPU kind, e.g. an AVX2-only EPYC)."""
    override = os.environ.get("GAIN_CURATE_CPU_FLAGS")
    if override is not None:
        return frozenset(override.split())
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


@functools.cache
def cpu_model() -> str:
    try:
        for line in (
            Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines()
        ):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_has_bf16_units(flags: frozenset[str] | None = None) -> bool:
    return any(f in (cpu_flags() if flags is None else flags) for f in BF16_UNITS)


def cpu_label(threads: int) -> str:
    """`AMD EPYC, 2 threads, avx2 fma (no bf16 units)`: what a CPU benchmark row names."""
    units = [u for u in MATRIX_UNITS if u in cpu_flags()]
    bf16 = "bf16 units" if cpu_has_bf16_units() else "no bf16 units"
    return f"{cpu_model()}, {threads} threads, {' '.join(units) or 'unknown ISA'} ({bf16})"


def device_label(device: object) -> str:
    """The CPU (model, threads, matrix units) or the GPU (model) a run used."""
    import torch

    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return cpu_label(torch.get_num_threads())


# Dense bf16 tensor-core peak (FLOP/s) and HBM bandwidth (bytes/s) by exact model, from the
# vendors' data sheets; the most specific name first (an "H100 PCIe" is not an SXM part).
GPU_PEAKS: tuple[tuple[str, float, float], ...] = (
    ("H100 PCIe", 756e12, 2.0e12),
    ("H100 NVL", 835e12, 3.9e12),
    ("H100", 989e12, 3.35e12),  # SXM5: "NVIDIA H100 80GB HBM3"
    ("H200", 989e12, 4.8e12),
    ("A100-SXM4-80GB", 312e12, 2.039e12),
    ("A100 80GB PCIe", 312e12, 1.935e12),
    ("A100", 312e12, 1.555e12),  # 40GB, SXM4 or PCIe
)


def gpu_peaks(name: str) -> tuple[float, float] | None:
    """(bf16 FLOP/s, HBM bytes/s) of a GPU by its torch.cuda.get_device_name; None if unknown."""
    return next(((f, b) for key, f, b in GPU_PEAKS if key in name), None)
