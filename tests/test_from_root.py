"""`python -m gain_curate.cli` started in the repository root, as the README documents it,
scores like the installed `gain-curate` started anywhere else: the same shard bytes.

The repository root is then first on sys.path; Transformers 5.25 and newer import Hugging
Face's `kernels` package while a model module loads, and nothing in the root may stand in
for it (tests/test_layout.py holds the layout)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLI = Path(sys.executable).with_name("gain-curate")


def score(cmd: list[str], model: Path, data: Path, out: Path, cwd: Path) -> dict:
    args = [*cmd, "score", "--model", str(model), "--data", str(data), "--out", str(out)]
    args += ["--device", "cpu", "--part-rows", "8", "--rows-per-shard", "10", "--json"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return json.loads(proc.stdout)


def test_python_m_from_the_repo_root_gives_the_installed_commands_bytes(
    tiny_qwen2_dir: Path, tmp_path: Path
) -> None:
    data = tmp_path / "q.jsonl"
    data.write_text(
        "".join(
            json.dumps({"question": f"What is {i} plus {i * 3}?", "answer": str(4 * i)}) + "\n"
            for i in range(24)
        )
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    score([str(CLI)], tiny_qwen2_dir, data, tmp_path / "a", elsewhere)
    score([sys.executable, "-m", "gain_curate.cli"], tiny_qwen2_dir, data, tmp_path / "b", ROOT)
    shards = sorted(p.name for p in (tmp_path / "a" / "data").glob("*.parquet"))
    assert len(shards) == 3, shards
    for name in shards:
        a = (tmp_path / "a" / "data" / name).read_bytes()
        assert (tmp_path / "b" / "data" / name).read_bytes() == a, name
