"""The CLI's shared options and their parsers: each flag is defined once, with the one
line a bad value gets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click


def _stack(*decorators: Any) -> Any:
    def apply(f: Any) -> Any:
        for d in reversed(decorators):
            f = d(f)
        return f

    return apply


TEMPLATE_FLAGS = (
    "system_prompt",
    "system_prompt_file",
    "no_system_prompt",
    "few_shot",
    "instruction",
)


def template_options(f: Any) -> Any:
    """The scoring conversation's options, the same on every command that renders it."""
    opts = [
        click.option(
            "--system-prompt",
            help="System prompt of the scoring conversation. Default: none for data sources "
            "verl's default reward knows (openai/gsm8k, MATH), else an R1-style reasoning prompt.",
        ),
        click.option(
            "--system-prompt-file",
            type=click.Path(exists=True, dir_okay=False, path_type=Path),
            help="Read the system prompt from a file.",
        ),
        click.option("--no-system-prompt", is_flag=True, help="No system prompt."),
        click.option(
            "--few-shot",
            help="gainrl (one worked example), none, or a JSON file. Default: none for "
            "openai/gsm8k and MATH, else gainrl.",
        ),
        click.option(
            "--instruction",
            help="Text appended after the question, outside the question segment "
            "('' for none). Default: verl's own for openai/gsm8k (#### n) and MATH "
            "(\\boxed{}), else none.",
        ),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def template_flags_given(kw: dict[str, Any]) -> tuple[str, ...]:
    """The template fields set on the command line; the others follow the data source."""
    given = {
        "system_prompt": kw["system_prompt"] is not None
        or kw["system_prompt_file"] is not None
        or kw["no_system_prompt"],
        "few_shot": kw["few_shot"] is not None,
        "instruction": kw["instruction"] is not None,
    }
    return tuple(k for k, v in given.items() if v)


def template_from_flags(kw: dict[str, Any]) -> Any:
    from gain_curate.inputs.template import template_from_options

    return template_from_options(
        system_prompt=kw["system_prompt"],
        system_prompt_file=kw["system_prompt_file"],
        no_system_prompt=kw["no_system_prompt"],
        few_shot=kw["few_shot"],
        instruction=kw["instruction"],
    )


def parse_sigma(
    ctx: click.Context, param: click.Parameter, value: str
) -> tuple[float, float | None]:
    """`1000` (rank positions) or `0.05N` (a fraction of the number of prompts)."""
    try:
        if value.upper().endswith("N"):
            frac = float(value[:-1])
            if frac <= 0:
                raise ValueError
            return 1.0, frac
        sigma = float(value)
        if sigma <= 0:
            raise ValueError
        return sigma, None
    except ValueError:
        raise click.BadParameter(
            f"{value!r}: give a positive number of rank positions (1000) or a fraction of N (0.05N)"
        ) from None


def parse_accuracy(ctx: click.Context, param: click.Parameter, value: str) -> Any:
    from gain_curate.curriculum.simulate import AccuracyCurve

    try:
        return AccuracyCurve.parse(value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


def parse_shard(value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    try:
        i, n = (int(x) for x in value.split("/"))
        if not 0 <= i < n:
            raise ValueError
    except ValueError:
        raise click.BadParameter(f"{value!r}: expected I/N with 0 <= I < N, e.g. 0/4") from None
    return i, n


# Flags that score and validate share (validate checks what score ranked): one definition each.
question_key_option = click.option(
    "--question-key", help="Question column (dotted for nested fields). Default: detected."
)
answer_key_option = click.option(
    "--answer-key", help="Answer column (dotted for nested fields). Default: detected."
)
split_option = click.option(
    "--split",
    help="The input's split (what a hub dataset reads, extra_info.split, shard names, verl's "
    "train_files or val_files). Default: the file's name (test.jsonl: test), else train.",
)
chat_template_option = click.option(
    "--chat-template",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Jinja chat template for a model that ships none.",
)
layer_option = click.option(
    "--layer",
    type=int,
    help="Decoder layer whose MLP input is used (negative counts from the end). Default: last.",
)
inter_weight_option = click.option(
    "--inter-weight",
    type=float,
    default=1.0,
    show_default=True,
    help="w in score = C_intra + w C_inter (8 reproduces the reference code).",
)
rank_by_option = click.option(
    "--rank-by",
    type=click.Choice(["angle", "learnability", "length", "learnability-online", "uniform"]),
    default=None,
    help="The order drawn over: angle (the default), learnability (after `predict`), length, "
    "uniform, learnability-online (trainers; simulated with --simulate --pass-rates FILE).",
)
device_option = click.option(
    "--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1, ..."
)


score_options = _stack(
    click.option(
        "--model",
        "model",
        default="smollm2",
        show_default=True,
        help="Hub id, short name (Qwen2.5-7B), local folder, or `smollm2` (embedded, offline).",
    ),
    click.option(
        "--data",
        "data",
        default="champ",
        show_default=True,
        help="Preset (gsm8k, math, champ), hub dataset id, or a .jsonl/.json/.parquet/.csv "
        "file or save_to_disk folder.",
    ),
    click.option(
        "--out", "out", type=click.Path(path_type=Path), required=True, help="Output folder."
    ),
    question_key_option,
    answer_key_option,
    split_option,
    chat_template_option,
    layer_option,
    inter_weight_option,
    click.option(
        "--max-tokens",
        type=click.IntRange(min=1),
        default=4096,
        show_default=True,
        help="Longer scoring conversations are not scored (null scores, reason too_long).",
    ),
    click.option(
        "--dtype",
        type=click.Choice(["auto", "bfloat16", "float16", "float32"]),
        default="auto",
        show_default=True,
        help="auto: bfloat16 on GPUs and on CPUs with bf16 matrix units (AMX, AVX512-BF16), "
        "else float32.",
    ),
    device_option,
    click.option(
        "--token-budget",
        type=click.IntRange(min=1),
        help="Tokens per forward batch. Default: 32768 on GPU, 2048 on CPU.",
    ),
    click.option(
        "--kernel",
        type=click.Choice(["auto", "triton", "torch"]),
        default="auto",
        show_default=True,
        help="Segment-sum reduction: auto = Triton on CUDA, torch elsewhere.",
    ),
    click.option(
        "--no-prefix-sharing",
        is_flag=True,
        help="Run every conversation whole (slower; for checking).",
    ),
    click.option(
        "--part-rows",
        type=click.IntRange(min=1),
        default=None,
        help="Input rows per work part, the unit of resume and of distribution "
        "[default: parts of about 20 s of this device's work, so an interrupted run "
        "loses at most that much; never changes the output].",
    ),
    click.option(
        "--shard",
        callback=lambda c, p, v: parse_shard(v),
        help="I/N: score only the parts whose number mod N is I, then stop (merge later).",
    ),
    click.option(
        "--backend",
        type=click.Choice(["local", "ray"]),
        default="local",
        show_default=True,
        help="local: this process (all local GPUs); ray: Ray Data GPU actors.",
    ),
    click.option("--ray-address", help="Ray cluster address (default: start or join a local Ray)."),
    click.option(
        "--num-gpus",
        type=click.IntRange(min=0),
        help="Ray: model replicas (one GPU each); 0 = CPU actors.",
    ),
    click.option(
        "--data-source",
        help="verl data_source of every row (what verl's reward dispatches on, e.g. openai/gsm8k). "
        "Default: the input's own column, the preset's hub id, GSM8K/MATH recognised by shape, "
        "else the file's name.",
    ),
    click.option(
        "--train-prompt",
        type=click.Choice(["conversation", "question"]),
        default="conversation",
        show_default=True,
        help="conversation: `prompt` holds the scored conversation (system prompt, few-shot, "
        "question, instruction); question: one user turn (question + instruction) while the "
        "template is scored.",
    ),
    click.option("--rows-per-shard", type=click.IntRange(min=1), default=50_000, show_default=True),
    click.option(
        "--keep-states",
        is_flag=True,
        help="Also keep each prompt's hidden states in OUT/states.npz (float16) for `gain-curate "
        "predict`: question_mean and last_token (its question tokens' mean, its last one) at the "
        "scored layer; prompt_end@L<k> (the residual stream after k layers at the prompt's last "
        "token, generation prompt included) per --probe-layers k. Same shard bytes either way.",
    ),
    click.option("--limit", type=click.IntRange(min=1), help="Score only the first N rows."),
    click.option("--overwrite", is_flag=True, help="Replace a run already in --out."),
    click.option(
        "--json", "as_json", is_flag=True, help="Print a machine-readable summary on stdout."
    ),
)


def score_config(kw: dict[str, Any]) -> Any:
    """The ScoreConfig of `score`'s flags: every flag named as a config field passes as it
    is; the few that differ are derived here (the template from its flags, which of them
    were given, --no-prefix-sharing, the chat template's path)."""
    from dataclasses import fields

    from gain_curate.scoring.config import ScoreConfig

    derived = {
        "template": template_from_flags(kw),
        "template_flags": template_flags_given(kw),
        "share_prefix": not kw["no_prefix_sharing"],
        "chat_template": str(kw["chat_template"]) if kw["chat_template"] else None,
    }
    named = {
        f.name: kw[f.name] for f in fields(ScoreConfig) if f.name in kw and f.name not in derived
    }
    return ScoreConfig(**named, **derived)
