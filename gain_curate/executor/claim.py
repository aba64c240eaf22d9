"""Taking OUT for writing a run, under its lock (launch.py's flow, step 2): clear it
(`overwrite`, once per launch), reuse the finished run it holds, resume the prepared one,
or prepare a new one and save it. A torchrun rank > 0 waits for rank 0's run.json instead.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace

from gain_curate import progress
from gain_curate.errors import OutputError
from gain_curate.executor.prepare import ModelConfig, prepare, read_model_config
from gain_curate.executor.prepared import Prepared, load_prepared, save_prepared
from gain_curate.executor.records import Launch, RunInfo
from gain_curate.executor.workdir import WorkDir
from gain_curate.executor.workers import wait_for_leader
from gain_curate.runfolder import store
from gain_curate.runtime.resolve import Runtime, resolve_runtime
from gain_curate.scoring.config import (
    ScoreConfig,
    ScoreResult,
    config_dict,
    config_differences,
    launch_id,
    request_key,
)


@dataclass(frozen=True)
class Resolved:
    """What a new run is prepared with: the model's config and the runtime resolved for it."""

    model: ModelConfig
    runtime: Runtime


def start_run(
    cfg: ScoreConfig,
    plan: Launch,
    env: Mapping[str, str],
    *,
    resolved: Resolved | None = None,
    resolve: Callable[[ModelConfig], Runtime] | None = None,
    footprint: tuple[bool, bool] | None = None,
) -> Prepared | ScoreResult:
    """Take OUT for writing this run: the prepared run to score, or the finished result when
    OUT already holds this very run. Only a leader prepares or clears; a torchrun rank > 0
    waits for rank 0's run.json of this launch. A new run is prepared with `resolved`, else
    with the runtime `resolve(model)` gives (a Ray GPU task, when this process cannot), else
    the one resolved here. A claim that fails removes what it created (`footprint`: what
    existed before the run, WorkDir.discard)."""
    launch = launch_id(env)
    work = WorkDir(cfg.out)
    footprint = footprint or work.footprint()
    if cfg.overwrite and launch is None and plan.kind in ("rank", "shard"):
        raise OutputError(
            f"`overwrite` with {'torchrun ranks' if plan.kind == 'rank' else '`shard`'} "
            f"but no launch id: every process would clear the others' parts; delete {cfg.out} "
            "first, or set GAIN_CURATE_LAUNCH_ID to one value shared by all of them"
        )

    def new_run() -> Resolved:
        if resolved is not None:
            return resolved
        model = read_model_config(cfg)
        if resolve is not None:
            return Resolved(model, resolve(model))
        layer = model.shape.layer
        return Resolved(model, resolve_runtime(cfg, model.config, layer, device=plan.device))

    if not plan.leader:
        prep = wait_for_leader(work, launch, request_key(cfg))
    else:
        with work.lock():
            try:
                prep = _claim(cfg, plan, work, launch, new_run)
            except BaseException:
                work.discard(footprint)
                raise
    if isinstance(prep, ScoreResult):
        return prep
    where = f"{plan.kind} {plan.shard[0]}/{plan.shard[1]}" if plan.shard else plan.kind
    progress.note(
        f"{where} scores on {plan.device} ({plan.why}); runtime {prep.runtime.dtype}, "
        f"kernel {prep.runtime.kernel}, {prep.runtime.token_budget:,} tokens per batch",
        style="dim",
    )
    return prep


def _claim(
    cfg: ScoreConfig,
    plan: Launch,
    work: WorkDir,
    launch: str | None,
    new_run: Callable[[], Resolved],
) -> Prepared | ScoreResult:
    """Under OUT's lock: clear it (`overwrite`, once per launch), reuse the finished run,
    resume the prepared one, or prepare a new one (`new_run` resolves what it needs)."""
    key = request_key(cfg)
    info = work.run_info()
    if cfg.overwrite and not (launch is not None and info is not None and info.launch == launch):
        work.clear()
        info = None
    elif info is not None and (finished := _finished(cfg, info, key)) is not None:
        progress.note(f"{cfg.out} is already complete for this config", style="dim")
        if info.launch != launch:  # torchrun ranks > 0 wait for this launch's stamp
            work.write_run(replace(info, launch=launch))
        return finished
    if info is None and (cfg.out / store.MANIFEST).exists():
        raise OutputError(
            f"{cfg.out} already holds a scored run ({store.MANIFEST}): "
            "pass `overwrite` or choose another `out`"
        )
    if info is not None and info.key == key:  # the same request: resume what was prepared
        prep = load_prepared(cfg.out)
        _check_device(prep, plan)
        if prep.launch != launch:
            prep.launch = launch
            work.write_run(replace(info, launch=launch))
        return prep
    run = new_run()
    prep = prepare(cfg, run.runtime, workers=plan.workers, model=run.model)
    prep.launch = launch
    if info is not None:
        _check_same_run(cfg, info, prep)
        prep.parts = list(info.parts)  # same run: keep its part cut
    save_prepared(prep)
    return prep


def _finished(cfg: ScoreConfig, info: RunInfo, key: str) -> ScoreResult | None:
    """OUT's manifest when OUT holds this very run, finished."""
    if cfg.overwrite or info.key != key or not (cfg.out / store.MANIFEST).is_file():
        return None
    manifest = store.read_manifest(cfg.out)
    if manifest.get("config_hash") != info.config_hash:
        return None
    return ScoreResult(cfg.out, dict(manifest), 0.0, reused=True)


def _check_same_run(cfg: ScoreConfig, info: RunInfo, prep: Prepared) -> None:
    """A request that differs (another key) but prepares the same config hash continues the
    run; anything else is one line naming what differs."""
    if info.config_hash == prep.config_hash:
        return
    diff = config_differences(dict(info.config), config_dict(cfg))
    old, now = asdict(info.runtime), asdict(prep.runtime)
    diff += [
        f"runtime {k}: {old.get(k)} in the run, {now[k]} now"
        for k in ("device", "dtype", "kernel", "token_budget")
        if old.get(k) != now[k]
    ]
    what = "; ".join(diff) or "the input's or the model's content changed"
    raise OutputError(
        f"{cfg.out} holds a run made with another config ({what}): "
        "pass `overwrite` to start over, or choose another `out`"
    )


def _check_device(prep: Prepared, plan: Launch) -> None:
    here = plan.device.split(":")[0]
    if here != prep.runtime.device:
        raise OutputError(
            f"{prep.out} is being scored on {prep.runtime.device} ({prep.runtime.hardware}); "
            f"this process would score on {here}: resume it where it started, or pass `overwrite`"
        )
