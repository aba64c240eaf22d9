"""OpenRLHF adapter. OpenRLHF has no sampler hook and builds its prompt dataloader with
shuffle=True hard-wired (`openrlhf.trainer.ppo_trainer.prepare_datasets`), so there are two
ways to train on the GAIN-RL order:

1. One epoch, no patch: `gain-curate export OUT --format openrlhf --epoch K` writes epoch K
   of the plan (`gain-curate schedule`) as a flat file OpenRLHF reads directly; with
   `--rollout.batch_size B` it is one OpenRLHF step (the shuffle only reorders inside it):

       --data.prompt_dataset OUT/export/openrlhf/epoch-00000.jsonl --data.input_key prompt \\
       --data.apply_chat_template --data.label_key label --rollout.batch_size B

2. The whole plan (open loop): launch through this module.

       python -m gain_curate.integrations.openrlhf --run OUT -- <train_ppo_ray arguments>

   It writes OUT/export/openrlhf/plan.jsonl (every plan epoch back to back, E x B rows),
   adds the flags above for that file (and refuses conflicting ones), and starts Ray with a
   worker set-up hook that, inside every Ray worker, wraps `prepare_datasets` so the prompt
   loader reads the file in order instead of shuffling it. OpenRLHF's episode is then the
   whole plan: with its default `--train.num_episodes 1`, step e trains on plan epoch e for
   e = 0..E-1, and the LR schedule it derives from the file's length (max_steps) is the
   number of optimizer steps those E steps run.

Both follow the plan, so its order (`gain-curate schedule --rank-by angle|learnability|length`)
is theirs; `--rank-by X` (the export's flag, or before `--` on the launcher) checks that the
plan was drawn over X.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from gain_curate.curriculum.export import plan_order, ranked_table, read_plan
from gain_curate.errors import OutputError
from gain_curate.runfolder import store

ENV_RUN = "GAIN_CURATE_RUN"
PLAN_FILE = Path("export") / "openrlhf" / "plan.jsonl"


def data_flags(path: Path, batch_size: int) -> list[str]:
    """The train_ppo_ray arguments that read `path` as gain-curate wrote it, one plan epoch
    (`batch_size` prompts) per OpenRLHF step; shlex.join them for a shell."""
    return [
        "--data.prompt_dataset",
        str(path.resolve()),
        "--data.input_key",
        "prompt",
        "--data.apply_chat_template",
        "--data.label_key",
        "label",
        "--rollout.batch_size",
        str(batch_size),
    ]


def write_jsonl(out: Path, rel: Path, ranks: np.ndarray, extra: list[dict[str, int]]) -> Path:
    """OUT/rel: one OpenRLHF record per rank in `ranks` (datasource, prompt (chat), input (the
    last user turn as text), label (ground truth), gain_uid, gain_rank, + `extra[k]`)."""
    table = ranked_table(out, ["data_source", "prompt", "reward_model", "gain_uid"])
    lines = []
    for r, more in zip(table.take(pa.array(ranks)).to_pylist(), extra):
        user = [m["content"] for m in r["prompt"] if m["role"] == "user"]
        record = {
            "datasource": r["data_source"],
            "prompt": r["prompt"],
            "input": user[-1] if user else "",
            "label": (r["reward_model"] or {}).get("ground_truth"),
            "gain_uid": r["gain_uid"],
            "gain_rank": r["gain_rank"],
            **more,
        }
        lines.append(json.dumps(record, ensure_ascii=False))
    path = out / rel
    store.write_bytes_atomic(path, ("\n".join(lines) + "\n").encode("utf-8"))
    return path


def record_export(out: Path, key: str, value: Any) -> None:
    """manifest.exports.openrlhf[key] = value, the other exports kept."""
    exports = store.read_manifest(out).get("exports", {})
    store.update_manifest(
        out, "exports", {**exports, "openrlhf": {**exports.get("openrlhf", {}), key: value}}
    )


def export_epoch(out: Path, epoch: int, rank_by: str | None = None) -> tuple[Path, dict[str, Any]]:
    """Epoch `epoch` of the plan as OpenRLHF-ready JSON lines, in plan order; recorded in the
    manifest (exports.openrlhf.epochs) with the OpenRLHF flags that train on it."""
    plans = read_plan(out)
    plan_order(out, rank_by)
    if not 0 <= epoch < len(plans):
        raise OutputError(
            f"--epoch {epoch} is outside the plan in {out} (epochs 0..{len(plans) - 1})"
        )
    rel = Path("export") / "openrlhf" / f"epoch-{epoch:05d}.jsonl"
    path = write_jsonl(out, rel, plans[epoch], [{}] * len(plans[epoch]))
    record = {
        "path": str(rel),
        "rows": len(plans[epoch]),
        "sha256": store.file_sha256(path),
        "flags": shlex.join(data_flags(path, len(plans[epoch]))),
    }
    epochs = store.read_manifest(out).get("exports", {}).get("openrlhf", {}).get("epochs", {})
    record_export(out, "epochs", {**epochs, str(epoch): record})
    return path, record


def export_plan(out: Path, rank_by: str | None = None) -> tuple[Path, dict[str, Any]]:
    """Every epoch of the plan back to back (row k of epoch e: gain_plan_epoch e,
    gain_plan_position k) as OUT/export/openrlhf/plan.jsonl; recorded in the manifest
    (exports.openrlhf.plan) with the flags the launcher adds."""
    plans = read_plan(out)
    drawn = plan_order(out, rank_by)
    (batch,) = {len(p) for p in plans}  # the schedule draws B prompts every epoch
    extra = [
        {"gain_plan_epoch": e, "gain_plan_position": k}
        for e, p in enumerate(plans)
        for k in range(len(p))
    ]
    path = write_jsonl(out, PLAN_FILE, np.concatenate(plans), extra)
    record = {
        "path": str(PLAN_FILE),
        "rows": len(extra),
        "epochs": len(plans),
        "batch_size": batch,
        "sha256": store.file_sha256(path),
        "flags": shlex.join(data_flags(path, batch)),
        "rank_by": drawn,
    }
    record_export(out, "plan", record)
    return path, record


def with_plan_flags(argv: list[str], flags: list[str]) -> tuple[list[str], list[str]]:
    """`argv` (train_ppo_ray arguments) + those of `flags` it lacks, and the ones added. A flag
    given with another value than the plan's is refused (OutputError)."""
    added: list[str] = []
    k = 0
    while k < len(flags):
        flag = flags[k]
        value = flags[k + 1] if k + 1 < len(flags) and not flags[k + 1].startswith("--") else None
        k += 1 if value is None else 2
        given = [
            a.split("=", 1)[1] if "=" in a else None for a in argv if a.split("=", 1)[0] == flag
        ]
        if not given:
            added += [flag] if value is None else [flag, value]
            continue
        i = max(j for j, a in enumerate(argv) if a.split("=", 1)[0] == flag)
        got = given[-1] if given[-1] is not None else (argv[i + 1] if i + 1 < len(argv) else None)
        same = (
            value is None
            or got == value
            or (
                flag == "--data.prompt_dataset"
                and got is not None
                and os.path.realpath(got) == value
            )
        )
        if not same:
            raise OutputError(
                f"{flag} {got} conflicts with the plan: drop it "
                f"(the launcher passes {flag} {value})"
            )
    return [*argv, *added], added


def check_args(args: Any, run: Path, record: dict[str, Any]) -> None:
    """Inside the Ray actor, on OpenRLHF's parsed arguments: one plan epoch per step, or a
    ValueError that says which flag to change."""
    batch = record["batch_size"]
    plan = os.path.realpath(run / record["path"])
    if os.path.realpath(str(args.data.prompt_dataset)) != plan:
        raise ValueError(
            f"--data.prompt_dataset is {args.data.prompt_dataset}, not the plan {plan}"
        )
    if args.rollout.batch_size != batch:
        raise ValueError(
            f"--rollout.batch_size {args.rollout.batch_size}: the plan draws {batch} prompts a "
            f"step; pass --rollout.batch_size {batch}"
        )
    gen = getattr(args.rollout, "vllm_generate_batch_size", None)
    if gen not in (None, batch):
        raise ValueError(f"--rollout.vllm_generate_batch_size {gen} mixes plan epochs: drop it")
    if getattr(args.algo, "dynamic_filtering_enable", False):
        raise ValueError(
            "--algo.dynamic_filtering_enable refills a step from the next plan epoch: drop it"
        )


def follow_plan(prepare_datasets: Any, run: Path) -> Any:
    """Wrap OpenRLHF's `prepare_datasets(strategy, tokenizer)`: its shuffled prompt loader is
    rebuilt over the same dataset (the plan file, E x B rows) in file order; the eval loader
    and max_steps (OpenRLHF's own formula over the plan's length) are kept."""
    from torchdata.stateful_dataloader import StatefulDataLoader

    record = (store.read_manifest(run).get("exports", {}).get("openrlhf", {})).get("plan")
    if record is None:
        raise OutputError(
            f"{run / PLAN_FILE} not recorded: launch through the gain-curate launcher"
        )

    def wrapped(strategy: Any, *args: Any, **kwargs: Any) -> Any:
        loader, eval_loader, max_steps = prepare_datasets(strategy, *args, **kwargs)
        check_args(strategy.args, run, record)
        if len(loader.dataset) != record["rows"]:
            raise ValueError(
                f"the prompt dataset has {len(loader.dataset)} rows, the plan {record['rows']}: "
                "drop --data.max_samples"
            )
        # StatefulDataLoader's own sequential sampler: its state_dict resumes mid-plan
        loader = StatefulDataLoader(
            loader.dataset,
            batch_size=loader.batch_size,
            shuffle=False,
            collate_fn=loader.collate_fn,
            pin_memory=loader.pin_memory,
            drop_last=loader.drop_last,
            num_workers=loader.num_workers,
            persistent_workers=loader.num_workers > 0,
        )
        return loader, eval_loader, max_steps

    wrapped.gain_curate_run = str(run)  # type: ignore[attr-defined]
    wrapped.__wrapped__ = prepare_datasets  # type: ignore[attr-defined]
    return wrapped


def setup() -> None:
    """Ray `worker_process_setup_hook`: patch OpenRLHF inside each worker, if it is there.
    ppo_trainer_async imports the name from ppo_trainer: wrap each function once."""
    run = os.environ.get(ENV_RUN)
    if not run:
        return
    for name in ("openrlhf.trainer.ppo_trainer", "openrlhf.trainer.ppo_trainer_async"):
        try:
            module = __import__(name, fromlist=["prepare_datasets"])
        except ImportError:
            continue
        found = getattr(module, "prepare_datasets", None)
        if found is not None and not hasattr(found, "gain_curate_run"):
            module.prepare_datasets = follow_plan(found, Path(run))


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--run" not in argv or "--" not in argv:
        sys.exit(
            "usage: python -m gain_curate.integrations.openrlhf --run OUT "
            "[--rank-by angle|learnability|length] -- <openrlhf train_ppo_ray arguments>"
        )
    import importlib.util

    for mod in ("ray", "openrlhf"):  # one line before any work, not a traceback after it
        if importlib.util.find_spec(mod) is None:
            sys.exit(f"error: the OpenRLHF launcher needs {mod}, which this Python lacks")
    ours = argv[: argv.index("--")]
    run = Path(ours[ours.index("--run") + 1]).resolve()
    try:
        rank_by = ours[ours.index("--rank-by") + 1] if "--rank-by" in ours else None
        path, record = export_plan(run, rank_by)  # fail here, not inside a Ray worker
        theirs, added = with_plan_flags(
            argv[argv.index("--") + 1 :], data_flags(path, record["batch_size"])
        )
    except OutputError as e:
        sys.exit(f"error: {e}")
    print(
        f"gain-curate: the whole plan, {record['epochs']} epochs x {record['batch_size']} "
        f"prompts = {record['epochs']} OpenRLHF steps per episode; added: {shlex.join(added)}",
        file=sys.stderr,
    )
    import ray

    env = {
        "worker_process_setup_hook": "gain_curate.integrations.openrlhf.setup",
        "env_vars": {ENV_RUN: str(run)},
    }
    ray.init(runtime_env=env)
    sys.argv = ["train_ppo_ray", *theirs]
    import runpy

    runpy.run_module("openrlhf.cli.train_ppo_ray", run_name="__main__")


if __name__ == "__main__":
    main()
