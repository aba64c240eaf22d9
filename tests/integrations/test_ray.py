"""--backend ray on CPU (a local Ray with 2 actors) gives the same ranked shards as the
local backend. Runs where Ray is installed (`make test-integrations`)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

ray = pytest.importorskip("ray", reason="ray not installed: run `make test-integrations`")

from gain_curate.executor.launch import run_score  # noqa: E402
from gain_curate.executor.ray_backend import run_score_ray  # noqa: E402
from gain_curate.executor.score import ScoreConfig  # noqa: E402


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_ray_two_cpu_actors_equal_local_backend(
    tiny_qwen2_dir: Path, tmp_path: Path, monkeypatch, dtype: str
) -> None:
    """Started from the repository root, where Ray workers import the source tree."""
    monkeypatch.chdir(Path(__file__).resolve().parents[2])
    data = tmp_path / "q.jsonl"
    data.write_text(
        "".join(
            json.dumps({"question": f"How many legs do {i} spiders and {i + 1} cats have?"}) + "\n"
            for i in range(60)
        )
    )
    base = dict(
        data=str(data),
        model=str(tiny_qwen2_dir),
        part_rows=10,
        device="cpu",
        dtype=dtype,
        token_budget=128,
    )
    run_score(ScoreConfig(**base, out=tmp_path / "local"))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        res = run_score_ray(ScoreConfig(**base, out=tmp_path / "ray"), num_gpus=0, actors=2)
    finally:
        ray.shutdown()
    assert res.manifest["prefill"]["parts"] >= 4 and res.manifest["runtime"]["dtype"] == dtype
    local = pq.read_table(tmp_path / "local" / "data").to_pylist()
    remote = pq.read_table(tmp_path / "ray" / "data").to_pylist()
    assert [r["gain_uid"] for r in remote] == [r["gain_uid"] for r in local]
    for a, b in zip(local, remote):
        assert b["gain_score"] == pytest.approx(a["gain_score"], abs=1e-6)
    shards = sorted(p.name for p in (tmp_path / "local" / "data").glob("*.parquet"))
    for name in shards:  # one batch plan whoever scores it: the same bytes
        assert (tmp_path / "ray" / "data" / name).read_bytes() == (
            tmp_path / "local" / "data" / name
        ).read_bytes()


def test_ray_backend_from_the_repo_root_cli_gives_the_local_bytes(
    tiny_qwen2_dir: Path, tmp_path: Path
) -> None:
    """What a user types in the repository root: `python -m gain_curate.cli score ...
    --backend ray`. Ray's workers start there too, with the root first on sys.path, where
    Transformers 5.25+ imports Hugging Face's `kernels` while the model module loads."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    data = tmp_path / "q.jsonl"
    data.write_text(
        "".join(json.dumps({"question": f"What is {i} times {i + 2}?"}) + "\n" for i in range(30))
    )

    def score(out: Path, *extra: str) -> None:
        cmd = [sys.executable, "-m", "gain_curate.cli", "score", "--model", str(tiny_qwen2_dir)]
        cmd += ["--data", str(data), "--out", str(out), "--device", "cpu", "--part-rows", "10"]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"}
        proc = subprocess.run(
            [*cmd, "--json", *extra], cwd=root, env=env, capture_output=True, text=True, timeout=600
        )
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]

    score(tmp_path / "local")
    score(tmp_path / "ray", "--backend", "ray", "--num-gpus", "0")
    shards = sorted(p.name for p in (tmp_path / "local" / "data").glob("*.parquet"))
    assert shards
    for name in shards:
        assert (tmp_path / "ray" / "data" / name).read_bytes() == (
            tmp_path / "local" / "data" / name
        ).read_bytes(), name
