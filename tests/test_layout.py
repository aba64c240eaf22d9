"""`import gain_curate.kernels` works from the source tree alone, whatever the working
directory and however (or whether) the package was installed: Ray workers started in the
repository root import the tree, not the installed mapping (DESIGN.md 3)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# The source tree first on sys.path and every install-time finder removed: what a process
# sees when it imports the checkout directly (a non-editable install run from the repo root).
PROBE = f"""
import sys
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in type(f).__module__.lower()
                    and "editable" not in repr(f).lower()]
sys.path.insert(0, {str(ROOT)!r})
import gain_curate, gain_curate.kernels.naive, gain_curate.kernels.segment_sum
assert gain_curate.__file__.startswith({str(ROOT)!r}), gain_curate.__file__
import importlib.util
assert importlib.util.find_spec("kernels") is None or "gain_curate" not in str(importlib.util.find_spec("kernels").origin)
print("ok")
"""


def test_kernels_import_from_the_source_tree_in_the_repo_root() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_no_top_level_kernels_module_is_installed() -> None:
    out = subprocess.run([sys.executable, "-c", "import importlib.util; print(importlib.util.find_spec('kernels'))"],
                         cwd="/", capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.stdout.strip() == "None" or "site-packages/kernels" in out.stdout, out.stdout
