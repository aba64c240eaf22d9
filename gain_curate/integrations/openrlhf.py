"""OpenRLHF adapter. OpenRLHF has no sampler hook and builds its prompt dataloader with
shuffle=True hard-wired (`openrlhf.trainer.ppo_trainer.prepare_datasets`), so there are two
ways to train on the GAIN-RL order:

1. No patch: `gain-curate export OUT --format openrlhf --epoch K` writes epoch K of the plan
   (`gain-curate schedule`) as a flat file OpenRLHF reads directly:

       --data.prompt_dataset OUT/export/openrlhf/epoch-00000.jsonl \\
       --data.input_key prompt --data.apply_chat_template --data.label_key label

2. Patch (open loop): launch through this module. It starts Ray with a worker set-up hook
   that, inside every Ray worker, wraps `prepare_datasets` so the prompt dataloader walks
   the plan epoch by epoch instead of shuffling:

       python -m gain_curate.integrations.openrlhf --run OUT -- <train_ppo_ray arguments>

   with `--data.prompt_dataset` pointing at OUT's shards (their row order is the rank).

Both follow the plan, so its order (`gain-curate schedule --rank-by angle|learnability|length`)
is theirs; `--rank-by X` (the export's flag, or before `--` on the launcher) checks that the
plan was drawn over X.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from gain_curate.curriculum.export import plan_order, ranked_table, read_plan
from gain_curate.errors import OutputError
from gain_curate.scoring import store

ENV_RUN = "GAIN_CURATE_RUN"


def export_epoch(out: Path, epoch: int, rank_by: str | None = None) -> tuple[Path, dict[str, Any]]:
    """Epoch `epoch` of the plan as OpenRLHF-ready JSON lines: datasource, prompt (chat),
    input (the last user turn as text), label (ground truth), gain_uid, gain_rank; recorded
    in the manifest (exports.openrlhf.epochs) with the OpenRLHF flags that train on it."""
    plans = read_plan(out)
    plan_order(out, rank_by)
    if not 0 <= epoch < len(plans):
        raise OutputError(
            f"--epoch {epoch} is outside the plan in {out} (epochs 0..{len(plans) - 1})"
        )
    table = ranked_table(out, ["data_source", "prompt", "reward_model", "gain_uid"])
    rows = table.take(pa.array(plans[epoch])).to_pylist()  # the epoch's rows, in plan order
    path = out / "export" / "openrlhf" / f"epoch-{epoch:05d}.jsonl"
    lines = []
    for r in rows:
        user = [m["content"] for m in r["prompt"] if m["role"] == "user"]
        lines.append(
            json.dumps(
                {
                    "datasource": r["data_source"],
                    "prompt": r["prompt"],
                    "input": user[-1] if user else "",
                    "label": (r["reward_model"] or {}).get("ground_truth"),
                    "gain_uid": r["gain_uid"],
                    "gain_rank": r["gain_rank"],
                },
                ensure_ascii=False,
            )
        )
    store.write_bytes_atomic(path, ("\n".join(lines) + "\n").encode("utf-8"))
    flags = [
        f"--data.prompt_dataset {path.resolve()}",
        "--data.input_key prompt",
        "--data.apply_chat_template",
        "--data.label_key label",
    ]
    record = {
        "path": str(path.relative_to(out)),
        "rows": len(rows),
        "sha256": store.file_sha256(path),
        "flags": " ".join(flags),
    }
    manifest = store.read_manifest(out)
    exports = manifest.get("exports", {})
    epochs = {**exports.get("openrlhf", {}).get("epochs", {}), str(epoch): record}
    store.update_manifest(out, "exports", {**exports, "openrlhf": {"epochs": epochs}})
    return path, record


class PlanSampler:
    """Dataset indices in plan order, epoch after epoch (cycling if training runs longer).

    Stateful (state_dict / load_state_dict) so OpenRLHF's StatefulDataLoader checkpoints it."""

    def __init__(self, plans: list[np.ndarray], dataset_len: int) -> None:
        if plans and max(int(p.max()) for p in plans) >= dataset_len:
            raise ValueError(
                "the plan reaches past the prompt dataset: point OpenRLHF at the run's own shards"
            )
        self.plans, self.epoch, self.pos = plans, 0, 0

    def __len__(self) -> int:
        return len(self.plans[self.epoch % len(self.plans)])

    def __iter__(self) -> Iterator[int]:
        plan = self.plans[self.epoch % len(self.plans)]
        while self.pos < len(plan):
            self.pos += 1
            yield int(plan[self.pos - 1])
        self.epoch, self.pos = self.epoch + 1, 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.pos = int(state["epoch"]), int(state["pos"])


def follow_plan(prepare_datasets: Any, run: Path) -> Any:
    """Wrap OpenRLHF's `prepare_datasets`: its shuffled prompt dataloader is rebuilt over
    the same dataset with a PlanSampler; everything else it returns is kept."""
    from torchdata.stateful_dataloader import StatefulDataLoader

    plans = read_plan(run)

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        result = prepare_datasets(*args, **kwargs)
        items = list(result) if isinstance(result, tuple) else [result]
        for i, item in enumerate(items):
            if isinstance(item, StatefulDataLoader):
                items[i] = StatefulDataLoader(
                    item.dataset,
                    batch_size=item.batch_size,
                    sampler=PlanSampler(plans, len(item.dataset)),
                    collate_fn=item.collate_fn,
                    num_workers=0,
                )
                break  # the first loader is the prompt loader; eval loaders follow it
        return tuple(items) if isinstance(result, tuple) else items[0]

    return wrapped


def setup() -> None:
    """Ray `worker_process_setup_hook`: patch OpenRLHF inside each worker, if it is there."""
    run = os.environ.get(ENV_RUN)
    if not run:
        return
    for name in ("openrlhf.trainer.ppo_trainer", "openrlhf.trainer.ppo_trainer_async"):
        try:
            module = __import__(name, fromlist=["prepare_datasets"])
        except ImportError:
            continue
        if hasattr(module, "prepare_datasets"):
            module.prepare_datasets = follow_plan(module.prepare_datasets, Path(run))


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--run" not in argv or "--" not in argv:
        sys.exit(
            "usage: python -m gain_curate.integrations.openrlhf --run OUT "
            "[--rank-by angle|learnability|length] -- <openrlhf train_ppo_ray arguments>"
        )
    ours = argv[: argv.index("--")]
    run = Path(ours[ours.index("--run") + 1]).resolve()
    read_plan(run)  # fail here, not inside a Ray worker
    try:
        plan_order(run, ours[ours.index("--rank-by") + 1] if "--rank-by" in ours else None)
    except OutputError as e:
        sys.exit(f"error: {e}")
    import ray

    env = {
        "worker_process_setup_hook": "gain_curate.integrations.openrlhf.setup",
        "env_vars": {ENV_RUN: str(run)},
    }
    ray.init(runtime_env=env)
    sys.argv = ["train_ppo_ray", *argv[argv.index("--") + 1 :]]
    import runpy

    runpy.run_module("openrlhf.cli.train_ppo_ray", run_name="__main__")


if __name__ == "__main__":
    main()
