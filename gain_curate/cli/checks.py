"""`gain-curate inspect`, `validate` and `predict`: the checks' verbs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

import gain_curate.cli.options as options
from gain_curate.cli.app import main
from gain_curate.cli.calibration import calibrate
from gain_curate.cli.options import (
    template_options,
)
from gain_curate.cli.validate_flags import print_validate_files, validate_request
from gain_curate.cli.views import print_inspect, print_validate
from gain_curate.progress import on_stderr


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
    from gain_curate.checks.report import plot, summarize

    info: dict[str, Any] = dict(summarize(out))
    if plot_path is not None:
        info["plot"] = {"path": str(plot_path), "size": list(plot(out, plot_path))}
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    print_inspect(info)


@main.command()
@click.option(
    "--run",
    "run",
    type=click.Path(path_type=Path, file_okay=False),
    help="A scored run: use its model, data, split, columns, layer, weight and template.",
)
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
@click.option(
    "--rollouts",
    type=click.IntRange(min=2),
    help="K completions per prompt: pass rate, zero-variance groups, GRPO gradient.",
)
@click.option(
    "--max-new-tokens",
    type=click.IntRange(min=1),
    default=512,
    show_default=True,
    help="Longest completion.",
)
@click.option(
    "--temperature",
    type=float,
    default=1.0,
    show_default=True,
    help="Sampling temperature (also of the GRPO log-probs).",
)
@click.option(
    "--reward",
    help="verl (verl's default_compute_score per row's data_source), trl:module:function "
    "(a TRL reward function), or module:function (completion, answer) -> float. Default: "
    "math-verify on the marked final answer (####, \\boxed{}, <answer>); none marked earns 0.",
)
@click.option(
    "--rollout-batch",
    type=click.IntRange(min=1),
    default=128,
    show_default=True,
    help="Most sequences generated at once (whole groups of K, within 131,072 KV tokens: "
    "rows x (prompt + --max-new-tokens)).",
)
@click.option(
    "--engine",
    type=click.Choice(["hf", "vllm"]),
    default="hf",
    show_default=True,
    help="Generation: hf (each prompt prefilled once, its K samples drawn from the shared KV "
    "cache; CPU or GPU), or vLLM (GPU, pip install vllm).",
)
@click.option(
    "--pass-rate-key",
    help="Calibrate from pass rates you already have (no generation, no model load; needs "
    "--run of a run scored with --keep-states): a column of the run's rows, dotted for nested "
    "fields (extra_info.pass_rate); with --pass-rates, the file's column (default pass_rate). "
    "The supervised-gradient check is not run in this mode.",
)
@click.option(
    "--pass-rate-k-key",
    help="With --pass-rate-key/--pass-rates: the column holding each prompt's number of "
    "samples K (recorded beside the figures).",
)
@click.option(
    "--pass-rates",
    "pass_rates",
    type=click.Path(path_type=Path, dir_okay=False),
    help="A JSONL or Parquet file of pass rates in [0, 1], one row per prompt, naming it by "
    "gain_uid or by question text; calibrates as --pass-rate-key does.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@template_options
def validate(**kw: Any) -> None:
    """Check the signal on your model: gradient norm of the layer's mlp.up_proj vs score,
    and with --rollouts the RL side (pass rate, zero-variance groups, GRPO gradient).

    \b
    Example:
      gain-curate validate --model Qwen/Qwen2.5-0.5B-Instruct --data gsm8k --sample 256
      gain-curate validate --run runs/gsm8k --sample 256   # the run's model, data and template
      gain-curate validate --run runs/gsm8k --sample 64 --rollouts 8   # + pass rates, GRPO gradient
      gain-curate validate --run runs/gsm8k --pass-rates rates.jsonl --json   # no generation

    \b
    With --pass-rate-key or --pass-rates (a --run scored with --keep-states), no model is
    loaded: a nested-CV ridge probe over the run's kept states is compared with length and
    the angle score; --json carries "recommended" and "baselines", and the probe lands in
    OUT/probes/ (recommended.npz when it beats both: gain-curate predict RUN --from OUT).
    """
    from gain_curate.checks.validate import run_validate

    ctx = click.get_current_context()
    given = [
        p
        for p in ctx.command.params
        if ctx.get_parameter_source(p.name) == click.core.ParameterSource.COMMANDLINE
    ]
    if kw["pass_rate_key"] is not None or kw["pass_rates"] is not None:
        calibrate(kw, given)
        return
    if kw["pass_rate_k_key"] is not None:
        raise click.UsageError("--pass-rate-k-key goes with --pass-rate-key or --pass-rates")
    req = validate_request(kw, given)
    with on_stderr(quiet=kw["as_json"]):  # the library's steps (gain_curate.progress)
        result = run_validate(req).to_json()
    if kw["as_json"]:
        click.echo(json.dumps(result, indent=2))
        return
    if "verdict" in result:  # --rollouts: which ranking to train on, first
        click.echo(f"verdict: {result['verdict']}")
    print_validate(result)
    print_validate_files(result, kw["out"])


@main.command()
@click.argument("out", type=click.Path(path_type=Path, file_okay=False))
@click.option(
    "--probe",
    "probe_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A probe saved by `validate` (predicts the pass rate from the run's kept states), "
    "e.g. VALIDATE_OUT/probes/recommended.npz.",
)
@click.option(
    "--from",
    "from_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="A validate --out folder: apply the probe its validate.json recommends.",
)
@click.option(
    "--json", "as_json", is_flag=True, help="Print the manifest's prediction entry as JSON."
)
def predict(out: Path, probe_path: Path | None, from_dir: Path | None, as_json: bool) -> None:
    """Apply a pass-rate probe to a run scored with --keep-states: the shards gain
    gain_pred_pass and gain_learn_rank (high p(1-p) first), beside the angle ranking.

    \b
    Example:
      gain-curate score --model Qwen/Qwen2.5-0.5B-Instruct --data gsm8k --out runs/gsm8k \\
        --keep-states
      gain-curate validate --run runs/gsm8k --sample 64 --rollouts 8   # writes runs/validate/probes
      gain-curate predict runs/gsm8k --probe runs/validate/probes/last_token@L23.npz
      gain-curate predict runs/gsm8k --from runs/validate   # validate's recommended probe
      gain-curate schedule runs/gsm8k --epochs 200 --batch-size 256 --rank-by learnability
    """
    from gain_curate.checks.predict import predict_run, recommended_probe

    if (probe_path is None) == (from_dir is None):
        raise click.UsageError("give --probe FILE or --from VALIDATE_OUT (one of them)")
    if from_dir is not None:
        probe_path = recommended_probe(from_dir)
    assert probe_path is not None
    record = predict_run(out, probe_path)
    if as_json:
        click.echo(json.dumps(record, indent=2))
        return
    s = record["pred_pass"] or {}
    click.echo(
        f"predicted pass rate for {record['rows_predicted']:,} rows ({record['features']}): "
        f"mean {s.get('mean', float('nan')):.3f}, "
        f"from {s.get('min', float('nan')):.3f} to {s.get('max', float('nan')):.3f}"
    )
    rho = record["spearman_pred_pass_vs_score"]
    click.echo(f"Spearman with gain_score: {'n/a' if rho is None else f'{rho:+.3f}'}")
    click.echo(f"shards: {out / 'data'} (+ gain_pred_pass, gain_learn_rank)")
    click.echo(f"next: gain-curate schedule {out} --rank-by learnability --epochs E --batch-size B")
