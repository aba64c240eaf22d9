"""Who scores which part where, and the one flow every launcher shares (docs/design.md,
"Scale and the runtime").

    run_score(cfg)                 # this process; one process per visible GPU; or one
                                   # torchrun rank / --shard I/N of a Slurm array
    run_score_ray(cfg)             # ray_backend: Ray Data actors, a CPU driver is fine
    gain-curate merge OUT          # merge.merge_run: anywhere, resolves nothing

The flow: decide the launch from the flags and the environment; open the run (under
OUT's lock: resolve the runtime and prepare ONCE, or reuse what the run's first process
prepared; --overwrite clears only once per launch); score this process's parts; merge
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
from typing import Any

from gain_curate.errors import OutputError
from gain_curate.executor.prepare import prepare, read_model_config
from gain_curate.executor.prepared import Prepared, load_prepared, save_prepared
from gain_curate.executor.workdir import WorkDir
from gain_curate.executor.workers import (
    done,
    score_parts,
    spawn_gpu_workers,
    wait_for_leader,
    wait_for_parts,
)
from gain_curate.runfolder import store
from gain_curate.runtime.resolve import Runtime, device_kind, resolve_runtime, worker_device
from gain_curate.scoring.config import (
    Hooks,
    ScoreConfig,
    ScoreResult,
    config_dict,
    config_differences,
    launch_id,
    request_key,
)


@dataclass(frozen=True)
class Launch:
    """How this process takes part: alone (`single`), starting one worker per GPU
    (`spawn`), one rank of torchrun (`rank`), or one `--shard I/N` (`shard`)."""

    kind: str
    workers: int
    shard: tuple[int, int] | None  # (this process's index, how many) for rank and shard
    device: str  # where this process scores ("cuda" alone: the runtime's placement decides)
    why: str = ""  # how the device was chosen, for the console

    @property
    def leader(self) -> bool:
        """Whether this process may prepare and clear OUT (torchrun: rank 0 only)."""
        return self.kind != "rank" or self.shard[0] == 0


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
    split: bool = False,
) -> Launch:
    """Decide once from the flags, the environment and the visible GPUs (torch counts only
    CUDA_VISIBLE_DEVICES). `split`: the model needs the node's GPUs together."""
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
        if split:
            return Launch("single", 1, None, "cuda", "one replica over the node's GPUs")
        return Launch("spawn", gpus, None, "cuda", f"one process on each of {gpus} GPUs")
    if kind == "cuda" and explicit is None:
        return Launch("single", 1, None, "cuda:0", "the only GPU")
    return Launch("single", 1, None, explicit or kind, "--device" if explicit else "cpu")


def run_score(
    cfg: ScoreConfig,
    hooks: Hooks | None = None,
    *,
    shard: tuple[int, int] | None = None,
    env: Mapping[str, str] | None = None,
) -> ScoreResult | PartsDone:
    """The local backend: one process; one process per visible GPU; one torchrun rank; or
    one --shard. Returns the merged result, or PartsDone where another process merges."""
    import torch

    t0 = time.perf_counter()
    hooks = hooks or Hooks()
    env = os.environ if env is None else env
    gpus = torch.cuda.device_count() if device_kind(cfg.device) == "cuda" else 0
    plan = launch_plan(cfg.device, shard, env, gpus)
    footprint = WorkDir(cfg.out).footprint()
    try:
        if plan.kind == "spawn":  # the placement decides: spawn per GPU, or one split replica
            model = read_model_config(cfg)
            runtime = resolve_runtime(cfg, model[1], model[2].layer, device="cuda")
            if runtime.placement == "split":
                plan = launch_plan(cfg.device, shard, env, gpus, split=True)
            opened = start_run(
                cfg, hooks, plan, env, runtime=runtime, model=model, footprint=footprint
            )
        else:
            opened = start_run(cfg, hooks, plan, env, footprint=footprint)
        if isinstance(opened, ScoreResult):
            return opened
        prep = opened
        if plan.kind == "spawn":
            spawn_gpu_workers(prep, plan.workers, hooks)
        else:
            mine = _mine(prep, plan)
            todo = [p for p in mine if not done(prep, p)]
            if len(todo) < len(mine):
                hooks.status(
                    f"resuming: {len(mine) - len(todo)} of {len(mine)} parts already finished"
                )
            rank = plan.shard[0] if plan.kind == "rank" else None
            score_parts(prep, todo, plan.device, hooks, rank=rank)
        if plan.kind == "shard" or (plan.kind == "rank" and plan.shard[0] != 0):
            return PartsDone(cfg.out, plan.shard[0], plan.shard[1], plan.device, plan.kind)
        if plan.kind == "rank":
            wait_for_parts(prep, plan.shard[1], hooks)
        from gain_curate.executor.merge import merge

        return merge(load_prepared(cfg.out, for_merge=True), t0)
    except BaseException:  # Ctrl-C, a failed load: what this run made goes, finished parts stay
        if plan.kind in ("single", "spawn"):  # ranks, shards share OUT: only a failed claim
            with (work := WorkDir(cfg.out)).lock():
                work.discard(footprint)
        raise


def _mine(prep: Prepared, plan: Launch) -> list[int]:
    if plan.shard is None:
        return list(range(len(prep.parts)))
    i, n = plan.shard
    return [p for p in range(len(prep.parts)) if p % n == i]


def start_run(
    cfg: ScoreConfig,
    hooks: Hooks,
    plan: Launch,
    env: Mapping[str, str],
    *,
    runtime: Runtime | None = None,
    model: Any = None,
    resolve: Callable[[Any], Runtime] | None = None,
    footprint: tuple[bool, bool] | None = None,
) -> Prepared | ScoreResult:
    """Take OUT for this run: the prepared run to score, or the finished result when OUT
    already holds this very run. Only a leader prepares or clears; a torchrun rank > 0
    waits for rank 0's run.json of this launch. `resolve(model)` resolves the runtime
    somewhere else (a Ray GPU task) when this process cannot. A claim that fails removes
    what it created (`footprint`: what existed before the run, WorkDir.discard)."""
    launch = launch_id(env)
    work = WorkDir(cfg.out)
    footprint = footprint or work.footprint()
    if cfg.overwrite and launch is None and plan.kind in ("rank", "shard"):
        raise OutputError(
            f"--overwrite with {'torchrun ranks' if plan.kind == 'rank' else '--shard'} "
            f"but no launch id: every process would clear the others' parts; delete {cfg.out} "
            "first, or set GAIN_CURATE_LAUNCH_ID to one value shared by all of them"
        )
    if not plan.leader:
        prep = wait_for_leader(work, launch, request_key(cfg), hooks)
    else:
        with work.lock():
            try:
                prep = _claim(cfg, hooks, plan, work, launch, runtime, model, resolve)
            except BaseException:
                work.discard(footprint)
                raise
    if isinstance(prep, ScoreResult):
        return prep
    where = f"{plan.kind} {plan.shard[0]}/{plan.shard[1]}" if plan.shard else plan.kind
    hooks.status(
        f"{where} scores on {plan.device} ({plan.why}); runtime {prep.runtime.dtype}, "
        f"kernel {prep.runtime.kernel}, {prep.runtime.token_budget:,} tokens per batch"
    )
    return prep


def _finished(cfg: ScoreConfig, key: str) -> ScoreResult | None:
    path = cfg.out / store.MANIFEST
    info = WorkDir(cfg.out).run_info()
    if cfg.overwrite or not path.is_file() or info is None or info.get("key") != key:
        return None
    manifest = store.read_manifest(cfg.out)
    if manifest.get("config_hash") != info.get("config_hash"):
        return None
    return ScoreResult(cfg.out, manifest, 0.0, reused=True)


def _claim(
    cfg: ScoreConfig,
    hooks: Hooks,
    plan: Launch,
    work: WorkDir,
    launch: str | None,
    runtime: Runtime | None,
    model: Any,
    resolve: Any,
) -> Prepared | ScoreResult:
    key = request_key(cfg)
    info = work.run_info()
    cleared_by_this_launch = (
        launch is not None and info is not None and info.get("launch") == launch
    )
    if cfg.overwrite and not cleared_by_this_launch:
        work.clear()
        info = None
    elif (done := _finished(cfg, key)) is not None:
        hooks.status(f"{cfg.out} is already complete for this config")
        if info.get("launch") != launch:  # torchrun ranks > 0 wait for this launch's stamp
            work.write_run({**info, "launch": launch})
        return done
    if info is None and (cfg.out / store.MANIFEST).exists():
        raise OutputError(
            f"{cfg.out} already holds a scored run ({store.MANIFEST}): "
            "pass --overwrite or choose another --out"
        )
    if info is not None and info.get("key") == key and "runtime" in info:
        prep = load_prepared(cfg.out)
        _check_device(prep, plan)
        if prep.launch != launch:
            prep.launch = launch
            work.write_run({**info, "launch": launch})
        return prep
    model = model or read_model_config(cfg)
    if runtime is None:
        runtime = (
            resolve(model)
            if resolve
            else resolve_runtime(cfg, model[1], model[2].layer, device=plan.device)
        )
    prep = prepare(cfg, runtime, hooks, workers=plan.workers, model=model)
    prep.launch = launch
    if info is not None and "config" in info:
        if info.get("config_hash") != prep.config_hash:
            diff = config_differences(info["config"], config_dict(cfg))
            old_rt = info.get("runtime", {})
            diff += [
                f"runtime {k}: {old_rt.get(k)} in the run, {v} now"
                for k, v in runtime.to_dict().items()
                if k in ("device", "dtype", "kernel", "token_budget") and old_rt.get(k) != v
            ]
            what = "; ".join(diff) or "the input's or the model's content changed"
            raise OutputError(
                f"{cfg.out} holds a run made with another config ({what}): "
                "pass --overwrite to start over, or choose another --out"
            )
        prep.parts = [tuple(p) for p in info["parts"]]  # same run: keep its part cut
    save_prepared(prep)
    return prep


def _check_device(prep: Prepared, plan: Launch) -> None:
    here = plan.device.split(":")[0]
    if here != prep.runtime.device:
        raise OutputError(
            f"{prep.out} is being scored on {prep.runtime.device} ({prep.runtime.hardware}); "
            f"this process would score on {here}: resume it where it started, or pass --overwrite"
        )
