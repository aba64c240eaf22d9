"""Who scores which parts where: torchrun ranks, one process per GPU, --shard and Ray all cut
the same parts, enough of them for every worker, each worker on its own device. Devices and
the environment are mocked: these run on CPU."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from gain_curate import distributed
from gain_curate.distributed import Launch, launch_plan
from gain_curate.score import Hooks, ScoreConfig, config_dict, part_size, prepare


@pytest.mark.parametrize(
    ("device", "shard", "env", "gpus", "want"),
    [
        ("auto", None, {}, 0, Launch("single", 1, None, "auto")),
        ("auto", None, {}, 1, Launch("single", 1, None, "auto")),
        ("auto", None, {}, 4, Launch("spawn", 4, None, "cuda")),  # CUDA_VISIBLE_DEVICES=0,1,2,3
        ("cuda:1", None, {}, 4, Launch("single", 1, None, "cuda:1")),  # an explicit device: alone
        ("auto", (2, 8), {}, 1, Launch("single", 8, (2, 8), "auto")),  # Slurm array task 2 of 8
        # torchrun --nnodes 2 --nproc-per-node 4: global rank 5 is local rank 1 on node 1
        ("auto", None, {"WORLD_SIZE": "8", "RANK": "5", "LOCAL_RANK": "1"}, 4, Launch("rank", 8, (5, 8), "cuda:1")),
        ("cpu", None, {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}, 0, Launch("rank", 2, (0, 2), "cpu")),
        ("auto", None, {"WORLD_SIZE": "1", "RANK": "0"}, 2, Launch("spawn", 2, None, "cuda")),
    ],
)  # fmt: skip
def test_launch_plan(device: str, shard, env: dict, gpus: int, want: Launch) -> None:
    assert launch_plan(device, shard, env, gpus) == want


def test_a_model_too_large_for_one_gpu_is_one_replica_over_the_node() -> None:
    assert launch_plan("auto", None, {}, 8, fits_one_gpu=False) == Launch("single", 1, None, "cuda")


def test_part_count_follows_the_workers() -> None:
    assert part_size(7_473, 10_000, 1) == 10_000  # alone: one part, as before
    assert part_size(7_473, 10_000, 8) == 935  # 8 GPUs: 8 parts (7 x 935 + 928)
    assert part_size(7_473, 500, 8) == 500  # --part-rows still caps a part
    assert part_size(3, 10_000, 8) == 1


def test_prepare_cuts_one_part_per_worker(tiny_qwen2_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "q.jsonl"
    data.write_text(
        "".join(json.dumps({"question": f"What is {i} squared?"}) + "\n" for i in range(40))
    )
    cfg = ScoreConfig(data=str(data), model=str(tiny_qwen2_dir), out=tmp_path / "o", device="cpu")
    one, four = prepare(cfg, Hooks()), prepare(replace(cfg, workers=4), Hooks())
    assert len(one.parts) == 1 and [len(p) for p in four.parts] == [10, 10, 10, 10]
    assert one.config_hash != four.config_hash  # a run cut differently is never mixed on resume


def test_spawn_gives_each_gpu_its_shard_and_device(monkeypatch, tmp_path: Path) -> None:
    started: list[tuple] = []

    class FakeProcess:
        def __init__(self, target, args):
            self.target, self.args, self.exitcode = target, args, 0

        def start(self):
            started.append(self.args)

        def join(self):
            pass

    class FakeContext:
        Process = FakeProcess

    import multiprocessing

    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(distributed, "_fits_one_gpu", lambda cfg: True)
    monkeypatch.setattr(multiprocessing, "get_context", lambda kind: FakeContext())
    from types import SimpleNamespace

    seen = {}

    def execute(
        cfg, hooks, run_parts, shard=None
    ):  # the shared flow; its parts runner is what differs
        seen["cfg"] = cfg
        run_parts(SimpleNamespace(cfg=cfg, parts=[0, 1]), [0, 1], hooks)
        return "merged"

    monkeypatch.setattr(distributed, "execute", execute)
    cfg = ScoreConfig(data="d.jsonl", model="m", out=tmp_path / "o")
    assert distributed.run_score_local(cfg) == "merged"
    assert seen["cfg"].workers == 2
    assert [(a[1], a[2]) for a in started] == [(0, 2), (1, 2)]
    assert all(a[0]["workers"] == 2 for a in started)

    calls = {}
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.setdefault("set_device", d))
    monkeypatch.setattr(distributed, "run_score", lambda c, shard: calls.update(cfg=c, shard=shard))
    distributed._shard_worker(*started[1])
    assert calls["set_device"] == 1 and calls["shard"] == (1, 2)
    assert calls["cfg"].device == "cuda:1" and calls["cfg"].workers == 2


def test_a_shard_run_cuts_the_parts_every_shard_cuts(monkeypatch, tmp_path: Path) -> None:
    from gain_curate import score

    class Seen(Exception):
        pass

    def fake_prepare(cfg, hooks):
        raise Seen(cfg)

    monkeypatch.setattr(score, "prepare", fake_prepare)
    with pytest.raises(Seen) as e:
        score.run_score(ScoreConfig(data="d", model="m", out=tmp_path), shard=(1, 3))
    cfg = e.value.args[0]
    assert cfg.workers == 3
    assert config_dict(cfg)["workers"] == 3  # recorded in run.json for `merge`
