"""The workers of a launch: load the model once and score parts one after another (a rank
also reports that it is alive), one spawned process per GPU, and the waits of torchrun
ranks for each other: rank > 0 for rank 0's prepared run, rank 0 for every part.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from gain_curate import progress
from gain_curate.errors import GainCurateError, OutputError
from gain_curate.executor.prepared import Prepared, load_prepared
from gain_curate.executor.workdir import WorkDir
from gain_curate.runfolder import store
from gain_curate.scoring.config import ScoreResult
from gain_curate.scoring.probe_layers import states_key

RANK_TIMEOUT_S = float(os.environ.get("GAIN_CURATE_RANK_TIMEOUT", "900"))
BEAT_EVERY_S = 10.0


def done(prep: Prepared, part: int) -> bool:
    """Finished for this run: same config and batches, and its states when they are kept
    (a run first scored without --keep-states scores its parts again to keep them)."""
    return WorkDir(prep.out).done(
        part,
        prep.config_hash,
        prep.part_key(part),
        states=prep.cfg.keep_states,
        states_key=states_key(prep.cfg, prep.model_info),  # the same probe layers
    )


def wait_for_leader(
    work: WorkDir,
    launch: str | None,
    key: str,
    timeout: float | None = None,
    poll_s: float = 0.5,
) -> Prepared | ScoreResult:
    """A torchrun rank > 0: wait until rank 0 has claimed OUT for this launch (or, with no
    launch id, for this very config), then read what it prepared."""
    timeout = RANK_TIMEOUT_S if timeout is None else timeout
    progress.note(f"waiting for rank 0 to prepare {work.out}", style="dim")
    t0 = time.monotonic()
    while True:
        info = work.run_info()
        if info is not None and (info.launch == launch if launch is not None else info.key == key):
            break
        if time.monotonic() - t0 > timeout:
            raise OutputError(
                f"rank 0 did not prepare {work.out} within {timeout:.0f} s: check rank 0's log "
                "(GAIN_CURATE_RANK_TIMEOUT sets the wait)"
            )
        time.sleep(poll_s)
    if (work.out / store.MANIFEST).is_file():
        m = store.read_manifest(work.out)
        if m.get("config_hash") == info.config_hash:
            return ScoreResult(work.out, dict(m), m.get("seconds") or 0.0)
    return load_prepared(work.out)


def score_parts(prep: Prepared, todo: list[int], device: str, *, rank: int | None = None) -> None:
    """Load the model on `device` once and score the parts one after another (a `scoring`
    bar with prompts/s and tokens/s); a rank also reports that it is alive
    (OUT/.gain-curate/ranks) so rank 0 can name it if it stops."""
    from gain_curate.executor.score import load_model_for, score_part

    work = WorkDir(prep.out)
    last = [0.0]

    def beat(state: str, **fields: Any) -> None:
        if rank is not None:
            work.beat(rank, state, launch=prep.launch, **fields)
            last[0] = time.monotonic()

    beat("loading")
    try:
        if todo:
            progress.note(
                f"loading {prep.model_info.name} ({prep.runtime.dtype}, {device})", style="dim"
            )
            if device.startswith("cuda:"):  # this process's current device: allocations land here
                import torch

                torch.cuda.set_device(torch.device(device))
            lm = load_model_for(prep, device)
            advance = progress.step(
                "scoring",
                sum(len(b.rows) for p in todo for b in prep.part_batches(p)),
                rate="prompts",
            )

            def on_batch(prompts: int, tokens: int) -> None:
                advance(prompts, tokens)
                if rank is not None and time.monotonic() - last[0] > BEAT_EVERY_S:
                    beat("scoring")

            key = states_key(prep.cfg, prep.model_info)
            for p in todo:
                work.write_part(
                    p, score_part(prep, lm, p, on_batch), prep.config_hash, prep.part_key(p), key
                )
                beat("scoring", finished=p)
    except BaseException as e:
        beat("failed", error=" ".join(str(e).split())[:300] or type(e).__name__)
        raise
    beat("done")


def wait_for_parts(
    prep: Prepared, world: int, *, timeout: float | None = None, poll_s: float = 1.0
) -> None:
    """Rank 0: wait until every part is finished. A rank that failed, never started, or
    stopped reporting for `timeout` seconds is named, with the parts it owes."""
    timeout = RANK_TIMEOUT_S if timeout is None else timeout
    work = WorkDir(prep.out)
    t0 = time.monotonic()
    shown = False
    while True:
        missing = [p for p in range(len(prep.parts)) if not done(prep, p)]
        if not missing:
            return
        if not shown:
            progress.note(f"waiting for {len(missing)} parts of the other ranks", style="dim")
            shown = True
        for r in sorted({p % world for p in missing}):
            owed = [p for p in missing if p % world == r]
            state = work.rank_state(r)
            if state is not None and prep.launch is not None and state.launch != prep.launch:
                state = None  # left by an earlier launch
            if state is not None and state.state == "failed":
                raise GainCurateError(
                    f"rank {r} failed ({state.error}); its parts {owed} are missing: "
                    "rerun the same command to resume"
                )
            age = time.time() - state.time if state else time.monotonic() - t0
            if age > timeout:
                what = "never started" if state is None else f"stopped reporting {age:.0f} s ago"
                raise GainCurateError(
                    f"rank {r} {what}; its parts {owed} of {prep.out} are missing: "
                    "check that rank's log, then rerun the same command to resume"
                )
        time.sleep(poll_s)


def _gpu_worker(out: str, gpu: int, n: int) -> None:
    """One spawned process of `spawn`: GPU `gpu` scores parts p with p % n == gpu."""
    import torch

    torch.cuda.set_device(gpu)  # this process's current device: kernels and allocations land here
    prep = load_prepared(Path(out))
    todo = [p for p in range(len(prep.parts)) if p % n == gpu and not done(prep, p)]
    with progress.silenced():  # the launching process shows the run
        score_parts(prep, todo, f"cuda:{gpu}")


def spawn_gpu_workers(prep: Prepared, n: int) -> None:
    import multiprocessing as mp

    progress.note(f"scoring {len(prep.parts)} parts on {n} GPUs, one process each", style="dim")
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_gpu_worker, args=(str(prep.out), i, n)) for i in range(n)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join()
    failed = [i for i, proc in enumerate(procs) if proc.exitcode != 0]
    if failed:
        raise GainCurateError(
            f"GPU worker(s) {failed} failed; rerun the same command to resume "
            f"the unfinished parts in {prep.out}"
        )
