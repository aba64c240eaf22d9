"""`gain-curate validate`'s flags as the library's ValidateRequest (a scored run's own
settings with --run, else the flags'), and the files it wrote, printed after its tables."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

import gain_curate.cli.options as options
from gain_curate.cli.options import TEMPLATE_FLAGS, template_from_flags

if TYPE_CHECKING:
    from gain_curate.checks.validate import ValidateRequest


def validate_request(kw: dict[str, Any], given: list[Any]) -> ValidateRequest:
    """validate's flags as a checks.validate.ValidateRequest: --run's settings (the run's
    model, data, template and dtype; one line when a flag would change them), else the
    flags'."""
    from gain_curate.checks.run_inputs import RUN_SETTINGS, RunSettings, run_settings
    from gain_curate.checks.validate import ValidateRequest

    if kw["run"] is not None:
        clash = [p.opts[0] for p in given if p.name in (*RUN_SETTINGS, *TEMPLATE_FLAGS, "dtype")]
        if clash:
            raise click.UsageError(
                f"--run takes the model, data and template from the run: drop {', '.join(clash)}"
            )
        settings = run_settings(kw["run"])
    elif kw["data"] is None:
        raise click.UsageError(
            "give --data (a dataset with reference solutions) or --run OUT (a scored run)"
        )
    else:
        settings = RunSettings(
            **{k: kw[k] for k in RUN_SETTINGS if k not in ("template", "chat_template")},
            template=template_from_flags(kw),
            chat_template=kw["chat_template"] and str(kw["chat_template"]),
            dtype=kw["dtype"],
            template_flags=options.template_flags_given(kw),  # the rest: per data source
        )
    rollouts = None
    if kw["rollouts"] is not None:
        from gain_curate.checks.generation import RolloutSettings

        rollouts = RolloutSettings(
            k=kw["rollouts"],
            max_new_tokens=kw["max_new_tokens"],
            temperature=kw["temperature"],
            seed=kw["seed"],
            batch_rows=kw["rollout_batch"],
            engine=kw["engine"],
        )
    return ValidateRequest(
        **vars(settings),
        sample=kw["sample"],
        out=kw["out"],
        device=kw["device"],
        seed=kw["seed"],
        rollouts=rollouts,
        reward=kw["reward"],
    )


def print_validate_files(result: dict[str, Any], out: Path) -> None:
    """Where validate wrote its table, plot, completions and probes; how to apply a probe."""
    click.echo(f"table: {out / 'validate.parquet'}  plot: {out / 'validate.png'}")
    if "rollouts" not in result:
        return
    click.echo(f"completions: {out / 'rollouts' / 'completions.jsonl'}")
    files = result["rollouts"].get("probe_files") or {}
    if files:  # the scored layer's last-token probe first: a --keep-states run takes it
        first = next(
            (f for n, f in files.items() if n == f"last_token@L{result['layer']}"),
            next(iter(files.values())),
        )
        click.echo(
            f"probes: {', '.join(Path(f).name for f in files.values())} "
            f"in {Path(first).parent}; "
            "apply one to a run scored with --keep-states: "
            f"gain-curate predict RUN --probe '{first}'"
        )
