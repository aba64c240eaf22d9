"""`gain-curate score` and `gain-curate merge`: the scoring pipeline's verbs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TypedDict

import click

import gain_curate.cli.options as options
from gain_curate.cli.app import main
from gain_curate.cli.options import (
    score_options,
    template_options,
)
from gain_curate.cli.views import print_summary
from gain_curate.progress import on_stderr


def _probe_layers(ctx: click.Context, param: click.Parameter, value: str | None) -> Any:
    from gain_curate.scoring.probe_layers import parse_probe_layers

    try:
        return None if value is None else parse_probe_layers(value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


@main.command()
@score_options
@click.option(
    "--probe-layers",
    callback=_probe_layers,
    metavar="K,K,...",
    help="With --keep-states: the layers k of prompt_end@L<k> (1..the scored layer). Default: "
    "1/2, 2/3 and 5/6 of the model's depth (24 layers: 12,16,20).",
)
@template_options
def score(**kw: Any) -> None:
    """Score every prompt, rank, and write verl-ready Parquet shards plus a manifest.

    \b
    Example:
      gain-curate score --model Qwen2.5-7B-Instruct --data gsm8k --out runs/gsm8k
    """
    cfg = options.score_config(kw)
    with on_stderr(quiet=kw["as_json"]):  # the library's steps and notes (gain_curate.progress)
        if kw["backend"] == "ray":
            from gain_curate.executor.ray_backend import run_score_ray

            result = run_score_ray(cfg, address=kw["ray_address"], num_gpus=kw["num_gpus"])
        else:
            from gain_curate.executor.launch import run_score

            result = run_score(cfg, shard=kw["shard"])
    if not hasattr(result, "manifest"):  # a shard or a torchrun rank that does not merge
        what = "shard" if result.kind == "shard" else "rank"
        then = (
            f"run `gain-curate merge {result.out}` once every shard is done"
            if result.kind == "shard"
            else "rank 0 merges once every rank is done"
        )
        if kw["as_json"]:
            click.echo(
                json.dumps(
                    {
                        "out": str(result.out),
                        what: [result.index, result.count],
                        "device": result.device,
                    }
                )
            )
        else:
            click.echo(
                f"{what} {result.index}/{result.count} done on {result.device}: its parts are in "
                f"{result.out / '.gain-curate' / 'parts'}; {then}"
            )
        return
    if kw["as_json"]:
        click.echo(json.dumps(_summary_json(result), indent=2))
    else:
        print_summary(result, "score")


@main.command()
@click.argument("out", type=click.Path(path_type=Path, file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable summary on stdout.")
def merge(out: Path, as_json: bool) -> None:
    """Rank-merge the parts that `score --shard I/N` workers wrote; write shards + manifest.

    \b
    Example:
      for i in 0 1 2 3; do gain-curate score ... --out runs/big --shard $i/4 & done; wait
      gain-curate merge runs/big
    """
    from gain_curate.executor.merge import merge_run

    with on_stderr(quiet=as_json):  # shows merge's steps (gain_curate.progress)
        result = merge_run(out)
    if as_json:
        click.echo(json.dumps(_summary_json(result), indent=2))
    else:
        print_summary(result, "merge")


class SummaryJSON(TypedDict):
    """What `score --json` and `merge --json` print, key order as printed."""

    out: str
    manifest: str
    shards: list[str]
    counts: dict[str, Any]
    seconds: float
    reused: bool
    spearman_score_vs_question_tokens: float | None
    config_hash: str


def _summary_json(result: Any) -> SummaryJSON:
    m = result.manifest
    return {
        "out": str(result.out),
        "manifest": str(result.out / "gain_manifest.json"),
        "shards": [str(result.out / s["path"]) for s in m["shards"]],
        "counts": m["counts"],
        "seconds": m["seconds"],  # the run's (the merge's, after --shard workers)
        "reused": result.reused,
        "spearman_score_vs_question_tokens": m["stats"]["spearman_score_vs_question_tokens"],
        "config_hash": m["config_hash"],
    }
