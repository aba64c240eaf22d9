"""`gain-curate schedule` and `gain-curate export`: the curriculum's verbs."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click

import gain_curate.cli.options as options
from gain_curate.cli.app import main
from gain_curate.cli.closed_loop import closed_loop_options, run_closed_loop
from gain_curate.cli.flags import as_flags
from gain_curate.cli.options import (
    parse_accuracy,
    parse_sigma,
)
from gain_curate.cli.views import print_plan
from gain_curate.curriculum.fit import resolved_line
from gain_curate.curriculum.params import ScheduleParams


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
    default=None,
    callback=lambda ctx, param, v: (None, None) if v is None else parse_sigma(ctx, param, v),
    help="Width of the Gaussian: rank positions, or a fraction of N such as 0.05N "
    "[default: 1000 x N / 7,473, the paper's 1000 at GSM8K's 7,473 prompts; paper mode: 1000].",
)
@click.option(
    "--mu0", type=float, default=0.0, show_default=True, help="Starting rank position of the mean."
)
@click.option(
    "--n",
    "n_step",
    type=click.FloatRange(min=0),
    default=None,
    help="Step scale n of the update [default: 500 x N / 7,473; paper mode: 500].",
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
    "--adj-max",
    type=float,
    default=None,
    help="Largest step of mu per epoch [default: 1000 x N / 7,473; paper mode: 1000].",
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
@closed_loop_options
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
    if kw["pass_rates"] is not None:  # every ranking against known pass rates
        return run_closed_loop(out, params, kw)
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
    given = ScheduleParams.given(params)
    if kw["as_json"]:
        click.echo(
            json.dumps(
                {
                    "params": asdict(given.resolved(res.n_prompts)),
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
    for line in res.warnings:  # before the table, which scrolls them away
        click.echo(f"warning: {line}", err=True)
    click.echo(resolved_line(given, res.n_prompts))
    print_plan(rows, res.n_prompts)
    click.echo(res.end)
    click.echo(
        "draws per tenth of the ranking (top first): "
        + " ".join(f"{100 * x:.0f}%" for x in res.deciles)
    )
    if plot_path is not None:
        click.echo(f"picture: {plot_path}")
    click.echo(f"plan: {res.plan_path}" if res.plan_path else "plan: none written (--simulate)")


@main.command()
@click.argument("out", type=click.Path(path_type=Path, file_okay=False))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["verl", "openrlhf", "subset"]),
    required=True,
    help="verl / openrlhf: the plan in that trainer's format; subset: the run's rows, "
    "filtered (--top, --pass-band, --drop-*), as verl-schema train and val shards.",
)
@click.option(
    "--epoch", type=click.IntRange(min=0), help="openrlhf: the epoch of the plan to export."
)
@options.rank_by_option
@click.option(
    "--top",
    type=float,
    help="subset: keep the top FRACTION (0-1] of the rows the other filters kept, in "
    "--rank-by order.",
)
@click.option(
    "--pass-band",
    help="subset: keep rows whose gain_pred_pass (`gain-curate predict`) is in LO:HI, "
    "e.g. 0.1:0.9.",
)
@click.option("--drop-unscored", is_flag=True, help="subset: drop rows with no gain_score.")
@click.option(
    "--drop-duplicates",
    is_flag=True,
    help="subset: drop a prompt seen before in rank order (the first stays).",
)
@click.option(
    "--val-fraction", type=float, help="subset: hold out this fraction (0-1) as val shards."
)
@click.option("--val-size", type=int, help="subset: hold out this many rows as val shards.")
@click.option(
    "--seed", type=int, default=0, show_default=True, help="subset: the held-out split's seed."
)
def export(out: Path, fmt: str, epoch: int | None, rank_by: str | None, **sub: Any) -> None:
    """Export the plan (`gain-curate schedule`) as files a trainer reads with no gain-curate
    code: verl gets every epoch back to back in plan order, OpenRLHF one epoch per file.
    The plan's order is the one `schedule --rank-by` drew over; --rank-by here checks it.
    --format subset writes the run's own rows, curated, as verl train/val shards instead.

    \b
    Examples:
      gain-curate export runs/gsm8k --format verl
      # verl 0.5-0.9: 'data.train_files=[runs/gsm8k/export/verl/plan.parquet]' data.shuffle=False
      #               data.train_batch_size=B trainer.total_epochs=1
      gain-curate export runs/gsm8k --format openrlhf --epoch 0
      # OpenRLHF: --data.prompt_dataset runs/gsm8k/export/openrlhf/epoch-00000.jsonl
      #           --data.input_key prompt --data.apply_chat_template --data.label_key label
      gain-curate export runs/gsm8k --format subset --drop-duplicates --top 0.5 --val-size 500
      # verl: 'data.train_files=[.../export/subset/train-00000-of-00001.parquet]'
      #       'data.val_files=[.../export/subset/val-00000-of-00001.parquet]'
    """
    if fmt == "subset":
        export_subset_cmd(out, rank_by, sub)
        return
    given = [k for k, v in sub.items() if k != "seed" and v not in (None, False)]
    if given:
        flag = "--" + given[0].replace("_", "-")
        raise click.BadParameter(f"{flag} applies to --format subset", param_hint=flag)
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


def export_subset_cmd(out: Path, rank_by: str | None, sub: dict[str, Any]) -> None:
    """`export --format subset`: the curated rows as train/val shards, what each filter
    dropped, and the verl flags that read them."""
    from gain_curate.curriculum.subset import SubsetSpec, export_subset, parse_band

    try:
        band = None if sub["pass_band"] is None else parse_band(sub["pass_band"])
        spec = SubsetSpec(
            top=sub["top"],
            pass_band=band,
            drop_unscored=sub["drop_unscored"],
            drop_duplicates=sub["drop_duplicates"],
            val_fraction=sub["val_fraction"],
            val_size=sub["val_size"],
            seed=sub["seed"],
        )
        res = export_subset(out, spec, rank_by)
    except ValueError as e:  # a bad value; GainCurateError: _Command
        raise click.ClickException(as_flags(str(e), main)) from None
    n_train, n_val = sum(s.rows for s in res.train), sum(s.rows for s in res.val)
    click.echo(f"subset of {out} in {res.rank_by} order: {res.n_rows:,} rows")
    for name, n in res.dropped.items():
        click.echo(f"  {name}: dropped {n:,}")
    click.echo(
        f"kept {n_train + n_val:,}: train {n_train:,}, val {n_val:,} in {out / 'export' / 'subset'}"
    )
    click.echo(f"verl: {res.flags}")
