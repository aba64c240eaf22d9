"""Every launcher gives the same bytes: one process, --shard I/N + merge, torchrun ranks
(from the environment, and the real torchrun), Ray with a CPU driver and GPU actors. The
runtime is resolved once and read by every other process; rank 0 names a missing rank.
Devices and Ray are mocked where this CPU machine has none; the rest runs for real."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from gain_curate.errors import GainCurateError, OutputError
from gain_curate.executor import claim, launch, ray_backend, workers
from gain_curate.executor.launch import Launch, PartsDone, launch_plan, run_score
from gain_curate.executor.merge import merge_run
from gain_curate.runtime import resolve as runtime
from gain_curate.scoring.config import ScoreConfig

ROWS = 30


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("dist") / "q.jsonl"
    path.write_text(
        "".join(
            json.dumps(
                {
                    "question": (
                        f"A shop sells {i} pens at {i % 7 + 2} dollars "
                        f"each. What do they cost{'?' * (i % 5 + 1)}"
                    ),
                    "answer": str(i * (i % 7 + 2)),
                }
            )
            + "\n"
            for i in range(ROWS)
        )
    )
    return path


def cfg_for(model: Path, data: Path, out: Path, dtype: str, **kw) -> ScoreConfig:
    # a small budget and part size: many batches, several parts per worker
    return ScoreConfig(
        data=str(data),
        model=str(model),
        out=out,
        device="cpu",
        dtype=dtype,
        token_budget=64,
        part_rows=4,
        **kw,
    )


def shard_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "data").glob("*.parquet"))}


def rank_env(rank: int, world: int = 2, launch_id: str = "job-1") -> dict[str, str]:
    return {
        "RANK": str(rank),
        "WORLD_SIZE": str(world),
        "LOCAL_RANK": str(rank),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": "29500",
        "TORCHELASTIC_RUN_ID": launch_id,
    }


def run_ranks(
    cfg: ScoreConfig, world: int = 2, late: float = 0.0, launch_id: str = "job-1"
) -> list:
    """Every rank in its own thread, as torchrun starts them (rank `world-1` `late` s later).
    Threads share what processes do not: Transformers sets torch's process-wide default
    dtype while it loads a model, so two ranks loading at once can leave bfloat16 behind
    for the other (and for every later test); here the loads take turns, as separate
    torchrun processes never race."""
    import torch

    from gain_curate.runtime import truncated

    results: dict[int, object] = {}
    real_load, turns = truncated.load_model, threading.Lock()

    def load_in_turn(*args: object, **kw: object) -> object:
        with turns:
            return real_load(*args, **kw)

    def one(r: int) -> None:
        if r == world - 1:
            time.sleep(late)
        try:
            results[r] = run_score(cfg, env=rank_env(r, world, launch_id))
        except BaseException as e:  # noqa: BLE001 - the test reads it
            results[r] = e

    threads = [threading.Thread(target=one, args=(r,)) for r in range(world)]
    truncated.load_model = load_in_turn
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
    finally:
        truncated.load_model = real_load
    assert torch.get_default_dtype() == torch.float32  # nothing left behind
    return [results[r] for r in range(world)]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_every_launcher_writes_the_same_bytes(
    tiny_qwen2_dir: Path, data: Path, tmp_path: Path, dtype: str
) -> None:
    """The batch plan is made once from the whole input, parts are whole batches, and the
    config hash ignores the parallelism: local = 3 shards + merge = 2 torchrun ranks."""
    local = run_score(cfg_for(tiny_qwen2_dir, data, tmp_path / "local", dtype))
    want = shard_bytes(tmp_path / "local")
    assert local.manifest["runtime"]["dtype"] == dtype and local.manifest["prefill"]["batches"] > 6

    sharded = cfg_for(tiny_qwen2_dir, data, tmp_path / "shards", dtype)
    done = [run_score(sharded, shard=(i, 3), env={}) for i in (2, 0, 1)]
    assert all(isinstance(d, PartsDone) for d in done)
    merged = merge_run(tmp_path / "shards")
    assert shard_bytes(tmp_path / "shards") == want
    assert merged.manifest["config_hash"] == local.manifest["config_hash"]

    ranks = run_ranks(cfg_for(tiny_qwen2_dir, data, tmp_path / "ranks", dtype))
    assert isinstance(ranks[1], PartsDone) and ranks[1].index == 1, ranks
    assert ranks[0].manifest["config_hash"] == local.manifest["config_hash"], ranks
    assert shard_bytes(tmp_path / "ranks") == want


def test_torchrun_overwrite_clears_once_and_a_late_rank_waits(
    tiny_qwen2_dir: Path, data: Path, tmp_path: Path
) -> None:
    """--overwrite under torchrun: rank 0 clears, a rank started late does not clear again
    (it would delete parts others already wrote) and both finish; a new launch clears."""
    cfg = cfg_for(tiny_qwen2_dir, data, tmp_path / "ref", "float32")
    run_score(cfg)
    want = shard_bytes(tmp_path / "ref")
    out = tmp_path / "run"
    shutil.copytree(tmp_path / "ref", out)  # a finished run of the same config is there
    over = replace(cfg, out=out, overwrite=True)
    r0, r1 = run_ranks(over, late=3.0, launch_id="job-2")
    assert isinstance(r1, PartsDone) and r0.manifest["seconds"] > 0, (r0, r1)
    assert shard_bytes(out) == want
    info = json.loads((out / ".gain-curate" / "run.json").read_text())
    assert info["launch"].startswith("torchrun:job-2")
    marker = out / ".gain-curate" / "parts" / "part-00000.done"
    before = marker.stat().st_mtime_ns
    r0, r1 = run_ranks(over, late=0.5, launch_id="job-3")  # the next launch clears again
    assert marker.stat().st_mtime_ns != before and shard_bytes(out) == want


def test_rank_zero_names_a_rank_that_never_came(
    tiny_qwen2_dir: Path, data: Path, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setattr(workers, "RANK_TIMEOUT_S", 2.0)
    cfg = cfg_for(tiny_qwen2_dir, data, tmp_path / "o", "float32")
    with pytest.raises(GainCurateError, match=r"rank 1 never started; its parts \[1, 3\]"):
        run_score(cfg, env=rank_env(0))


def test_overwrite_without_a_launch_id_is_refused_for_shards(tmp_path: Path) -> None:
    cfg = ScoreConfig(data="d.jsonl", model="m", out=tmp_path / "o", overwrite=True)
    with pytest.raises(OutputError, match="GAIN_CURATE_LAUNCH_ID"):
        run_score(cfg, shard=(0, 2), env={})


def test_real_torchrun_two_ranks_exit_zero(
    tiny_qwen2_dir: Path, data: Path, tmp_path: Path
) -> None:
    """The real launcher: `torchrun --nproc-per-node 2 -m gain_curate.cli score ...`; both
    ranks exit 0 (torchrun fails the job otherwise) and rank 0 merges the same bytes."""
    run_score(cfg_for(tiny_qwen2_dir, data, tmp_path / "ref", "float32"))
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        pytest.skip("torchrun is not installed beside this python")
    out = tmp_path / "tr"
    cmd = [
        str(torchrun),
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "gain_curate.cli",
        "score",
        "--model",
        str(tiny_qwen2_dir),
        "--data",
        str(data),
        "--out",
        str(out),
        "--device",
        "cpu",
        "--dtype",
        "float32",
        "--token-budget",
        "64",
        "--part-rows",
        "4",
        "--overwrite",
        "--json",
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert shard_bytes(out) == shard_bytes(tmp_path / "ref")


@pytest.mark.parametrize(
    ("device", "shard", "env", "gpus", "want"),
    [
        ("auto", None, {}, 0, Launch("single", 1, None, "cpu", "cpu")),
        ("auto", None, {}, 1, Launch("single", 1, None, "cuda:0", "the only GPU")),
        ("auto", None, {}, 4, Launch("spawn", 4, None, "cuda", "one process on each of 4 GPUs")),
        ("cuda:1", None, {}, 4, Launch("single", 1, None, "cuda:1", "--device")),
        # a Slurm array task on a node where it sees every GPU: the shard index picks one
        (
            "auto",
            (6, 8),
            {},
            4,
            Launch("shard", 8, (6, 8), "cuda:2", "shard index 6 of 4 visible GPUs"),
        ),
        # ... srun with one task per GPU sets LOCAL_RANK: that wins over the shard index
        (
            "auto",
            (6, 8),
            {"LOCAL_RANK": "3"},
            4,
            Launch("shard", 8, (6, 8), "cuda:3", "LOCAL_RANK=3"),
        ),
        # ... CUDA_VISIBLE_DEVICES already narrowed it to one GPU
        (
            "auto",
            (6, 8),
            {"CUDA_VISIBLE_DEVICES": "5"},
            1,
            Launch("shard", 8, (6, 8), "cuda:0", "CUDA_VISIBLE_DEVICES=5"),
        ),
        ("cpu", (1, 3), {}, 0, Launch("shard", 3, (1, 3), "cpu", "cpu")),
        # torchrun --nnodes 2 --nproc-per-node 4: global rank 5 is local rank 1 on node 1
        (
            "auto",
            None,
            {"WORLD_SIZE": "8", "RANK": "5", "LOCAL_RANK": "1"},
            4,
            Launch("rank", 8, (5, 8), "cuda:1", "LOCAL_RANK=1"),
        ),
        (
            "cpu",
            None,
            {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"},
            0,
            Launch("rank", 2, (0, 2), "cpu", "cpu"),
        ),
        (
            "auto",
            None,
            {"WORLD_SIZE": "1", "RANK": "0"},
            2,
            Launch("spawn", 2, None, "cuda", "one process on each of 2 GPUs"),
        ),
    ],
)
def test_launch_plan_picks_each_process_its_device(device, shard, env, gpus, want: Launch) -> None:
    assert launch_plan(device, shard, env, gpus) == want


def test_a_model_too_large_for_one_gpu_is_one_replica_over_the_node() -> None:
    got = launch_plan("auto", None, {}, 8, split=True)
    assert (got.kind, got.workers, got.device) == ("single", 1, "cuda")


def test_a_shard_on_a_multi_gpu_node_loads_on_its_own_gpu(monkeypatch, tmp_path: Path) -> None:
    """`--shard 3/4 --device auto` with 4 visible GPUs scores on cuda:3, not cuda:0."""
    seen = {}
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(runtime, "device_kind", lambda device: "cuda")
    monkeypatch.setattr(launch, "device_kind", lambda device: "cuda")

    def fake_open(cfg, plan, env, **kw):
        seen["plan"] = plan
        raise RuntimeError("stop here")

    monkeypatch.setattr(launch, "start_run", fake_open)
    with pytest.raises(RuntimeError, match="stop here"):
        run_score(ScoreConfig(data="d", model="m", out=tmp_path), shard=(3, 4), env={})
    assert seen["plan"].device == "cuda:3"


def _fake_gpu(monkeypatch) -> None:
    """This process sees one H200 (for the Ray GPU task only)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: "NVIDIA H200")
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda d=None: (100 << 30, 141 << 30))
    from gain_curate.runtime import kernel

    monkeypatch.setattr(kernel, "triton_problem", lambda device: None)


def test_ray_cpu_driver_and_gpu_actors_agree_on_one_runtime(
    tiny_qwen2_dir: Path, data: Path, tmp_path: Path, monkeypatch
) -> None:
    """A CPU head node: the runtime is resolved once in a GPU task (cuda, bf16, triton),
    written to run.json, and every actor uses exactly that without resolving anything."""
    actors: list[dict] = []

    class FakeDataset:
        def __init__(self, items):
            self.items = items

        def map_batches(self, cls, fn_constructor_kwargs, batch_size, concurrency, num_gpus):
            assert num_gpus == 1 and concurrency == 2
            self.rows = []
            workers = [cls(**fn_constructor_kwargs) for _ in range(concurrency)]
            for k, item in enumerate(self.items):
                self.rows.append(workers[k % concurrency]({"part": [item["part"]]}))
            return self

        def take_all(self):
            return self.rows

    def remote(num_gpus):
        def wrap(fn):
            def call(*args):
                with pytest.MonkeyPatch.context() as mp:
                    _fake_gpu(mp)
                    return fn(*args)

            return SimpleNamespace(remote=call)

        return wrap

    fake_ray = SimpleNamespace(
        is_initialized=lambda: True,
        cluster_resources=lambda: {"GPU": 2.0, "CPU": 8.0},
        remote=remote,
        get=lambda x: x,
        data=SimpleNamespace(from_items=FakeDataset),
    )
    monkeypatch.setitem(sys.modules, "ray", fake_ray)
    from gain_curate.executor import score

    real_load = score.load_model_for

    def actor_load(prep, device):  # the actor's GPU is this CPU; the runtime is the run's
        actors.append({**prep.runtime.to_dict(), "worker_device": device})
        monkeypatch.setattr(
            runtime, "resolve_runtime", lambda *a, **k: pytest.fail("resolved again")
        )
        return real_load(prep, "cpu")

    monkeypatch.setattr(score, "load_model_for", actor_load)
    cfg = ScoreConfig(data=str(data), model=str(tiny_qwen2_dir), out=tmp_path / "ray", part_rows=4)
    res = ray_backend.run_score_ray(cfg)
    rt = json.loads((tmp_path / "ray" / ".gain-curate" / "run.json").read_text())["runtime"]
    assert (rt["device"], rt["dtype"], rt["kernel"], rt["hardware"]) == (
        "cuda",
        "bfloat16",
        "triton",
        "NVIDIA H200",
    )
    assert len(actors) == 2 and all(a == {**rt, "worker_device": "cuda:0"} for a in actors)
    assert res.manifest["runtime"] == rt and res.manifest["counts"]["scored"] == ROWS


def test_merge_resolves_nothing(
    tiny_qwen2_dir: Path, data: Path, tmp_path: Path, monkeypatch
) -> None:
    """`merge` on a login node whose device resolution differs from the scorers' (here: it
    would pick a GPU) reads the run's runtime instead, so the config hash matches."""
    run_score(cfg_for(tiny_qwen2_dir, data, tmp_path / "ref", "bfloat16"))
    cfg = cfg_for(tiny_qwen2_dir, data, tmp_path / "o", "bfloat16")
    for i in range(2):
        run_score(cfg, shard=(i, 2), env={})
    _fake_gpu(monkeypatch)
    monkeypatch.setattr(runtime, "resolve_runtime", lambda *a, **k: pytest.fail("resolved again"))
    from gain_curate.executor import prepare

    monkeypatch.setattr(prepare, "prepare", lambda *a, **k: pytest.fail("prepared again"))
    merged = merge_run(tmp_path / "o")
    assert merged.manifest["runtime"]["device"] == "cpu"
    assert shard_bytes(tmp_path / "o") == shard_bytes(tmp_path / "ref")


def test_workers_read_the_prepared_run_instead_of_preparing(
    tiny_qwen2_dir: Path, data: Path, tmp_path: Path, monkeypatch
) -> None:
    """Reading, hashing and tokenizing happen once: the second shard reuses them."""
    cfg = cfg_for(tiny_qwen2_dir, data, tmp_path / "o", "float32")
    run_score(cfg, shard=(0, 2), env={})
    from gain_curate.executor import prepared

    monkeypatch.setattr(claim, "prepare", lambda *a, **k: pytest.fail("prepared twice"))
    monkeypatch.setattr(claim, "resolve_runtime", lambda *a, **k: pytest.fail("resolved twice"))
    assert prepared.load_prepared(tmp_path / "o").runtime.dtype == "float32"
    assert isinstance(run_score(cfg, shard=(1, 2), env={}), PartsDone)
    assert merge_run(tmp_path / "o").manifest["counts"]["rows"] == ROWS


def test_a_changed_flag_is_named(tiny_qwen2_dir: Path, data: Path, tmp_path: Path) -> None:
    cfg = cfg_for(tiny_qwen2_dir, data, tmp_path / "o", "float32", limit=20)
    run_score(cfg)
    with pytest.raises(OutputError, match="`limit`: 20 in the run, 25 now"):
        run_score(replace(cfg, limit=25))
