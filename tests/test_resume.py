"""Nothing lost, nothing duplicated: a run killed with SIGKILL at random moments, or
interrupted with Ctrl-C (SIGINT to its process group), and then resumed writes the same
bytes as an uninterrupted run, whatever the part size; --shard I/N + merge likewise. A
failed run leaves nothing it created but its finished parts (never a lock)."""

from __future__ import annotations

import json
import os
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


def score_cmd(
    model: Path, data: Path, out: Path, *extra: str, part_rows: int | None = PART_ROWS
) -> list[str]:
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
        *(["--part-rows", str(part_rows)] if part_rows is not None else []),
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


def start(argv: list[str], log: Path) -> subprocess.Popen:
    """In its own process group with SIGINT at its default (a shell that starts a job in the
    background sets it to ignored, and Python would then never see Ctrl-C); stderr to `log`."""
    with log.open("wb") as err:
        return subprocess.Popen(
            argv,
            stdout=subprocess.DEVNULL,
            stderr=err,
            start_new_session=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )


def ctrl_c(proc: subprocess.Popen) -> int:
    """What a terminal's Ctrl-C does: SIGINT to the whole foreground process group."""
    os.killpg(proc.pid, signal.SIGINT)
    return proc.wait(timeout=120)


def wait_for_parts(proc: subprocess.Popen, out: Path, k: int, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while parts_done(out) < k and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, f"the run ended before {k} parts were finished"


def markers(out: Path) -> dict[str, tuple[int, bytes]]:
    """Each finished part's marker: its mtime and bytes (a part scored again changes both)."""
    return {
        p.name: (p.stat().st_mtime_ns, p.read_bytes())
        for p in sorted((out / ".gain-curate" / "parts").glob("*.done"))
    }


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


def test_part_size_changes_neither_the_bytes_nor_the_run(
    tiny_qwen2_dir, data, reference, tmp_path
) -> None:
    """Parts of 20 rows (the reference), of 7, and of the default size (about PART_SECONDS
    of estimated work): the same shards, the same config hash."""
    ref_out, _ = reference
    want = json.loads((ref_out / "gain_manifest.json").read_text())["config_hash"]
    for part_rows in (7, None):
        out = tmp_path / f"parts-{part_rows}"
        argv = score_cmd(tiny_qwen2_dir, data, out, part_rows=part_rows)
        r = subprocess.run(argv, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        assert shard_bytes(out) == shard_bytes(ref_out), part_rows
        manifest = json.loads((out / "gain_manifest.json").read_text())
        assert manifest["config_hash"] == want
        assert not (out / ".gain-curate" / "lock").exists()  # not after a success either


def test_default_parts_hold_about_part_seconds_of_work() -> None:
    """The cut: whole batches, at most PART_SECONDS of estimated work unless one batch alone
    is more, at most a worker's share of the rows; --part-rows alone when given."""
    from gain_curate.executor.parts import PART_SECONDS, cut_parts
    from gain_curate.scoring.batching import Batch

    batches = [Batch(list(range(10 * i, 10 * i + 10)), True) for i in range(40)]
    seconds = [0.3 * PART_SECONDS] * 30 + [1.5 * PART_SECONDS] + [0.1] * 9
    parts = cut_parts(batches, seconds, None)
    assert parts[0] == (0, 3) and (30, 31) in parts and parts[-1] == (31, 40)
    assert [a for a, _ in parts[1:]] == [b for _, b in parts[:-1]]  # consecutive, all batches
    for a, b in parts:
        assert b - a == 1 or sum(seconds[a:b]) <= PART_SECONDS
    assert len(cut_parts(batches, [0.0] * 40, None)) == 1  # a fast device: one part
    assert len(cut_parts(batches, [0.0] * 40, None, workers=8)) == 8  # 50 rows each
    assert cut_parts(batches, seconds, 100) == [(10 * i, 10 * i + 10) for i in range(4)]


def test_ctrl_c_keeps_finished_parts_and_leaves_no_lock(
    tiny_qwen2_dir, data, reference, tmp_path
) -> None:
    """Ctrl-C mid-run: exit 130 with one line, the finished parts kept, no lock; a rerun that
    fails (another config) keeps them too; the resume scores only the rest."""
    from click.testing import CliRunner

    from gain_curate.cli import main

    ref_out, _ = reference
    out, log = tmp_path / "out", tmp_path / "err.log"
    proc = start(score_cmd(tiny_qwen2_dir, data, out), log)
    wait_for_parts(proc, out, 4)
    assert ctrl_c(proc) == 130
    err = log.read_text()
    assert "interrupted" in err and "a rerun resumes" in err and "Traceback" not in err, err
    kept = markers(out)
    assert len(kept) >= 4 and not (out / ".gain-curate" / "lock").exists()
    argv = score_cmd(tiny_qwen2_dir, data, out, "--inter-weight", "8")[3:]
    r = CliRunner().invoke(main, argv)
    assert r.exit_code == 1 and "another config" in r.output
    assert markers(out) == kept and not (out / ".gain-curate" / "lock").exists()
    subprocess.run(score_cmd(tiny_qwen2_dir, data, out), check=True, capture_output=True)
    assert shard_bytes(out) == shard_bytes(ref_out)
    assert {k: v for k, v in markers(out).items() if k in kept} == kept  # not scored again


def test_failed_run_leaves_nothing_it_created(tiny_qwen2_dir, tmp_path) -> None:
    """A run that fails before any part is finished removes what it created: OUT itself, or
    the .gain-curate folder in a folder that was there before (and never a lock)."""
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "no question column here"}\n')
    fresh, existing = tmp_path / "fresh", tmp_path / "existing"
    existing.mkdir()
    for out in (fresh, existing):
        r = subprocess.run(score_cmd(tiny_qwen2_dir, bad, out), capture_output=True, text=True)
        assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert not fresh.exists()
    assert list(existing.iterdir()) == []
    r = subprocess.run(
        score_cmd(tmp_path / "no-such-model", bad, fresh), capture_output=True, text=True
    )
    assert r.returncode != 0 and not fresh.exists(), r.stderr


@pytest.mark.slow
def test_600_rows_killed_then_interrupted_at_70_percent_keep_their_work(
    smollm2_dir, shared_data, tmp_path
) -> None:
    """The real model on 600 GSM8K rows (under 10,000: once a single part, scored from zero
    after any interruption): SIGKILL at about 40%, then Ctrl-C at about 70% of the resumed
    run, then a resume that scores only the rest: well under a full run's time, loading
    included, and the same bytes as an uninterrupted run."""

    def argv(out: Path) -> list[str]:
        return [
            *(sys.executable, "-m", "gain_curate.cli", "score"),
            *("--model", str(smollm2_dir), "--data", str(shared_data / "gsm8k" / "train.jsonl")),
            *("--limit", "600", "--out", str(out), "--device", "cpu", "--json"),
        ]

    t0 = time.monotonic()
    subprocess.run(argv(tmp_path / "full"), check=True, capture_output=True)
    full_s = time.monotonic() - t0
    prefill = json.loads((tmp_path / "full" / "gain_manifest.json").read_text())["prefill"]
    n, per_part = prefill["parts"], prefill["forward_seconds"] / prefill["parts"]
    assert n >= 4, prefill  # about PART_SECONDS each (a busy machine's times vary)
    out, figures = tmp_path / "out", {"full": full_s, "parts": n, "part_s": per_part}
    for label, signum, k in (
        ("killed", signal.SIGKILL, n * 4 // 10),
        ("ctrl-c", None, n * 7 // 10),
    ):
        t0 = time.monotonic()
        proc = start(argv(out), tmp_path / f"{label}.log")
        wait_for_parts(proc, out, max(k, parts_done(out) + 1))
        time.sleep(0.3 * per_part)  # in the middle of the next part
        before = markers(out)
        if signum is None:
            assert ctrl_c(proc) == 130
            assert not (out / ".gain-curate" / "lock").exists()
        else:
            proc.send_signal(signum)
            assert proc.wait() == -signum
        figures[label] = time.monotonic() - t0
        figures[f"{label} parts"] = parts_done(out)
    t0 = time.monotonic()
    subprocess.run(argv(out), check=True, capture_output=True)
    figures["resumed"] = time.monotonic() - t0
    print("600 SmolLM2 rows, wall seconds:", json.dumps(figures))
    assert shard_bytes(out) == shard_bytes(tmp_path / "full")
    assert {k: v for k, v in markers(out).items() if k in before} == before
    assert figures["resumed"] < 0.7 * full_s, figures
