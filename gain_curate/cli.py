"""Command line: parse, call, print. No logic lives here.

gain-curate score --model Qwen/Qwen2.5-7B-Instruct --data gsm8k --out runs/gsm8k
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from gain_curate import __version__, options
from gain_curate.errors import GainCurateError
from gain_curate.options import (
    TEMPLATE_FLAGS,
    parse_accuracy,
    parse_sigma,
    score_options,
    template_from_flags,
    template_options,
)
from gain_curate.views import (
    phases,
    print_inspect,
    print_plan,
    print_summary,
    print_validate,
    progress,
)


def _fail(e: GainCurateError) -> click.ClickException:
    return click.ClickException(str(e))


class _Command(click.Command):
    """A command whose unexpected exceptions become one line naming the log that holds the
    traceback (in the run folder when the command has one), and whose expected errors
    (GainCurateError) are one line even where a command does not catch them."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except GainCurateError as e:
            raise _fail(e) from None
        except Exception as e:
            from gain_curate.errors import report_internal_error

            raise click.ClickException(report_internal_error(e, ctx.params.get("out"))) from None


class _Cli(click.Group):
    """The command group: every failure is one line on stderr and a non-zero exit (2 for
    usage: an unknown verb or flag, a missing or invalid value; 1 for everything else)."""

    command_class = _Command

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:  # fmt: skip
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.exceptions.NoArgsIsHelpError as e:  # bare `gain-curate`: the help
            click.echo(e.ctx.get_help())
            sys.exit(0)
        except click.UsageError as e:  # click's usage block + hint + message -> one line
            verb = next((a for a in (sys.argv[1:] if args is None else args) if a in self.commands), None)  # fmt: skip
            where = e.ctx.command_path if e.ctx is not None else " ".join(filter(None, [prog_name or "gain-curate", verb]))  # fmt: skip
            message = " ".join(e.format_message().split())
            click.echo(f"Error: {message} (see `{where} --help`)", err=True)
            sys.exit(e.exit_code)
        except click.ClickException as e:
            e.show()
            sys.exit(e.exit_code)
        except click.Abort:
            click.echo("Error: interrupted; nothing was published (a rerun resumes)", err=True)
            sys.exit(130)
        sys.exit(code if isinstance(code, int) else 0)


@click.group(cls=_Cli, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="gain-curate")
def main() -> None:
    """Rank RL prompts by GAIN-RL angle concentration, before you train.

    \b
    Example:
      gain-curate score --model Qwen/Qwen2.5-7B-Instruct --data gsm8k --out runs/gsm8k
      # verl: data.train_files=runs/gsm8k/data/*.parquet data.shuffle=False
    """


@main.command()
@score_options
@template_options
def score(**kw: Any) -> None:
    """Score every prompt, rank, and write verl-ready Parquet shards plus a manifest.

    \b
    Example:
      gain-curate score --model Qwen2.5-7B-Instruct --data gsm8k --out runs/gsm8k
    """
    from gain_curate.score import ScoreConfig

    try:
        template = template_from_flags(kw)
        cfg = ScoreConfig(
            data=kw["data"], model=kw["model"], out=kw["out"], template=template,
            question_key=kw["question_key"], answer_key=kw["answer_key"], split=kw["split"],
            limit=kw["limit"], layer=kw["layer"], inter_weight=kw["inter_weight"],
            max_tokens=kw["max_tokens"], dtype=kw["dtype"], device=kw["device"],
            token_budget=kw["token_budget"], kernel=kw["kernel"], share_prefix=not kw["no_prefix_sharing"],
            part_rows=kw["part_rows"], chat_template=str(kw["chat_template"]) if kw["chat_template"] else None,
            rows_per_shard=kw["rows_per_shard"], overwrite=kw["overwrite"],
            data_source=kw["data_source"], train_prompt=kw["train_prompt"],
            template_flags=options.template_flags_given(kw), keep_states=kw["keep_states"],
        )  # fmt: skip
        with progress(quiet=kw["as_json"]) as hooks:
            if kw["backend"] == "ray":
                from gain_curate.launch import run_score_ray

                result = run_score_ray(
                    cfg, hooks, address=kw["ray_address"], num_gpus=kw["num_gpus"]
                )
            else:
                from gain_curate.launch import run_score

                result = run_score(cfg, hooks, shard=kw["shard"])
    except GainCurateError as e:
        raise _fail(e) from None
    if not hasattr(result, "manifest"):  # a shard or a torchrun rank that does not merge
        what = "shard" if result.kind == "shard" else "rank"
        then = (f"run `gain-curate merge {result.out}` once every shard is done" if result.kind == "shard"
                else "rank 0 merges once every rank is done")  # fmt: skip
        if kw["as_json"]:
            click.echo(json.dumps({"out": str(result.out), what: [result.index, result.count], "device": result.device}))  # fmt: skip
        else:
            click.echo(f"{what} {result.index}/{result.count} done on {result.device}: its parts are in "
                       f"{result.out / '.gain-curate' / 'parts'}; {then}")  # fmt: skip
        return
    if kw["as_json"]:
        click.echo(json.dumps(_summary_json(result), indent=2))
    else:
        print_summary(result)


@main.command()
@click.argument("out", type=click.Path(path_type=Path, file_okay=False))
@click.option("--epochs", type=click.IntRange(min=1), required=True,
              help="Schedule epochs to plan; one epoch is one trainer step.")  # fmt: skip
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
@click.option("--n", "n_step", type=float, default=500.0, show_default=True, help="Step scale n of the update.")  # fmt: skip
@click.option("--alpha", type=float, default=2.0, show_default=True)
@click.option("--beta", type=float, default=0.5, show_default=True, help="Accuracy at which the accuracy term is 0.")  # fmt: skip
@click.option("--adj-min", type=float, default=0.0, show_default=True, help="Smallest step of mu per epoch.")  # fmt: skip
@click.option("--adj-max", type=float, default=1000.0, show_default=True, help="Largest step of mu per epoch.")  # fmt: skip
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--mode", type=click.Choice(["default", "paper"]), default="default", show_default=True,
              help="paper: the reference's rule (ang = online level, mu never clamped).")  # fmt: skip
@click.option("--at-end", type=click.Choice(["restart", "hold", "uniform", "past"]), default=None,
              help="When mu passes the last rank: a new pass from the top (default), hold at the bottom, draw uniformly, or run on past the end (paper).")  # fmt: skip
@click.option("--assumed-accuracy", default="0.8", show_default=True, callback=parse_accuracy,
              help="Accuracy fed back each epoch: flat (0.8) or a ramp over the run (0.2:0.9).")  # fmt: skip
@options.rank_by_option
@click.option("--simulate", is_flag=True, help="Only show the dynamics (table + PNG); write no plan.")  # fmt: skip
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False, path_type=Path),
              help="PNG of mu and the draws per epoch [--simulate: OUT/schedule/simulation.png].")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print the per-epoch summary as JSON.")
def schedule(out: Path, **kw: Any) -> None:
    """Plan the GAIN-RL curriculum for a scored run: OUT/schedule/plan.parquet, and a table
    of where mu and the draws go for the accuracy you expect.

    \b
    Examples:
      gain-curate schedule runs/gsm8k --epochs 300 --batch-size 256 --assumed-accuracy 0.2:0.9 --simulate
      gain-curate schedule runs/gsm8k --epochs 200 --batch-size 256 --assumed-accuracy 0.8
      gain-curate schedule runs/gsm8k --epochs 200 --batch-size 256 --rank-by learnability
    """
    from gain_curate.simulate import plan_run

    if kw["mode"] == "paper" and kw["at_end"] not in (None, "past"):
        raise click.BadParameter("paper mode lets mu run past the end as the reference does; drop --at-end or use --mode default", param_hint="--at-end")  # fmt: skip
    sigma, sigma_fraction = kw["sigma"]
    params = {
        "batch_size": kw["batch_size"], "mu0": kw["mu0"], "sigma": sigma, "sigma_fraction": sigma_fraction,
        "n": kw["n_step"], "alpha": kw["alpha"], "beta": kw["beta"], "adj_min": kw["adj_min"],
        "adj_max": kw["adj_max"], "seed": kw["seed"],
    }  # fmt: skip
    if kw["mode"] == "paper":
        params["paper"] = True
    else:
        params["at_end"] = kw["at_end"] or "restart"
    plot_path = kw["plot_path"] or (out / "schedule" / "simulation.png" if kw["simulate"] else None)
    try:
        res = plan_run(out, params, kw["epochs"], kw["assumed_accuracy"],
                       write_plan=not kw["simulate"], plot_path=plot_path, rank_by=kw["rank_by"] or "angle")  # fmt: skip
    except (GainCurateError, ValueError) as e:
        raise click.ClickException(str(e)) from None
    if kw["as_json"]:
        click.echo(json.dumps({"plan": None if res.plan_path is None else str(res.plan_path),
                               "plot": None if plot_path is None else str(plot_path), "end_of_ranking": res.end,
                               "decile_shares": res.deciles, "epochs": res.rows}, indent=2))  # fmt: skip
        return
    print_plan(res.rows, res.n_prompts)
    click.echo(res.end)
    click.echo("draws per tenth of the ranking (top first): " + " ".join(f"{100 * x:.0f}%" for x in res.deciles))  # fmt: skip
    if plot_path is not None:
        click.echo(f"picture: {plot_path}")
    click.echo(f"plan: {res.plan_path}" if res.plan_path else "plan: none written (--simulate)")


@main.command()
@click.argument("out", type=click.Path(path_type=Path, file_okay=False))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["verl", "openrlhf"]),
    required=True,
    help="Trainer to export for.",
)
@click.option("--epoch", type=click.IntRange(min=0), help="openrlhf: the epoch of the plan to export.")  # fmt: skip
@options.rank_by_option
def export(out: Path, fmt: str, epoch: int | None, rank_by: str | None) -> None:
    """Export the plan (`gain-curate schedule`) as files a trainer reads with no gain-curate
    code: verl gets every epoch back to back in plan order, OpenRLHF one epoch per file.
    The plan's order is the one `schedule --rank-by` drew over; --rank-by here checks it.

    \b
    Examples:
      gain-curate export runs/gsm8k --format verl
      # verl 0.5-0.9: data.train_files=[runs/gsm8k/export/verl/plan.parquet] data.shuffle=False
      #               data.train_batch_size=B trainer.total_epochs=1
      gain-curate export runs/gsm8k --format openrlhf --epoch 0
      # OpenRLHF: --data.prompt_dataset runs/gsm8k/export/openrlhf/epoch-00000.jsonl
      #           --data.input_key prompt --data.apply_chat_template --data.label_key label
    """
    try:
        if fmt == "verl":
            from gain_curate.export import export_verl

            path, record = export_verl(out, rank_by)
            click.echo(
                f"verl plan ({record['epochs']} epochs x {record['batch_size']} prompts): {path}"
            )
            click.echo(f"verl: {record['flags']}")
            return
        if epoch is None:
            raise click.BadParameter("--format openrlhf exports one epoch: give --epoch K", param_hint="--epoch")  # fmt: skip
        from gain_curate.integrations.openrlhf import export_epoch

        path = export_epoch(out, epoch, rank_by)
    except GainCurateError as e:
        raise _fail(e) from None
    click.echo(f"{fmt} epoch {epoch}: {path}")


@main.command()
@click.argument("out", type=click.Path(path_type=Path, file_okay=False))
@click.option("--probe", "probe_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True,
              help="A probe saved by `validate --rollouts` (predicts the pass rate from pooled prefill states).")  # fmt: skip
@click.option(
    "--json", "as_json", is_flag=True, help="Print the manifest's prediction entry as JSON."
)
def predict(out: Path, probe_path: Path, as_json: bool) -> None:
    """Apply a pass-rate probe to a run scored with --keep-states: the shards gain
    gain_pred_pass and gain_learn_rank (high p(1-p) first), beside the angle ranking.

    \b
    Example:
      gain-curate score --model qwen2.5-coder-0.5b --data gsm8k --out runs/gsm8k --keep-states
      gain-curate predict runs/gsm8k --probe runs/validate/probe.npz
      gain-curate schedule runs/gsm8k --epochs 200 --batch-size 256 --rank-by learnability
    """
    from gain_curate.predict import predict_run

    try:
        record = predict_run(out, probe_path)
    except GainCurateError as e:
        raise _fail(e) from None
    if as_json:
        click.echo(json.dumps(record, indent=2))
        return
    s = record["pred_pass"] or {}
    click.echo(f"predicted pass rate for {record['rows_predicted']:,} rows ({record['features']}): "
               f"mean {s.get('mean', float('nan')):.3f}, from {s.get('min', float('nan')):.3f} to {s.get('max', float('nan')):.3f}")  # fmt: skip
    rho = record["spearman_pred_pass_vs_score"]
    click.echo(f"Spearman with gain_score: {'n/a' if rho is None else f'{rho:+.3f}'}")
    click.echo(f"shards: {out / 'data'} (+ gain_pred_pass, gain_learn_rank)")
    click.echo(f"next: gain-curate schedule {out} --rank-by learnability --epochs E --batch-size B")


@main.command()
@click.argument("out", type=click.Path(path_type=Path, file_okay=False))
@click.option(
    "--plot",
    "plot_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write a PNG overview here.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def inspect(out: Path, plot_path: Path | None, as_json: bool) -> None:
    """Show what a scored run holds: counts, score ranges, top and bottom prompts.

    \b
    Example:
      gain-curate inspect runs/gsm8k --plot runs/gsm8k/overview.png
    """
    from gain_curate.report import plot, summarize

    try:
        info = summarize(out)
        if plot_path is not None:
            info["plot"] = {"path": str(plot_path), "size": list(plot(out, plot_path))}
    except GainCurateError as e:
        raise _fail(e) from None
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    print_inspect(info)


@main.command()
@click.option("--run", "run", type=click.Path(path_type=Path, file_okay=False),
              help="A scored run: use its model, data, split, columns, layer, weight and template.")  # fmt: skip
@click.option("--model", "model", default="smollm2", show_default=True, help="As for score.")
@click.option(
    "--data",
    "data",
    help="As for score; needs an answer column (the reference solution). Required without --run.",
)
@options.split_option
@options.chat_template_option
@click.option(
    "--sample", type=click.IntRange(min=3), default=256, show_default=True, help="Prompts to check."
)
@options.layer_option
@click.option(
    "--out",
    "out",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("runs/validate"),
    show_default=True,
)
@options.question_key_option
@options.answer_key_option
@click.option(
    "--dtype",
    type=click.Choice(["auto", "bfloat16", "float16", "float32"]),
    default="float32",
    show_default=True,
)
@options.device_option
@click.option("--seed", type=int, default=0, show_default=True, help="Which prompts are sampled.")
@options.inter_weight_option
@click.option("--rollouts", type=click.IntRange(min=2), help="K completions per prompt: pass rate, zero-variance groups, GRPO gradient.")  # fmt: skip
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=512, show_default=True, help="Longest completion.")  # fmt: skip
@click.option("--temperature", type=float, default=1.0, show_default=True, help="Sampling temperature (also of the GRPO log-probs).")  # fmt: skip
@click.option("--reward", help="verl (verl's default_compute_score per row's data_source), trl:module:function (a TRL reward function), or module:function (completion, answer) -> float. Default: math-verify on the marked final answer (####, \\boxed{}, <answer>); none marked earns 0.")  # fmt: skip
@click.option("--rollout-batch", type=click.IntRange(min=1), default=128, show_default=True, help="Most sequences generated at once (whole groups of K, within 131,072 KV tokens: rows x (prompt + --max-new-tokens)).")  # fmt: skip
@click.option("--engine", type=click.Choice(["hf", "vllm"]), default="hf", show_default=True,
              help="Generation: hf (each prompt prefilled once, its K samples drawn from the shared KV cache; CPU or GPU), or vLLM (GPU, pip install vllm).")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@template_options
def validate(**kw: Any) -> None:
    """Check the signal on your model: gradient norm of the layer's mlp.up_proj vs score,
    and with --rollouts the RL side (pass rate, zero-variance groups, GRPO gradient).

    \b
    Example:
      gain-curate validate --model smollm2 --data ../shared/data/gsm8k/train.jsonl --sample 256
      gain-curate validate --run runs/gsm8k --sample 256   # the run's model, data and template
      gain-curate validate --run runs/gsm8k --sample 64 --rollouts 8   # + pass rates, GRPO gradient
    """
    from gain_curate.validate import RUN_SETTINGS, run_settings, run_validate

    ctx = click.get_current_context()
    given = [p for p in ctx.command.params if ctx.get_parameter_source(p.name) == click.core.ParameterSource.COMMANDLINE]  # fmt: skip
    try:
        if kw["run"] is not None:
            clash = [
                p.opts[0] for p in given if p.name in (*RUN_SETTINGS, *TEMPLATE_FLAGS, "dtype")
            ]
            if clash:
                raise click.UsageError(f"--run takes the model, data and template from the run: drop {', '.join(clash)}")  # fmt: skip
            settings = run_settings(kw["run"])
        elif kw["data"] is None:
            raise click.UsageError("give --data (a dataset with reference solutions) or --run OUT (a scored run)")  # fmt: skip
        else:
            settings = {k: kw[k] for k in RUN_SETTINGS if k != "template"}
            settings["template"] = template_from_flags(kw)
            settings["template_flags"] = options.template_flags_given(
                kw
            )  # the rest: per data source
            settings["chat_template"] = kw["chat_template"] and str(kw["chat_template"])
        rollouts = None
        if kw["rollouts"] is not None:
            from gain_curate.rollouts import RolloutSettings

            rollouts = RolloutSettings(k=kw["rollouts"], max_new_tokens=kw["max_new_tokens"], temperature=kw["temperature"],
                                       seed=kw["seed"], batch_rows=kw["rollout_batch"], engine=kw["engine"])  # fmt: skip
        with phases(quiet=kw["as_json"]) as hooks:
            dtype = settings.pop("dtype", kw["dtype"])  # --run: the run's own dtype
            result = run_validate(**settings, sample=kw["sample"], out=kw["out"], dtype=dtype, device=kw["device"],
                                  seed=kw["seed"], rollouts=rollouts, reward=kw["reward"], hooks=hooks)  # fmt: skip
    except GainCurateError as e:
        raise _fail(e) from None
    if kw["as_json"]:
        click.echo(json.dumps(result, indent=2))
        return
    print_validate(result)
    click.echo(f"table: {kw['out'] / 'validate.parquet'}  plot: {kw['out'] / 'validate.png'}")
    if "rollouts" in result:
        click.echo(f"completions: {kw['out'] / 'rollouts' / 'completions.jsonl'}")
        files = result["rollouts"].get("probe_files") or {}
        if files:  # the scored layer's last-token probe first: a --keep-states run takes it
            first = next((f for n, f in files.items() if n == f"last_token@L{result['layer']}"), next(iter(files.values())))  # fmt: skip
            click.echo(f"probes: {', '.join(Path(f).name for f in files.values())} in {Path(first).parent}; "
                       f"apply one to a run scored with --keep-states: gain-curate predict RUN --probe '{first}'")  # fmt: skip


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
    from gain_curate.merge import merge_run

    try:
        with progress(quiet=as_json) as hooks:
            result = merge_run(out, hooks)
    except GainCurateError as e:
        raise _fail(e) from None
    if as_json:
        click.echo(json.dumps(_summary_json(result), indent=2))
    else:
        print_summary(result)


def _summary_json(result: Any) -> dict[str, Any]:
    m = result.manifest
    return {
        "out": str(result.out),
        "manifest": str(result.out / "gain_manifest.json"),
        "shards": [str(result.out / s["path"]) for s in m["shards"]],
        "counts": m["counts"],
        "seconds": m["seconds"],
        "spearman_score_vs_question_tokens": m["stats"]["spearman_score_vs_question_tokens"],
        "config_hash": m["config_hash"],
    }


if __name__ == "__main__":
    sys.exit(main())
