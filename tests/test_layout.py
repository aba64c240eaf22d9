"""The kernels folder sits at the top of the repository and is imported as
`gain_curate.kernels` (gain_curate/kernels links to it), from the source tree alone, whatever
the working directory and however (or whether) the package was installed: Ray workers and
`python -m` started in the repository root put the tree first on sys.path.

It is never a top-level package of its own: `kernels` is the name of Hugging Face's kernel-hub
package, which Transformers 5.25 requires and imports when a model module loads. The folder
has no `__init__.py`, so Python treats it at most as a namespace portion, and an installed
`kernels` package wins over it from any position on sys.path."""

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
assert gain_curate.kernels.naive.__file__.startswith({str(ROOT)!r})
print("ok")
"""


def run(code: str, cwd: Path | str, *path: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code, *path], cwd=cwd, capture_output=True, text=True, timeout=180
    )


def test_kernels_import_from_the_source_tree_in_the_repo_root() -> None:
    out = run(PROBE, ROOT)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_the_repository_has_no_top_level_kernels_module() -> None:
    assert not (ROOT / "kernels" / "__init__.py").exists()
    assert not (ROOT / "kernels.py").exists()
    assert (ROOT / "gain_curate" / "kernels").resolve() == (ROOT / "kernels").resolve()


# The repo root FIRST on sys.path (as `python -m` and Ray workers started there have it), an
# installed package named `kernels` right after it: the installed one must be what `import kernels`
# gets. With a kernels/__init__.py in the root (the layout before), the root's would win.
SHADOW = """
import sys
sys.path.insert(0, sys.argv[1])
sys.path.insert(1, sys.argv[2])
import kernels
print(getattr(kernels, "OWNER", kernels.__file__))
"""


def test_an_installed_kernels_package_wins_over_the_repo_root(tmp_path) -> None:
    site = tmp_path / "site"
    (site / "kernels").mkdir(parents=True)
    (site / "kernels" / "__init__.py").write_text('OWNER = "installed"\n')
    out = run(SHADOW, ROOT, str(ROOT), str(site))
    assert out.returncode == 0 and out.stdout.strip() == "installed", out.stdout + out.stderr


def test_transformers_model_modules_load_in_the_repo_root() -> None:
    """What `python -m gain_curate.cli score` from the repo root does first: Transformers
    (5.25 and newer import Hugging Face's `kernels` here) and this package's kernels."""
    code = (
        "import transformers.models.qwen2.modeling_qwen2, transformers.activations\n"
        "import gain_curate.kernels.naive, importlib.util\n"
        "spec = importlib.util.find_spec('kernels')\n"
        "print(spec.origin if spec and spec.origin else 'none')\n"
    )
    out = run(code, ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    assert not out.stdout.strip().startswith(str(ROOT / "kernels")), out.stdout


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
    out = run(INSTALLED, "/")
    assert out.returncode == 0, out.stderr[-2000:]
    info = json.loads(out.stdout)
    assert "gain_curate" in info["tops"], info  # the probe saw this package's install
    assert "kernels" not in info["tops"], info
    assert info["kernels"] is None or not info["kernels"].startswith(str(ROOT / "kernels")), info
