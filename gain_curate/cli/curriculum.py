"""`gain-curate schedule` and `gain-curate export`: the curriculum's verbs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

import gain_curate.cli.options as options
from gain_curate.cli.app import main
from gain_curate.cli.flags import as_flags
from gain_curate.cli.options import (
    parse_accuracy,
    parse_sigma,
)
from gain_curate.cli.views import print_plan


@main.command()
@click.argument("out", type=click.Path(path_type=Path, file_okay=False))
@click.option(
    "--epochs",
    type=click.IntRange(min=1),
    required=True,
    help="Schedule epochs to plan; one epoch is one trainer step.",
)
@click.option(
    "--batch-size", type=click.IntRange(min=1), required=True, help="Prompts drawn per epoch (B)."
)
@click.option(
    "--sigma",
    default="1000",
    show_default=True,
    callback=parse_sigma,
    help="Width of the Gaussian: rank positions, or a fraction of N such as 0.05N.",
)
@click.option(
    "--mu0", type=float, default=0.0, show_default=True, help="Starting rank position of the mean."
)
@click.option(
    "--n",
    "n_step",
    type=float,
    default=500.0,
    show_default=True,
    help="Step scale n of the update.",
)
@click.option("--alpha", type=float, default=2.0, show_default=True)
@click.option(
    "--beta",
    type=float,
    default=0.5,
    show_default=True,
    help="Accuracy at which the accuracy term is 0.",
)
@click.option(
    "--adj-min", type=float, default=0.0, show_default=True, help="Smallest step of mu per epoch."
)
@click.option(
    "--adj-max", type=float, default=1000.0, show_default=True, help="Largest step of mu per epoch."
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--mode",
    type=click.Choice(["default", "paper"]),
    default="default",
    show_default=True,
    help="paper: the reference's rule (ang = online level, mu never clamped).",
)
@click.option(
    "--at-end",
    type=click.Choice(["restart", "hold", "uniform", "past"]),
    default=None,
    help="When mu passes the last rank: a new pass from the top (default), hold at the bottom, "
    "draw uniformly, or run on past the end (paper).",
)
@click.option(
    "--assumed-accuracy",
    default="0.8",
    show_default=True,
    callback=parse_accuracy,
    help="Accuracy fed back each epoch: flat (0.8) or a ramp over the run (0.2:0.9).",
)
@options.rank_by_option
@click.option(
    "--simulate", is_flag=True, help="Only show the dynamics (table + PNG); write no plan."
)
@click.option(
    "--plot",
    "plot_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="PNG of mu and the draws per epoch [--simulate: OUT/schedule/simulation.png].",
)
@click.option("--json", "as_json", is_flag=True, help="Print the per-epoch summary as JSON.")
def schedule(out: Path, **kw: Any) -> None:
    """Plan the GAIN-RL curriculum for a scored run: OUT/schedule/plan.parquet, and a table
    of where mu and the draws go for the accuracy you expect.

    \b
    Examples:
      gain-curate schedule runs/gsm8k --epochs 300 --batch-size 256 --assumed-accuracy 0.2:0.9 \
--simulate
      gain-curate schedule runs/gsm8k --epochs 200 --batch-size 256 --assumed-accuracy 0.8
      gain-curate schedule runs/gsm8k --epochs 200 --batch-size 256 --rank-by learnability
    """
    from gain_curate.curriculum.simulate import plan_run

    if kw["mode"] == "paper" and kw["at_end"] not in (None, "past"):
        raise click.BadParameter(
            "paper mode lets mu run past the end as the reference does; "
            "drop --at-end or use --mode default",
            param_hint="--at-end",
        )
    sigma, sigma_fraction = kw["sigma"]
    params = {
        "batch_size": kw["batch_size"],
        "mu0": kw["mu0"],
        "sigma": sigma,
        "sigma_fraction": sigma_fraction,
        "n": kw["n_step"],
        "alpha": kw["alpha"],
        "beta": kw["beta"],
        "adj_min": kw["adj_min"],
        "adj_max": kw["adj_max"],
        "seed": kw["seed"],
    }
    if kw["mode"] == "paper":
        params["paper"] = True
    else:
        params["at_end"] = kw["at_end"] or "restart"
    plot_path = kw["plot_path"] or (out / "schedule" / "simulation.png" if kw["simulate"] else None)
    try:
        res = plan_run(
            out,
            params,
            kw["epochs"],
            kw["assumed_accuracy"],
            write_plan=not kw["simulate"],
            plot_path=plot_path,
            rank_by=kw["rank_by"] or "angle",
        )
    except ValueError as e:  # a bad rank_by or parameter; GainCurateError: _Command
        raise click.ClickException(as_flags(str(e), main)) from None
    rows = [r.to_json() for r in res.rows]
    if kw["as_json"]:
        click.echo(
            json.dumps(
                {
                    "plan": None if res.plan_path is None else str(res.plan_path),
                    "plot": None if plot_path is None else str(plot_path),
                    "end_of_ranking": res.end,
                    "decile_shares": res.deciles,
                    "epochs": rows,
                    "warnings": res.warnings,
                },
                indent=2,
            )
        )
        return
    print_plan(rows, res.n_prompts)
    click.echo(res.end)
    click.echo(
        "draws per tenth of the ranking (top first): "
        + " ".join(f"{100 * x:.0f}%" for x in res.deciles)
    )
    if plot_path is not None:
        click.echo(f"picture: {plot_path}")
    click.echo(f"plan: {res.plan_path}" if res.plan_path else "plan: none written (--simulate)")
    for line in res.warnings:
        click.echo(f"warning: {line}", err=True)


@main.command()
@click.argument("out", type=click.Path(path_type=Path, file_okay=False))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["verl", "openrlhf"]),
    required=True,
    help="Trainer to export for.",
)
@click.option(
    "--epoch", type=click.IntRange(min=0), help="openrlhf: the epoch of the plan to export."
)
@options.rank_by_option
def export(out: Path, fmt: str, epoch: int | None, rank_by: str | None) -> None:
    """Export the plan (`gain-curate schedule`) as files a trainer reads with no gain-curate
    code: verl gets every epoch back to back in plan order, OpenRLHF one epoch per file.
    The plan's order is the one `schedule --rank-by` drew over; --rank-by here checks it.

    \b
    Examples:
      gain-curate export runs/gsm8k --format verl
      # verl 0.5-0.9: 'data.train_files=[runs/gsm8k/export/verl/plan.parquet]' data.shuffle=False
      #               data.train_batch_size=B trainer.total_epochs=1
      gain-curate export runs/gsm8k --format openrlhf --epoch 0
      # OpenRLHF: --data.prompt_dataset runs/gsm8k/export/openrlhf/epoch-00000.jsonl
      #           --data.input_key prompt --data.apply_chat_template --data.label_key label
    """
    if fmt == "verl":
        from gain_curate.curriculum.export import export_verl

        path, record = export_verl(out, rank_by)
        click.echo(f"verl plan ({record.epochs} epochs x {record.batch_size} prompts): {path}")
        click.echo(f"verl: {record.flags}")
        return
    if epoch is None:
        raise click.BadParameter(
            "--format openrlhf exports one epoch: give --epoch K", param_hint="--epoch"
        )
    from gain_curate.curriculum.export_openrlhf import export_epoch

    path, got = export_epoch(out, epoch, rank_by)
    click.echo(f"{fmt} epoch {epoch} ({got.rows} prompts): {path}")
    click.echo(f"OpenRLHF: {got.flags}")
