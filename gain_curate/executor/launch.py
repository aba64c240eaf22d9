"""Who scores which part where, and the one flow every launcher shares (docs/design.md,
"Scale and the runtime").

    run_score(cfg)                 # this process; one process per visible GPU; or one
                                   # torchrun rank / --shard I/N of a Slurm array
    run_score_ray(cfg)             # ray_backend: Ray Data actors, a CPU driver is fine
    gain-curate merge OUT          # merge.merge_run: anywhere, resolves nothing

The flow: decide the launch from the flags and the environment (once); take OUT for the
run (claim.start_run, under OUT's lock: resolve the runtime and prepare ONCE, or reuse what
the run's first process prepared; `overwrite` clears only once per launch); score this
process's parts; merge
(rank 0 waits for the others with a timeout and names the rank whose parts are missing).
Every process reads the runtime and the batch plan from OUT/.gain-curate, so the shards are
the same bytes however many processes took part. Scoring parts, and the waits: `workers`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from gain_curate import progress
from gain_curate.executor.claim import Resolved, start_run
from gain_curate.executor.prepare import read_model_config
from gain_curate.executor.prepared import Prepared, load_prepared
from gain_curate.executor.records import Launch
from gain_curate.executor.workdir import WorkDir
from gain_curate.executor.workers import done, score_parts, spawn_gpu_workers, wait_for_parts
from gain_curate.runtime.resolve import device_kind, resolve_runtime, worker_device
from gain_curate.scoring.config import ScoreConfig, ScoreResult

__all__ = ["Launch", "PartsDone", "launch_plan", "run_score", "start_run"]


@dataclass(frozen=True)
class PartsDone:
    """What a rank or shard that does not merge reports."""

    out: Path
    index: int
    count: int
    device: str
    kind: str


def launch_plan(
    device: str,
    shard: tuple[int, int] | None,
    env: Mapping[str, str],
    gpus: int,
    split: bool | Callable[[], bool] = False,
) -> Launch:
    """Decide once from the flags, the environment and the visible GPUs (torch counts only
    CUDA_VISIBLE_DEVICES). `split`: the model needs the node's GPUs together (a callable is
    asked only where the answer matters: several GPUs and nothing else deciding)."""
    kind = (
        "cuda"
        if device == "auto" and gpus > 0
        else device_kind(device)
        if device != "auto"
        else "cpu"
    )
    explicit = device if device != "auto" else None
    world = int(env.get("WORLD_SIZE", "1") or 1)
    if shard is None and world > 1 and "RANK" in env:
        rank = (int(env["RANK"]), world)
        dev, why = worker_device(kind, env, gpus, rank, explicit)
        return Launch("rank", world, rank, dev, why)
    if shard is not None:
        dev, why = worker_device(kind, env, gpus, shard, explicit)
        return Launch("shard", shard[1], shard, dev, why)
    if device == "auto" and gpus > 1:
        if split() if callable(split) else split:
            return Launch("single", 1, None, "cuda", "one replica over the node's GPUs")
        return Launch("spawn", gpus, None, "cuda", f"one process on each of {gpus} GPUs")
    if kind == "cuda" and explicit is None:
        return Launch("single", 1, None, "cuda:0", "the only GPU")
    return Launch("single", 1, None, explicit or kind, "--device" if explicit else "cpu")


def run_score(
    cfg: ScoreConfig,
    *,
    shard: tuple[int, int] | None = None,
    env: Mapping[str, str] | None = None,
) -> ScoreResult | PartsDone:
    """The local backend: one process; one process per visible GPU; one torchrun rank; or
    one --shard. Returns the merged result, or PartsDone where another process merges.
    Progress and status lines go to gain_curate.progress."""
    import torch

    t0 = time.perf_counter()
    env = os.environ if env is None else env
    gpus = torch.cuda.device_count() if device_kind(cfg.device) == "cuda" else 0
    resolved: list[Resolved] = []

    def split() -> bool:  # several GPUs: the placement decides (spawn per GPU, or one replica)
        model = read_model_config(cfg)
        resolved.append(
            Resolved(model, resolve_runtime(cfg, model.config, model.shape.layer, device="cuda"))
        )
        return resolved[0].runtime.placement == "split"

    plan = launch_plan(cfg.device, shard, env, gpus, split)
    footprint = WorkDir(cfg.out).footprint()
    try:
        opened = start_run(
            cfg, plan, env, resolved=resolved[0] if resolved else None, footprint=footprint
        )
        if isinstance(opened, ScoreResult):
            return opened
        return _score_and_merge(opened, plan, t0)
    except BaseException:  # Ctrl-C, a failed load: what this run made goes, finished parts stay
        if plan.kind in ("single", "spawn"):  # ranks, shards share OUT: only a failed claim
            with (work := WorkDir(cfg.out)).lock():
                work.discard(footprint)
        raise


def _score_and_merge(prep: Prepared, plan: Launch, t0: float) -> ScoreResult | PartsDone:
    """This process's parts (or the spawned GPU workers'), then the merge where it merges."""
    if plan.kind == "spawn":
        spawn_gpu_workers(prep, plan.workers)
    else:
        mine = _mine(prep, plan)
        todo = [p for p in mine if not done(prep, p)]
        if len(todo) < len(mine):
            progress.note(
                f"resuming: {len(mine) - len(todo)} of {len(mine)} parts already finished",
                style="dim",
            )
        rank = plan.shard[0] if plan.kind == "rank" and plan.shard else None
        score_parts(prep, todo, plan.device, rank=rank)
    if plan.shard is not None and (plan.kind == "shard" or plan.shard[0] != 0):
        return PartsDone(prep.out, plan.shard[0], plan.shard[1], plan.device, plan.kind)
    if plan.kind == "rank" and plan.shard is not None:
        wait_for_parts(prep, plan.shard[1])
    from gain_curate.executor.merge import merge

    return merge(load_prepared(prep.out, for_merge=True), t0)


def _mine(prep: Prepared, plan: Launch) -> list[int]:
    if plan.shard is None:
        return list(range(len(prep.parts)))
    i, n = plan.shard
    return [p for p in range(len(prep.parts)) if p % n == i]
