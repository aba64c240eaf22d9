"""The Ray backend: Ray Data actors each load the model once and score whole parts; the
driver (a CPU head node is fine) resolves the runtime once in a GPU task, prepares the run
and merges.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from gain_curate import progress
from gain_curate.errors import GainCurateError
from gain_curate.executor.claim import start_run
from gain_curate.executor.prepare import ModelConfig, read_model_config
from gain_curate.executor.prepared import load_prepared
from gain_curate.executor.records import Launch
from gain_curate.executor.workdir import WorkDir
from gain_curate.executor.workers import done
from gain_curate.runtime.resolve import Runtime, resolve_runtime
from gain_curate.scoring.config import ScoreConfig, ScoreResult, config_dict


class _PartScorer:
    """A Ray Data actor: reads the prepared run from OUT, loads the model once on its own
    device, then scores whole parts and writes them. Resolves nothing itself."""

    def __init__(self, out: str, config_hash: str) -> None:
        self.prep = load_prepared(Path(out))
        if self.prep.config_hash != config_hash:
            raise GainCurateError(
                f"worker sees another run in {out} (hash {self.prep.config_hash}, "
                f"driver {config_hash}): "
                "is OUT on a filesystem every node shares?"
            )
        self.device = "cuda:0" if self.prep.runtime.device == "cuda" else "cpu"  # Ray picks the GPU
        from gain_curate.executor.score import load_model_for

        self.lm = load_model_for(self.prep, self.device)
        self.work = WorkDir(self.prep.out)

    def __call__(self, batch: Mapping[str, Any]) -> dict[str, list[int]]:
        """A Ray Data batch of part numbers (column `part`) -> the rows each one scored."""
        from gain_curate.executor.score import score_part
        from gain_curate.scoring.probe_layers import states_key

        prep, rows = self.prep, []
        key = states_key(prep.cfg, prep.model_info)
        for p in map(int, batch["part"]):
            with progress.silenced():  # the driver shows the run
                scored = score_part(prep, self.lm, p)
            self.work.write_part(p, scored, prep.config_hash, prep.part_key(p), key)
            rows.append(scored.table.num_rows)
        return {"part": [int(p) for p in batch["part"]], "rows": rows}


def _resolve_on_gpu(cfg: Mapping[str, Any]) -> Runtime:
    """Runs as a Ray task on one GPU: the runtime as a GPU worker sees it."""
    from gain_curate.scoring.config import config_from_dict

    c = config_from_dict(dict(cfg))
    model = read_model_config(c)
    return resolve_runtime(c, model.config, model.shape.layer, device="cuda")


def run_score_ray(
    cfg: ScoreConfig,
    *,
    address: str | None = None,
    num_gpus: int | None = None,
    actors: int | None = None,
) -> ScoreResult:
    """Score with Ray Data: `num_gpus` GPU actors (or `actors` CPU actors when the cluster
    has no GPU), each holding the model; then merge here. The driver may be a CPU head
    node: the runtime is resolved once in a GPU task, and the driver prepares the run."""
    try:
        import ray
    except ImportError:
        raise GainCurateError("`backend` ray needs Ray: pip install 'gain-curate[ray]'") from None
    if not ray.is_initialized():
        ray.init(address=address, ignore_reinit_error=True, log_to_driver=False)
    gpus = num_gpus if num_gpus is not None else int(ray.cluster_resources().get("GPU", 0))
    n_actors = gpus if gpus > 0 else (actors or 2)
    kind = "cuda" if gpus > 0 else "cpu"
    cfg = replace(cfg, out=cfg.out.resolve(), device=kind if cfg.device == "auto" else cfg.device)
    plan = Launch("single", n_actors, None, kind, f"{n_actors} Ray actor(s)")

    def resolve(model: ModelConfig) -> Runtime:
        if kind == "cpu":
            return resolve_runtime(cfg, model.config, model.shape.layer, device="cpu")
        task = ray.remote(num_gpus=1)(_resolve_on_gpu)  # a Runtime: Ray pickles the dataclass
        return ray.get(task.remote(config_dict(cfg)))

    t0 = time.perf_counter()
    opened = start_run(cfg, plan, {}, resolve=resolve)
    if isinstance(opened, ScoreResult):
        return opened
    prep = opened
    todo = [p for p in range(len(prep.parts)) if not done(prep, p)]
    if todo:
        progress.note(f"scoring {len(todo)} parts on {n_actors} Ray actor(s) ({kind})", style="dim")
        ds = ray.data.from_items([{"part": p} for p in todo])
        ds = ds.map_batches(
            _PartScorer,
            fn_constructor_kwargs={"out": str(prep.out), "config_hash": prep.config_hash},
            batch_size=1,
            concurrency=n_actors,
            num_gpus=1 if gpus > 0 else 0,
        )
        progress.note(f"{len(ds.take_all())} parts scored", style="dim")
    from gain_curate.executor.merge import merge

    return merge(load_prepared(prep.out, for_merge=True), t0)
