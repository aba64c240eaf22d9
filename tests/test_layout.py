"""`import gain_curate.kernels` works from the source tree alone, whatever the working
directory and however (or whether) the package was installed: Ray workers started in the
repository root import the tree, not the installed mapping (DESIGN.md 3)."""

from __future__ import annotations

import json
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
assert (
    importlib.util.find_spec("kernels") is None
    or "gain_curate" not in str(importlib.util.find_spec("kernels").origin)
)
print("ok")
"""


def test_kernels_import_from_the_source_tree_in_the_repo_root() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


# What the installed distribution puts at the top level: its files' first folders, and for
# an editable install the names its finder maps; and where `import kernels` would resolve.
INSTALLED = """
import importlib.metadata as md, importlib.util, json
dist = md.distribution("gain-curate")
files = [str(f) for f in dist.files or []]
mapped = []
for f in files:
    if f.endswith("_finder.py"):
        spec = importlib.util.spec_from_file_location("finder", dist.locate_file(f))
        finder = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(finder)
        mapped = sorted(getattr(finder, "MAPPING", {}))
tops = sorted({f.split("/")[0] for f in files if "/" in f} | set(mapped))
spec = importlib.util.find_spec("kernels")
print(json.dumps({"tops": tops, "kernels": spec.origin if spec else None}))
"""


def test_no_top_level_kernels_module_is_installed() -> None:
    """The install maps `gain_curate` (with gain_curate.kernels inside it) and no top-level
    `kernels`, the Hugging Face kernel-hub package's name: another package may own one."""
    out = subprocess.run(
        [sys.executable, "-c", INSTALLED], cwd="/", capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr[-2000:]
    info = json.loads(out.stdout)
    assert "gain_curate" in info["tops"], info  # the probe saw this package's install
    assert "kernels" not in info["tops"], info
    assert info["kernels"] is None or not info["kernels"].startswith(str(ROOT)), info
