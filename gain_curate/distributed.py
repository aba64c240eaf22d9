"""Scoring on many devices: Ray Data actors, or every GPU of this machine.

Both run the same per-part scorer as the local backend (`score.score_rows`) and write the
same parts under OUT/.gain-curate, then the driver rank-merges them, so their shards equal
the local backend's. Ray is an optional extra: `pip install 'gain-curate[ray]'`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from gain_curate import store
from gain_curate.errors import GainCurateError
from gain_curate.score import (
    Hooks,
    ScoreConfig,
    ScoreResult,
    config_dict,
    config_from_dict,
    execute,
    prepare,
    run_score,
    score_rows,
)


class _PartScorer:
    """A Ray Data actor: loads the model once, then scores whole parts and writes them."""

    def __init__(self, cfg: dict[str, Any], config_hash: str) -> None:
        from gain_curate.prefill import load_model

        self.prep = prepare(config_from_dict(cfg), Hooks())
        if self.prep.config_hash != config_hash:
            raise GainCurateError(f"worker sees another config (hash {self.prep.config_hash}, driver {config_hash}): "
                                  "the input or model differs on this node")  # fmt: skip
        self.lm = load_model(
            self.prep.ref, dtype=self.prep.dtype, device=self.prep.device, layer=self.prep.cfg.layer
        )
        self.work = store.WorkDir(self.prep.cfg.out)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        rows = []
        for p in batch["part"]:
            table, stats = score_rows(self.prep, self.lm, self.prep.parts[int(p)], Hooks())
            self.work.write_part(int(p), table, self.prep.config_hash, stats)
            rows.append(table.num_rows)
        return {"part": list(batch["part"]), "rows": rows}


def run_score_ray(cfg: ScoreConfig, hooks: Hooks | None = None, *, address: str | None = None,
                  num_gpus: int | None = None, actors: int | None = None) -> ScoreResult:  # fmt: skip
    """Score with Ray Data: `num_gpus` GPU actors (or `actors` CPU actors when num_gpus is
    0 or None and the cluster has no GPU), each holding the model; then merge here."""
    try:
        import ray
    except ImportError:
        raise GainCurateError("--backend ray needs Ray: pip install 'gain-curate[ray]'") from None
    hooks = hooks or Hooks()
    if not ray.is_initialized():
        ray.init(address=address, ignore_reinit_error=True, log_to_driver=False)
    gpus = num_gpus if num_gpus is not None else int(ray.cluster_resources().get("GPU", 0))
    device = "cuda" if gpus > 0 else "cpu"
    n_actors = gpus if gpus > 0 else (actors or 2)
    cfg = replace(cfg, out=cfg.out.resolve(), device=device if cfg.device == "auto" else cfg.device, workers=n_actors)  # fmt: skip

    def on_actors(prep: Any, todo: list[int], hooks: Hooks) -> None:
        hooks.status(f"scoring {len(todo)} parts on {n_actors} Ray actor(s) ({'GPU' if gpus else 'CPU'})")  # fmt: skip
        ds = ray.data.from_items([{"part": p} for p in todo])
        ds = ds.map_batches(
            _PartScorer, fn_constructor_kwargs={"cfg": config_dict(cfg), "config_hash": prep.config_hash},
            batch_size=1, concurrency=n_actors, num_gpus=1 if gpus > 0 else 0,
        )  # fmt: skip
        hooks.status(f"{len(ds.take_all())} parts scored")

    return execute(cfg, hooks, on_actors)


def _shard_worker(cfg: dict[str, Any], gpu: int, n: int) -> None:
    import torch

    torch.cuda.set_device(gpu)  # this process's current device: kernels and allocations land here
    run_score(replace(config_from_dict(cfg), device=f"cuda:{gpu}", workers=n), shard=(gpu, n))


@dataclass(frozen=True)
class Launch:
    """How this process takes part in a run: alone, as one of N spawned GPU workers, or as
    one rank of a launcher (torchrun, Slurm) that started every process itself."""

    kind: str  # "single", "spawn" (this process starts one worker per GPU), "rank"
    workers: int
    shard: tuple[int, int] | None
    device: str


def launch_plan(device: str, shard: tuple[int, int] | None, env: Mapping[str, str], gpus: int,
                fits_one_gpu: bool = True) -> Launch:  # fmt: skip
    """Decide once from the flags, the environment and the visible GPUs (torch counts only
    CUDA_VISIBLE_DEVICES): torchrun's RANK / WORLD_SIZE / LOCAL_RANK make this process one
    shard on cuda:LOCAL_RANK; several visible GPUs with --device auto spawn one worker each."""
    world = int(env.get("WORLD_SIZE", "1") or 1)
    if shard is None and world > 1 and "RANK" in env:
        rank, local = int(env["RANK"]), int(env.get("LOCAL_RANK", env["RANK"]))
        dev = f"cuda:{local % max(gpus, 1)}" if device == "auto" and gpus > 0 else device
        return Launch("rank", world, (rank, world), dev)
    if shard is not None:
        return Launch("single", shard[1], shard, device)
    if device == "auto" and gpus > 1:
        if not fits_one_gpu:  # one replica split over the node's GPUs (placement.py)
            return Launch("single", 1, None, "cuda")
        return Launch("spawn", gpus, None, "cuda")
    return Launch("single", 1, None, device)


def _fits_one_gpu(cfg: ScoreConfig) -> bool:
    import torch

    from gain_curate.models import resolve_dtype, resolve_model
    from gain_curate.placement import fits_one_gpu
    from gain_curate.prefill import read_config, resolve_layer

    config = read_config(resolve_model(cfg.model))
    text = getattr(config, "text_config", None) or config
    layer = resolve_layer(cfg.layer, text.num_hidden_layers)
    return fits_one_gpu(config, layer, resolve_dtype(cfg.dtype, torch.device("cuda")))


def run_score_local(
    cfg: ScoreConfig, hooks: Hooks | None = None, *, shard: tuple[int, int] | None = None
) -> ScoreResult | None:
    """The local backend: one process; one process per visible GPU; or one rank of torchrun."""
    import os

    import torch

    hooks = hooks or Hooks()
    gpus = torch.cuda.device_count()
    plan = launch_plan(
        cfg.device, shard, os.environ, gpus, fits_one_gpu=gpus <= 1 or _fits_one_gpu(cfg)
    )
    cfg = replace(cfg, workers=plan.workers, device=plan.device)
    if plan.kind == "rank":
        if plan.device.startswith("cuda"):
            torch.cuda.set_device(torch.device(plan.device))
        run_score(cfg, hooks, shard=plan.shard)
        if plan.shard[0] != 0:
            return None
        return wait_and_merge(cfg, hooks)  # rank 0 merges once every rank's parts are done
    if plan.kind == "single":
        return run_score(cfg, hooks, shard=plan.shard)
    n = plan.workers

    def on_gpus(prep: Any, todo: list[int], hooks: Hooks) -> None:
        import multiprocessing as mp

        hooks.status(f"scoring {len(prep.parts)} parts on {n} GPUs, one process each")
        ctx = mp.get_context("spawn")
        procs = [ctx.Process(target=_shard_worker, args=(config_dict(replace(cfg, overwrite=False)), i, n))
                 for i in range(n)]  # fmt: skip
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join()
        if any(proc.exitcode != 0 for proc in procs):
            raise GainCurateError(f"a GPU worker failed; rerun the same command to resume the unfinished parts in {cfg.out}")  # fmt: skip

    return execute(cfg, hooks, on_gpus)


def wait_and_merge(cfg: ScoreConfig, hooks: Hooks, poll_s: float = 5.0) -> ScoreResult:
    """Rank 0 of a launcher: wait until every part has its completion marker, then merge."""
    import time

    def wait(prep: Any, todo: list[int], hooks: Hooks) -> None:
        work = store.WorkDir(cfg.out)
        while not all(work.done(p, prep.config_hash) for p in todo):
            time.sleep(poll_s)

    return execute(replace(cfg, overwrite=False), hooks, wait)
