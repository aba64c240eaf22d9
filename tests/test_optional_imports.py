"""The trainer adapters without their trainer: `import gain_curate.integrations.trl` where TRL
is missing (as in this venv: `make test` installs no TRL) ends in one ImportError line that
names the extra to install, not a ModuleNotFoundError from deep inside; likewise verl's."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


BLOCK = """
import sys
class Absent:  # first on the import path: `missing` and its submodules are not installed
    def find_spec(self, name, path=None, target=None):
        if name == MISSING or name.startswith(MISSING + "."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Absent())
"""


def import_without(module: str, missing: str) -> subprocess.CompletedProcess[str]:
    """`import module` in a fresh Python where the package `missing` is not installed, as
    Python reports it then (ModuleNotFoundError naming the first missing module)."""
    code = f"MISSING = {missing!r}\n{BLOCK}\nimport {module}\n"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)


def last_line(got: subprocess.CompletedProcess[str]) -> str:
    assert got.returncode != 0
    assert "ModuleNotFoundError" not in got.stderr and "During handling" not in got.stderr
    return got.stderr.strip().splitlines()[-1]


def test_trl_adapter_without_trl_names_the_extra() -> None:
    line = last_line(import_without("gain_curate.integrations.trl", "trl"))
    assert line == (
        "ImportError: gain_curate.integrations.trl needs TRL, which this Python does not have: "
        "pip install 'gain-curate[trl]' (TRL 1.16 or newer)"
    )
    extras = (ROOT / "pyproject.toml").read_text().split("[project.optional-dependencies]")[1]
    pinned = re.search(r"\btrl==(\d+\.\d+)", (ROOT / "Makefile").read_text())
    assert pinned, "the Makefile's integration venv pins trl==X.Y.Z"
    # the extra's lower bound is the TRL the adapter is tested with
    assert f'\ntrl = ["trl>={pinned.group(1)}"]\n' in extras.split("\n[")[0]


@pytest.mark.skipif(importlib.util.find_spec("trl") is not None, reason="TRL is installed here")
def test_trl_adapter_where_trl_is_really_absent() -> None:
    got = subprocess.run(
        [sys.executable, "-c", "import gain_curate.integrations.trl"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert "pip install 'gain-curate[trl]'" in last_line(got)


def test_verl_adapter_without_verl_says_where_it_runs() -> None:
    line = last_line(import_without("gain_curate.integrations.verl", "verl"))
    assert line.startswith("ImportError: gain_curate.integrations.verl runs inside verl's own")
    assert "pip install 'verl>=0.5,<0.10'" in line


def test_a_missing_dependency_of_trl_itself_is_not_called_missing_trl() -> None:
    """Only TRL's own absence becomes the one line: a module TRL imports that is missing
    keeps Python's own error naming it."""
    if importlib.util.find_spec("trl") is None:
        pytest.skip("TRL is not installed here (the integration venv has it)")
    got = import_without("gain_curate.integrations.trl", "trl.trainer")
    assert "ModuleNotFoundError" in got.stderr or "ImportError" in got.stderr
    assert "gain-curate[trl]" not in got.stderr


def test_openrlhf_launcher_without_ray_or_openrlhf_says_so_in_one_line(tmp_path) -> None:
    import importlib.util

    missing = [m for m in ("ray", "openrlhf") if importlib.util.find_spec(m) is None]
    if not missing:
        pytest.skip("ray and openrlhf are both installed here")
    from gain_curate.integrations.openrlhf import main

    with pytest.raises(SystemExit) as e:
        main(["--run", str(tmp_path), "--", "--train.num_episodes", "1"])
    assert (
        str(e.value) == f"error: the OpenRLHF launcher needs {missing[0]}, which this Python lacks"
    )
    assert not any(tmp_path.iterdir())  # nothing written before the refusal


def test_verl_v1_adapter_without_verls_v1_trainer_says_which_verl() -> None:
    line = last_line(import_without("gain_curate.integrations.verl_v1", "verl"))
    assert line.startswith("ImportError: gain_curate.integrations.verl_v1 is verl 0.9's V1"), line
    assert "pip install 'verl>=0.9,<0.10'" in line
