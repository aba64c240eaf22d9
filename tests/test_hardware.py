"""--dtype auto follows the machine's matrix units; benchmark rows name the machine."""

from __future__ import annotations

import pytest
import torch

from gain_curate.runtime import hardware
from gain_curate.runtime.models import resolve_dtype


@pytest.mark.parametrize(
    ("flags", "want"),
    [
        ({"avx2", "fma"}, torch.float32),  # AVX2-only EPYC: bf16 is emulated, slower than fp32
        ({"avx2", "avx512f", "avx512_bf16"}, torch.bfloat16),
        ({"avx512f", "amx_tile", "amx_bf16"}, torch.bfloat16),  # Sapphire Rapids Xeon
        (set(), torch.float32),  # no /proc/cpuinfo (macOS, containers): the safe choice
    ],
)
def test_auto_dtype_is_bf16_only_on_cpus_with_bf16_units(
    monkeypatch, flags: set[str], want: torch.dtype
) -> None:
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset(flags))
    assert resolve_dtype("auto", torch.device("cpu")) == want
    assert resolve_dtype("float32", torch.device("cpu")) == torch.float32  # explicit wins
    assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16


def test_cpu_label_names_model_threads_and_units(monkeypatch) -> None:
    monkeypatch.setattr(
        hardware, "cpu_flags", lambda: frozenset({"avx2", "fma", "amx_bf16", "sse2"})
    )
    monkeypatch.setattr(hardware, "cpu_model", lambda: "Intel(R) Xeon(R) Platinum 8480+")
    assert (
        hardware.cpu_label(2)
        == "Intel(R) Xeon(R) Platinum 8480+, 2 threads, amx_bf16 avx2 fma (bf16 units)"
    )


def test_this_machines_flags_are_read() -> None:
    if not hardware.Path("/proc/cpuinfo").exists():
        pytest.skip("no /proc/cpuinfo on this machine")
    assert hardware.cpu_flags() and hardware.cpu_model()


@pytest.mark.parametrize(
    ("name", "flops", "hbm"),
    [
        ("NVIDIA H100 80GB HBM3", 989e12, 3.35e12),  # SXM5
        ("NVIDIA H100 PCIe", 756e12, 2.0e12),  # not an SXM part: its own, lower peak
        ("NVIDIA H100 NVL", 835e12, 3.9e12),
        ("NVIDIA H200", 989e12, 4.8e12),
        ("NVIDIA A100-SXM4-80GB", 312e12, 2.039e12),
    ],
)
def test_gpu_peaks_by_exact_model(name: str, flops: float, hbm: float) -> None:
    assert hardware.gpu_peaks(name) == (flops, hbm)
    assert hardware.gpu_peaks("NVIDIA GeForce RTX 4090") is None  # unknown: no guessed MFU


def test_the_flags_can_be_stood_in_for(monkeypatch) -> None:
    """GAIN_CURATE_CPU_FLAGS runs the whole suite as on the other CPU kind (AVX2-only)."""
    monkeypatch.setenv("GAIN_CURATE_CPU_FLAGS", "avx2 fma")
    hardware.cpu_flags.cache_clear()
    try:
        assert hardware.cpu_flags() == frozenset({"avx2", "fma"})
        assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    finally:
        hardware.cpu_flags.cache_clear()
