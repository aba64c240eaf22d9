"""Nothing lost, nothing duplicated: a run killed with SIGKILL at random moments and then
resumed writes the same bytes as an uninterrupted run; --shard I/N + merge likewise."""

from __future__ import annotations

import json
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROWS, PART_ROWS = 240, 20  # 12 parts


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("resume") / "q.jsonl"
    path.write_text(
        "".join(
            json.dumps(
                {
                    "question": (
                        f"A shop sells {i} pens at {i % 7 + 2} dollars each. What do they cost?"
                    ),
                    "answer": str(i * (i % 7 + 2)),
                }
            )
            + "\n"
            for i in range(ROWS)
        )
    )
    return path


def score_cmd(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "gain_curate.cli",
        "score",
        "--model",
        str(model),
        "--data",
        str(data),
        "--out",
        str(out),
        "--part-rows",
        str(PART_ROWS),
        "--token-budget",
        "256",
        "--rows-per-shard",
        "100",
        "--device",
        "cpu",
        "--json",
        *extra,
    ]


def shard_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "data").glob("*.parquet"))}


@pytest.fixture(scope="module")
def reference(tiny_qwen2_dir: Path, data: Path, tmp_path_factory) -> tuple[Path, float]:
    out = tmp_path_factory.mktemp("ref") / "out"
    t0 = time.monotonic()
    subprocess.run(score_cmd(tiny_qwen2_dir, data, out), check=True, capture_output=True)
    return out, time.monotonic() - t0


def parts_done(out: Path) -> int:
    return (
        len(list((out / ".gain-curate" / "parts").glob("*.done")))
        if (out / ".gain-curate" / "parts").is_dir()
        else 0
    )


def test_sigkill_at_random_points_then_resume_is_byte_identical(
    tiny_qwen2_dir, data, reference, tmp_path
) -> None:
    ref_out, _ = reference
    want = shard_bytes(ref_out)
    assert len(want) == 3
    rng = random.Random(1234)
    states = []
    prefill = json.loads((ref_out / "gain_manifest.json").read_text())["prefill"]
    n_parts = prefill["parts"]
    assert n_parts >= 8  # parts are whole batches of about PART_ROWS rows
    # kill points: during start-up, after k finished parts plus a random delay of up to two
    # parts' time on this machine (a fixed delay outlasts the whole run on a fast one), late
    per_part = prefill["forward_seconds"] / n_parts
    plans = [("startup", rng.uniform(0.2, 1.5)), ("after 4 parts", rng.uniform(0, 2 * per_part))]
    plans.append((f"after {n_parts} parts", rng.uniform(0, 0.5)))  # in the merge or just after
    for i, (label, delay) in enumerate(plans):
        out = tmp_path / f"run{i}"
        proc = subprocess.Popen(
            score_cmd(tiny_qwen2_dir, data, out),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        if label != "startup":
            k = int(label.split()[1])
            deadline = time.monotonic() + 120
            while parts_done(out) < k and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.01)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        states.append((label, parts_done(out), (out / "gain_manifest.json").exists()))
        subprocess.run(score_cmd(tiny_qwen2_dir, data, out), check=True, capture_output=True)
        assert shard_bytes(out) == want, (label, states[-1])
        manifest = json.loads((out / "gain_manifest.json").read_text())
        assert manifest["counts"]["rows"] == ROWS and manifest["prefill"]["parts"] == n_parts
    # the kills really landed mid-run: some with finished parts left behind, some before any
    assert any(0 < done < n_parts for _, done, _ in states), states
    assert any(done == 0 for _, done, _ in states), states


def test_shards_then_merge_equal_the_local_backend(
    tiny_qwen2_dir, data, reference, tmp_path, monkeypatch
) -> None:
    """--shard I/N workers, each its own process, then `merge`: the reference's bytes. Before
    the last shard, merge refuses (naming the parts owed) and a rerun with another config
    refuses (in process: the messages are the point)."""
    from click.testing import CliRunner

    from gain_curate.cli import main

    ref_out, _ = reference
    out = tmp_path / "sharded"
    for i in range(3):
        r = subprocess.run(
            score_cmd(tiny_qwen2_dir, data, out, "--shard", f"{i}/3"),
            capture_output=True,
            text=True,
        )
        assert r.returncode == 0, r.stderr
        assert not (out / "gain_manifest.json").exists()
        if i == 0:
            r = CliRunner().invoke(main, ["merge", str(out)])
            n = len(json.loads((out / ".gain-curate" / "run.json").read_text())["parts"])
            owed = n - len(range(0, n, 3))  # shard 0/3 scored parts 0, 3, 6, ...
            assert r.exit_code == 1 and f"{owed} of {n} parts are not finished" in r.output
            assert "Traceback" not in r.output
            argv = score_cmd(tiny_qwen2_dir, data, out, "--inter-weight", "8")[3:]
            r = CliRunner().invoke(main, argv)
            assert r.exit_code == 1 and "another config" in r.output and "--overwrite" in r.output
    r = subprocess.run(
        [sys.executable, "-m", "gain_curate.cli", "merge", str(out), "--json"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert shard_bytes(out) == shard_bytes(ref_out)
    # merge's steps show their progress: in a log, a line per LOG_EVERY_S seconds (here every
    # advance) with an ETA, then `done`; the time it prints is the manifest's, merge included
    monkeypatch.setattr("gain_curate.progress.LOG_EVERY_S", 0.0)
    r = CliRunner().invoke(main, ["merge", str(out)])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    n = len(json.loads((out / ".gain-curate" / "run.json").read_text())["parts"])
    manifest = json.loads((out / "gain_manifest.json").read_text())
    shards = len(manifest["shards"])
    for step, units in (
        (f"merge: reading {n} parts", n),
        (f"merge: rendering {manifest['counts']['rows']} prompts", 1),  # 10,000 at a time
        (f"merge: writing {shards} shards to {out}", shards),
        ("merge: Spearman interval, 2,000 resamples", 8),  # 250 resamples at a time
    ):
        mine = [ln for ln in lines if ln.startswith(step + ": ")]
        assert len(mine) == units and mine[-1].endswith(" elapsed, done"), (step, r.output)
        assert all(re.search(r", ETA (\?|\d+:\d\d:\d\d)$", ln) for ln in mine[:-1])
    assert re.search(r"merge: Spearman interval.*, ETA \d+:\d\d:\d\d$", r.output, re.M)
    assert "merge time" in r.output and f"{manifest['seconds']:.1f} s" in r.output
    assert shard_bytes(out) == shard_bytes(ref_out)
