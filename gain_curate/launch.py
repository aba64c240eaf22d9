"""Who scores which part where, and the one flow every launcher shares (DESIGN.md 6).

    run_score(cfg)                 # this process; one process per visible GPU; or one
                                   # torchrun rank / --shard I/N of a Slurm array
    run_score_ray(cfg)             # Ray Data actors, a CPU driver is fine
    gain-curate merge OUT          # merge.merge_run: anywhere, resolves nothing

The flow: decide the launch from the flags and the environment; open the run (under
OUT's lock: resolve the runtime and prepare ONCE, or reuse what the run's first process
prepared; --overwrite clears only once per launch); score this process's parts; merge
(rank 0 waits for the others with a timeout and names the rank whose parts are missing).
Every process reads the runtime and the batch plan from OUT/.gain-curate, so the shards are
the same bytes however many processes took part.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from gain_curate import store
from gain_curate.config import (
    Hooks,
    ScoreConfig,
    ScoreResult,
    config_dict,
    config_differences,
    launch_id,
    request_key,
)
from gain_curate.errors import GainCurateError, OutputError
from gain_curate.prepare import Prepared, load_prepared, prepare, read_model_config, save_prepared
from gain_curate.runtime import Runtime, device_kind, resolve_runtime, worker_device

RANK_TIMEOUT_S = float(os.environ.get("GAIN_CURATE_RANK_TIMEOUT", "900"))
BEAT_EVERY_S = 10.0


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


def launch_plan(device: str, shard: tuple[int, int] | None, env: Mapping[str, str], gpus: int,
                split: bool = False) -> Launch:  # fmt: skip
    """Decide once from the flags, the environment and the visible GPUs (torch counts only
    CUDA_VISIBLE_DEVICES). `split`: the model needs the node's GPUs together."""
    kind = "cuda" if device == "auto" and gpus > 0 else device_kind(device) if device != "auto" else "cpu"  # fmt: skip
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


def run_score(cfg: ScoreConfig, hooks: Hooks | None = None, *, shard: tuple[int, int] | None = None,
              env: Mapping[str, str] | None = None) -> ScoreResult | PartsDone:  # fmt: skip
    """The local backend: one process; one process per visible GPU; one torchrun rank; or
    one --shard. Returns the merged result, or PartsDone where another process merges."""
    import torch

    t0 = time.perf_counter()
    hooks = hooks or Hooks()
    env = os.environ if env is None else env
    gpus = torch.cuda.device_count() if device_kind(cfg.device) == "cuda" else 0
    plan = launch_plan(cfg.device, shard, env, gpus)
    if plan.kind == "spawn":  # the placement decides: spawn per GPU, or one split replica
        model = read_model_config(cfg)
        runtime = resolve_runtime(cfg, model[1], model[2].layer, device="cuda")
        if runtime.placement == "split":
            plan = launch_plan(cfg.device, shard, env, gpus, split=True)
        opened = open_run(cfg, hooks, plan, env, runtime=runtime, model=model)
    else:
        opened = open_run(cfg, hooks, plan, env)
    if isinstance(opened, ScoreResult):
        return opened
    prep = opened
    if plan.kind == "spawn":
        _spawn_gpu_workers(prep, plan.workers, hooks)
    else:
        mine = _mine(prep, plan)
        todo = [p for p in mine if not _done(prep, p)]
        if len(todo) < len(mine):
            hooks.status(f"resuming: {len(mine) - len(todo)} of {len(mine)} parts already finished")  # fmt: skip
        rank = plan.shard[0] if plan.kind == "rank" else None
        score_parts(prep, todo, plan.device, hooks, rank=rank)
    if plan.kind == "shard" or (plan.kind == "rank" and plan.shard[0] != 0):
        return PartsDone(cfg.out, plan.shard[0], plan.shard[1], plan.device, plan.kind)
    if plan.kind == "rank":
        wait_for_parts(prep, plan.shard[1], hooks)
    from gain_curate.merge import merge

    return merge(load_prepared(cfg.out, for_merge=True), hooks, time.perf_counter() - t0)


def _mine(prep: Prepared, plan: Launch) -> list[int]:
    if plan.shard is None:
        return list(range(len(prep.parts)))
    i, n = plan.shard
    return [p for p in range(len(prep.parts)) if p % n == i]


def _done(prep: Prepared, part: int) -> bool:
    """Finished for this run: same config and batches, and its states when they are kept
    (a run first scored without --keep-states scores its parts again to keep them)."""
    return store.WorkDir(prep.out).done(part, prep.config_hash, prep.part_key(part),
                                        states=prep.cfg.keep_states)  # fmt: skip


def open_run(cfg: ScoreConfig, hooks: Hooks, plan: Launch, env: Mapping[str, str], *,
             runtime: Runtime | None = None, model: Any = None,
             resolve: Callable[[Any], Runtime] | None = None) -> Prepared | ScoreResult:  # fmt: skip
    """Take OUT for this run: the prepared run to score, or the finished result when OUT
    already holds this very run. Only a leader prepares or clears; a torchrun rank > 0
    waits for rank 0's run.json of this launch. `resolve(model)` resolves the runtime
    somewhere else (a Ray GPU task) when this process cannot."""
    launch = launch_id(env)
    work = store.WorkDir(cfg.out)
    if cfg.overwrite and launch is None and plan.kind in ("rank", "shard"):
        raise OutputError(
            f"--overwrite with {'torchrun ranks' if plan.kind == 'rank' else '--shard'} but no launch id: "
            f"every process would clear the others' parts; delete {cfg.out} first, or set "
            "GAIN_CURATE_LAUNCH_ID to one value shared by all of them"
        )
    if not plan.leader:
        prep = _wait_for_leader(work, launch, request_key(cfg), hooks)
    else:
        with work.lock():
            prep = _claim(cfg, hooks, plan, work, launch, runtime, model, resolve)
    if isinstance(prep, ScoreResult):
        return prep
    where = f"{plan.kind} {plan.shard[0]}/{plan.shard[1]}" if plan.shard else plan.kind
    hooks.status(f"{where} scores on {plan.device} ({plan.why}); runtime {prep.runtime.dtype}, "
                 f"kernel {prep.runtime.kernel}, {prep.runtime.token_budget:,} tokens per batch")  # fmt: skip
    return prep


def _finished(cfg: ScoreConfig, key: str) -> ScoreResult | None:
    path = cfg.out / store.MANIFEST
    info = store.WorkDir(cfg.out).run_info()
    if cfg.overwrite or not path.is_file() or info is None or info.get("key") != key:
        return None
    manifest = store.read_manifest(cfg.out)
    if manifest.get("config_hash") != info.get("config_hash"):
        return None
    return ScoreResult(cfg.out, manifest, manifest.get("seconds", 0.0))


def _claim(cfg: ScoreConfig, hooks: Hooks, plan: Launch, work: store.WorkDir, launch: str | None,
           runtime: Runtime | None, model: Any, resolve: Any) -> Prepared | ScoreResult:  # fmt: skip
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
        raise OutputError(f"{cfg.out} already holds a scored run ({store.MANIFEST}): pass --overwrite or choose another --out")  # fmt: skip
    if info is not None and info.get("key") == key and "runtime" in info:
        prep = load_prepared(cfg.out)
        _check_device(prep, plan)
        if prep.launch != launch:
            prep.launch = launch
            work.write_run({**info, "launch": launch})
        return prep
    model = model or read_model_config(cfg)
    if runtime is None:
        runtime = resolve(model) if resolve else resolve_runtime(cfg, model[1], model[2].layer, device=plan.device)  # fmt: skip
    prep = prepare(cfg, runtime, hooks, workers=plan.workers, model=model)
    prep.launch = launch
    if info is not None and "config" in info:
        if info.get("config_hash") != prep.config_hash:
            diff = config_differences(info["config"], config_dict(cfg))
            old_rt = info.get("runtime", {})
            diff += [f"runtime {k}: {old_rt.get(k)} in the run, {v} now" for k, v in runtime.to_dict().items()
                     if k in ("device", "dtype", "kernel", "token_budget") and old_rt.get(k) != v]  # fmt: skip
            what = "; ".join(diff) or "the input's or the model's content changed"
            raise OutputError(f"{cfg.out} holds a run made with another config ({what}): "
                              "pass --overwrite to start over, or choose another --out")  # fmt: skip
        prep.parts = [tuple(p) for p in info["parts"]]  # same run: keep its part cut
    save_prepared(prep)
    return prep


def _check_device(prep: Prepared, plan: Launch) -> None:
    here = plan.device.split(":")[0]
    if here != prep.runtime.device:
        raise OutputError(f"{prep.out} is being scored on {prep.runtime.device} ({prep.runtime.hardware}); "
                          f"this process would score on {here}: resume it where it started, or pass --overwrite")  # fmt: skip


def _wait_for_leader(work: store.WorkDir, launch: str | None, key: str, hooks: Hooks,
                     timeout: float | None = None, poll_s: float = 0.5) -> Prepared | ScoreResult:  # fmt: skip
    """A torchrun rank > 0: wait until rank 0 has claimed OUT for this launch (or, with no
    launch id, for this very config), then read what it prepared."""
    timeout = RANK_TIMEOUT_S if timeout is None else timeout
    hooks.status(f"waiting for rank 0 to prepare {work.out}")
    t0 = time.monotonic()
    while True:
        info = work.run_info()
        ready = (
            info is not None
            and "runtime" in info
            and (info.get("launch") == launch if launch is not None else info.get("key") == key)
        )
        if ready:
            break
        if time.monotonic() - t0 > timeout:
            raise OutputError(f"rank 0 did not prepare {work.out} within {timeout:.0f} s: check rank 0's log "
                              "(GAIN_CURATE_RANK_TIMEOUT sets the wait)")  # fmt: skip
        time.sleep(poll_s)
    manifest = work.out / store.MANIFEST
    if manifest.is_file():
        m = store.read_manifest(work.out)
        if m.get("config_hash") == info["config_hash"]:
            return ScoreResult(work.out, m, m.get("seconds", 0.0))
    return load_prepared(work.out)


def score_parts(prep: Prepared, todo: list[int], device: str, hooks: Hooks, *,
                rank: int | None = None) -> None:  # fmt: skip
    """Load the model on `device` once and score the parts one after another; a rank also
    reports that it is alive (OUT/.gain-curate/ranks) so rank 0 can name it if it stops."""
    from gain_curate.score import load_model_for, score_part

    work = store.WorkDir(prep.out)
    last = [0.0]

    def beat(state: str, **fields: Any) -> None:
        if rank is not None:
            work.beat(rank, state, launch=prep.launch, **fields)
            last[0] = time.monotonic()

    def on_batch(prompts: int, tokens: int) -> None:
        hooks.batch(prompts, tokens)
        if rank is not None and time.monotonic() - last[0] > BEAT_EVERY_S:
            beat("scoring")

    beat("loading")
    try:
        if todo:
            hooks.status(f"loading {prep.model_info['name']} ({prep.runtime.dtype}, {device})")
            if device.startswith("cuda:"):  # this process's current device: allocations land here
                import torch

                torch.cuda.set_device(torch.device(device))
            lm = load_model_for(prep, device)
            hooks.start(sum(len(b.rows) for p in todo for b in prep.part_batches(p)), 0)
            part_hooks = replace(hooks, batch=on_batch)
            for p in todo:
                table, stats, states = score_part(prep, lm, p, part_hooks)
                work.write_part(p, table, prep.config_hash, stats, prep.part_key(p), states)
                beat("scoring", finished=p)
    except BaseException as e:
        beat("failed", error=" ".join(str(e).split())[:300] or type(e).__name__)
        raise
    beat("done")


def wait_for_parts(prep: Prepared, world: int, hooks: Hooks, *, timeout: float | None = None,
                   poll_s: float = 1.0) -> None:  # fmt: skip
    """Rank 0: wait until every part is finished. A rank that failed, never started, or
    stopped reporting for `timeout` seconds is named, with the parts it owes."""
    timeout = RANK_TIMEOUT_S if timeout is None else timeout
    work = store.WorkDir(prep.out)
    t0 = time.monotonic()
    shown = False
    while True:
        missing = [p for p in range(len(prep.parts)) if not _done(prep, p)]
        if not missing:
            return
        if not shown:
            hooks.status(f"waiting for {len(missing)} parts of the other ranks")
            shown = True
        for r in sorted({p % world for p in missing}):
            owed = [p for p in missing if p % world == r]
            state = work.rank_state(r)
            if state is not None and prep.launch is not None and state.get("launch") != prep.launch:
                state = None  # left by an earlier launch
            if state is not None and state["state"] == "failed":
                raise GainCurateError(f"rank {r} failed ({state.get('error')}); its parts {owed} are missing: "
                                      "rerun the same command to resume")  # fmt: skip
            age = time.time() - state["time"] if state else time.monotonic() - t0
            if age > timeout:
                what = "never started" if state is None else f"stopped reporting {age:.0f} s ago"
                raise GainCurateError(f"rank {r} {what}; its parts {owed} of {prep.out} are missing: "
                                      "check that rank's log, then rerun the same command to resume")  # fmt: skip
        time.sleep(poll_s)


def _gpu_worker(out: str, gpu: int, n: int) -> None:
    """One spawned process of `spawn`: GPU `gpu` scores parts p with p % n == gpu."""
    import torch

    torch.cuda.set_device(gpu)  # this process's current device: kernels and allocations land here
    prep = load_prepared(Path(out))
    todo = [p for p in range(len(prep.parts)) if p % n == gpu and not _done(prep, p)]
    score_parts(prep, todo, f"cuda:{gpu}", Hooks())


def _spawn_gpu_workers(prep: Prepared, n: int, hooks: Hooks) -> None:
    import multiprocessing as mp

    hooks.status(f"scoring {len(prep.parts)} parts on {n} GPUs, one process each")
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_gpu_worker, args=(str(prep.out), i, n)) for i in range(n)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join()
    failed = [i for i, proc in enumerate(procs) if proc.exitcode != 0]
    if failed:
        raise GainCurateError(f"GPU worker(s) {failed} failed; rerun the same command to resume the unfinished parts in {prep.out}")  # fmt: skip


# --- Ray -------------------------------------------------------------------------------


class _PartScorer:
    """A Ray Data actor: reads the prepared run from OUT, loads the model once on its own
    device, then scores whole parts and writes them. Resolves nothing itself."""

    def __init__(self, out: str, config_hash: str) -> None:
        self.prep = load_prepared(Path(out))
        if self.prep.config_hash != config_hash:
            raise GainCurateError(f"worker sees another run in {out} (hash {self.prep.config_hash}, driver {config_hash}): "
                                  "is OUT on a filesystem every node shares?")  # fmt: skip
        self.device = "cuda:0" if self.prep.runtime.device == "cuda" else "cpu"  # Ray picks the GPU
        from gain_curate.score import load_model_for

        self.lm = load_model_for(self.prep, self.device)
        self.work = store.WorkDir(self.prep.out)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        from gain_curate.score import score_part

        rows = []
        for p in batch["part"]:
            table, stats, states = score_part(self.prep, self.lm, int(p), Hooks())
            self.work.write_part(int(p), table, self.prep.config_hash, stats, self.prep.part_key(int(p)), states)  # fmt: skip
            rows.append(table.num_rows)
        return {"part": list(batch["part"]), "rows": rows}


def _resolve_on_gpu(cfg: dict[str, Any]) -> dict[str, Any]:
    """Runs as a Ray task on one GPU: the runtime as a GPU worker sees it."""
    from gain_curate.config import config_from_dict

    c = config_from_dict(cfg)
    _, config, shape = read_model_config(c)
    return resolve_runtime(c, config, shape.layer, device="cuda").to_dict()


def run_score_ray(cfg: ScoreConfig, hooks: Hooks | None = None, *, address: str | None = None,
                  num_gpus: int | None = None, actors: int | None = None) -> ScoreResult:  # fmt: skip
    """Score with Ray Data: `num_gpus` GPU actors (or `actors` CPU actors when the cluster
    has no GPU), each holding the model; then merge here. The driver may be a CPU head
    node: the runtime is resolved once in a GPU task, and the driver prepares the run."""
    try:
        import ray
    except ImportError:
        raise GainCurateError("--backend ray needs Ray: pip install 'gain-curate[ray]'") from None
    hooks = hooks or Hooks()
    if not ray.is_initialized():
        ray.init(address=address, ignore_reinit_error=True, log_to_driver=False)
    gpus = num_gpus if num_gpus is not None else int(ray.cluster_resources().get("GPU", 0))
    n_actors = gpus if gpus > 0 else (actors or 2)
    kind = "cuda" if gpus > 0 else "cpu"
    cfg = replace(cfg, out=cfg.out.resolve(), device=kind if cfg.device == "auto" else cfg.device)
    plan = Launch("single", n_actors, None, kind, f"{n_actors} Ray actor(s)")

    def resolve(model: Any) -> Runtime:
        if kind == "cpu":
            return resolve_runtime(cfg, model[1], model[2].layer, device="cpu")
        task = ray.remote(num_gpus=1)(_resolve_on_gpu)
        return Runtime.from_dict(ray.get(task.remote(config_dict(cfg))))

    t0 = time.perf_counter()
    opened = open_run(cfg, hooks, plan, {}, resolve=resolve)
    if isinstance(opened, ScoreResult):
        return opened
    prep = opened
    todo = [p for p in range(len(prep.parts)) if not _done(prep, p)]
    if todo:
        hooks.status(f"scoring {len(todo)} parts on {n_actors} Ray actor(s) ({kind})")
        ds = ray.data.from_items([{"part": p} for p in todo])
        ds = ds.map_batches(
            _PartScorer, fn_constructor_kwargs={"out": str(prep.out), "config_hash": prep.config_hash},
            batch_size=1, concurrency=n_actors, num_gpus=1 if gpus > 0 else 0,
        )  # fmt: skip
        hooks.status(f"{len(ds.take_all())} parts scored")
    from gain_curate.merge import merge

    return merge(load_prepared(prep.out, for_merge=True), hooks, time.perf_counter() - t0)
