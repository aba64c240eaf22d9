"""The declared lower bounds are the tested ones: `make test-lower-bounds` builds a venv with
exactly torch, triton and transformers at pyproject.toml's lower bounds (the GPU machine's
stack) and runs the suite there; this holds the two lists together."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PINNED = ("torch", "triton", "transformers")


def declared() -> dict[str, str]:
    """name -> the `>=` bound of every requirement in pyproject.toml (extras included)."""
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    return dict(re.findall(r'"([A-Za-z0-9_.\-]+)>=([0-9][0-9.]*)', text))


def makefile_pins() -> dict[str, str]:
    text = (ROOT / "Makefile").read_text(encoding="utf-8")
    line = re.search(r"^LOWER_BOUNDS :=(.*)$", text, re.M)
    assert line, "Makefile has no LOWER_BOUNDS line"
    return dict(re.findall(r"([A-Za-z0-9_.\-]+)==([0-9][0-9.]*)", line.group(1)))


@pytest.mark.parametrize("name", PINNED)
def test_the_lower_bounds_venv_pins_what_pyproject_declares(name: str) -> None:
    bound, pin = declared()[name], makefile_pins()[name]
    assert pin.split(".")[:2] == bound.split(".")[:2], (name, bound, pin)


def test_the_lower_bounds_are_at_or_below_the_gpu_machines_stack() -> None:
    gpu = {"torch": (2, 11), "triton": (3, 6), "transformers": (5, 17)}
    for name, top in gpu.items():
        assert tuple(int(v) for v in declared()[name].split(".")[:2]) <= top, name
