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
plan was drawn over X. Both files are written by gain_curate.curriculum.export_openrlhf.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path
from typing import Any

from gain_curate.curriculum.export_openrlhf import (
    PLAN_FILE,
    PlanExport,
    data_flags,
    export_epoch,
    export_plan,
    openrlhf_exports,
)
from gain_curate.errors import OutputError
from gain_curate.runfolder.run import open_run

__all__ = ["PLAN_FILE", "PlanExport", "data_flags", "export_epoch", "export_plan", "main"]

ENV_RUN = "GAIN_CURATE_RUN"


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


def check_args(args: Any, run: Path, record: PlanExport) -> None:
    """Inside the Ray actor, on OpenRLHF's parsed arguments: one plan epoch per step, or a
    ValueError that says which flag to change."""
    batch = record.batch_size
    plan = os.path.realpath(run / record.path)
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

    written = openrlhf_exports(open_run(run)).get("plan")
    if written is None:
        raise OutputError(
            f"{run / PLAN_FILE} not recorded: launch through the gain-curate launcher"
        )
    record = PlanExport.from_json(written)

    def wrapped(strategy: Any, *args: Any, **kwargs: Any) -> Any:
        loader, eval_loader, max_steps = prepare_datasets(strategy, *args, **kwargs)
        check_args(strategy.args, run, record)
        if len(loader.dataset) != record.rows:
            raise ValueError(
                f"the prompt dataset has {len(loader.dataset)} rows, the plan {record.rows}: "
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
            argv[argv.index("--") + 1 :], data_flags(path, record.batch_size)
        )
    except OutputError as e:
        sys.exit(f"error: {e}")
    print(
        f"gain-curate: the whole plan, {record.epochs} epochs x {record.batch_size} "
        f"prompts = {record.epochs} OpenRLHF steps per episode; added: {shlex.join(added)}",
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
