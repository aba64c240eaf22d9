"""`gain-curate validate`: does angle concentration track gradient size on YOUR model?

For a sample of prompts, the Frobenius norm of the gradient of the chosen layer's
`mlp.up_proj` weight (the weight the theory is about) under the supervised loss of the
prompt's reference solution (mean token cross-entropy of the answer column, rendered as
the assistant turn after the scoring conversation), against gain_score, C_intra, C_inter
and question length. Report what it finds, whatever it is.

run_validate runs the phases in order, each with typed inputs and outputs: sample the
prompts (sample_prompts), score them (score_sample: a scored run's own rows, else the
executor's run_score), load the model (load_policy), the supervised gradients
(supervised.py), with `rollouts` the RL side (validate_rl.py: rollouts.py, the probes,
the recommendation), then the result and its files (write_outputs).

What is read of a scored run: run_inputs.py; the figure: plots.py.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from gain_curate.checks import run_inputs
from gain_curate.checks.validate_types import (
    Policy,
    Sample,
    Scored,
    SignalColumns,
    Supervised,
    ValidateRequest,
    ValidateResult,
)
from gain_curate.inputs.template import ScoringTemplate

if TYPE_CHECKING:
    from gain_curate.executor.score import ScoreConfig


def run_validate(req: ValidateRequest) -> ValidateResult:
    """The supervised-gradient check, and with `req.rollouts` the RL side: pass rate,
    learnability, zero-variance groups and the GRPO gradient (rollouts.py). Writes
    OUT/sample.jsonl, OUT/score/, OUT/validate.{json,parquet,png} (+ OUT/rollouts, OUT/probes)."""
    from gain_curate.checks.supervised import correlation_intervals, correlations

    sample = sample_prompts(req)
    req.out.mkdir(parents=True, exist_ok=True)
    clock = time.perf_counter()
    cfg = write_sample(req, sample)
    scored = score_sample(req, sample, cfg)
    seconds = {"score": round(time.perf_counter() - clock, 1)}  # where validate spends its time
    policy = load_policy(req)
    norms, losses = supervised_gradients(policy, scored.template, sample)
    seconds["load_and_supervised_gradients"] = round(
        time.perf_counter() - clock - seconds["score"], 1
    )
    cols = SignalColumns.of(scored.rows)
    supervised = Supervised(
        model=policy.name,
        data=req.data,
        sample=len(sample.rows),
        layer=policy.shape.layer,
        seed=req.seed,
        dtype=str(next(policy.lm.parameters()).dtype).removeprefix("torch."),
        device=policy.device.type,
        weight=f"layers[{policy.shape.layer}].mlp.up_proj.weight",
        model_revision=scored.run.manifest.model.revision,
        inter_weight=req.inter_weight,
        template=scored.template.to_dict(),
        correlations=correlations(norms, *cols.arrays()),
        intervals=correlation_intervals(norms, *cols.arrays(), seed=req.seed),
    )
    rl = None
    if req.rollouts is not None:
        from gain_curate.checks.validate_rl import rl_side

        rl = rl_side(req, sample, scored, policy, cfg, cols)
        seconds.update(rl.seconds)
    result = ValidateResult(supervised, rl, seconds)
    write_outputs(req.out, result, sample, cols, norms, losses)
    return result


def sample_prompts(req: ValidateRequest) -> Sample:
    """`req.sample` rows (seeded) with a question and an answer; with `req.run` only rows the
    run scored (it may have used a row limit). With rollouts, the reward is checked on them
    before any model runs."""
    from gain_curate.errors import InputError
    from gain_curate.inputs.answers import column_values
    from gain_curate.inputs.sources import load_source

    src = load_source(
        req.data, question_key=req.question_key, answer_key=req.answer_key, split=req.split
    )
    if src.spec.answer_key is None:
        raise InputError(
            f"{req.data} has no answer column: validate needs reference solutions; "
            "pass `answer_key`"
        )
    raw_answers = column_values(src.table, src.spec.answer_key)  # before extraction
    ok = [
        i
        for i in range(src.table.num_rows)
        if src.problems[i] is None and isinstance(raw_answers[i], (str, int, float))
    ]
    by_input = None
    if req.run is not None:
        from gain_curate.runfolder.run import open_run

        by_input = {r["extra_info"]["index"]: r for r in open_run(req.run).table().to_pylist()}
        ok = [i for i in ok if i in by_input]
    if not ok:
        raise InputError(f"{req.data}: no row has both a question and an answer")
    rng = np.random.default_rng(req.seed)
    picked = sorted(rng.choice(ok, size=min(req.sample, len(ok)), replace=False).tolist())
    solutions = [str(raw_answers[i]) for i in picked]
    golds = reward_rows = None
    if req.rollouts is not None:  # fail on a bad reward before any model runs
        from gain_curate.checks.rewards import check_reward
        from gain_curate.checks.rollouts import check_settings

        check_settings(req.rollouts)
        golds = [
            src.answers[i] if src.answers[i] is not None else solutions[k]
            for k, i in enumerate(picked)
        ]
        reward_rows = run_inputs.reward_rows(src, picked, golds, by_input)
        check_reward(req.reward, reward_rows, golds)
    questions = [str(src.questions[i]) for i in picked]  # every sampled row has one
    return Sample(picked, questions, solutions, src.spec.data_source, golds, reward_rows, by_input)


def write_sample(req: ValidateRequest, sample: Sample) -> ScoreConfig:
    """OUT/sample.jsonl (question, answer), and the score config of it: OUT/score. With
    rollouts it keeps the pooled prefill states (the probes' features)."""
    from gain_curate.executor.score import ScoreConfig
    from gain_curate.runfolder.store import write_bytes_atomic

    sample_file = req.out / "sample.jsonl"
    lines = (
        json.dumps({"question": q, "answer": a}) + "\n"
        for q, a in zip(sample.questions, sample.solutions)
    )
    write_bytes_atomic(sample_file, "".join(lines).encode())
    return ScoreConfig(
        data=str(sample_file),
        model=req.model,
        out=req.out / "score",
        template=req.template,
        layer=req.layer,
        inter_weight=req.inter_weight,
        dtype=req.dtype,
        device=req.device,
        chat_template=req.chat_template,
        overwrite=True,
        template_flags=req.template_flags,
        data_source=sample.data_source,
        keep_states=req.rollouts is not None,
    )


def score_sample(req: ValidateRequest, sample: Sample, cfg: ScoreConfig) -> Scored:
    """The scored run's own rows (nothing is scored again), else the sample scored by the
    executor (run_score) into OUT/score with the conversation `score` would use (the
    template flags given, the rest per data source)."""
    from gain_curate.runfolder.run import open_run

    if sample.by_input is not None:
        assert req.run is not None
        rows = [sample.by_input[i] for i in sample.rows]
        return Scored(open_run(req.run), rows, req.template)
    from gain_curate.executor.launch import run_score

    run_score(cfg)
    run = open_run(cfg.out)
    by_row = {r["extra_info"]["index"]: r for r in run.table().to_pylist()}
    template = ScoringTemplate.from_dict(run.manifest.section("signal")["template"])
    return Scored(run, [by_row[k] for k in range(len(sample.rows))], template)


def load_policy(req: ValidateRequest) -> Policy:
    """The whole causal LM (every layer: the loss needs the logits) on req.device."""
    import torch
    from transformers import AutoModelForCausalLM

    from gain_curate.runtime.models import load_tokenizer, resolve_dtype, resolve_model
    from gain_curate.runtime.resolve import device_kind
    from gain_curate.runtime.transformers_compat import from_pretrained_kwargs, quiet_transformers
    from gain_curate.runtime.truncated import model_shape

    ref = resolve_model(req.model)
    chat = Path(req.chat_template).read_text(encoding="utf-8") if req.chat_template else None
    tok = load_tokenizer(ref, chat_template=chat)
    dev = torch.device(req.device if req.device != "auto" else device_kind("auto"))
    shape = model_shape(ref, req.layer)
    with quiet_transformers():
        lm = AutoModelForCausalLM.from_pretrained(
            ref.path, **from_pretrained_kwargs(resolve_dtype(req.dtype, dev), ref.revision)
        ).to(dev)
    if dev.type == "cpu":  # no page faults for each batch's large logits (sampling.py)
        from gain_curate.checks.sampling import keep_freed_memory

        keep_freed_memory()
    return Policy(ref.name, lm, tok, shape, dev)


def supervised_gradients(
    policy: Policy, template: ScoringTemplate, sample: Sample
) -> tuple[np.ndarray, np.ndarray]:
    """Per prompt (n,): ||dL/dW_up||_F and the loss L of its reference solution."""
    from gain_curate import progress
    from gain_curate.checks.supervised import build_examples, grad_norms

    examples = build_examples(policy.tok, template, sample.questions, sample.solutions)
    tok = policy.tok
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    done = progress.step("supervised gradients", len(examples))
    return grad_norms(policy.lm, examples, policy.shape.layer, pad_id=pad, on_batch=done)


def write_outputs(
    out: Path,
    result: ValidateResult,
    sample: Sample,
    cols: SignalColumns,
    norms: np.ndarray,
    losses: np.ndarray,
) -> None:
    """OUT/validate.parquet (one row per prompt), OUT/validate.json ({summary, rows}),
    OUT/validate.png; with rollouts OUT/rollouts/completions.jsonl."""
    import pyarrow as pa

    from gain_curate.checks.plots import scatter
    from gain_curate.runfolder.store import write_bytes_atomic, write_table_atomic

    rows: dict[str, Any] = {
        "input_row": sample.rows,
        "question": sample.questions,
        "gain_score": cols.score,
        "gain_c_intra": cols.c_intra,
        "gain_c_inter": cols.c_inter,
        "question_tokens": cols.q_len,
        "grad_norm": norms,
        "loss": losses,
    }
    rl = result.rollouts
    if rl is not None:
        rows.update(rl.table_columns())
        records = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rl.run.records)
        write_bytes_atomic(out / "rollouts" / "completions.jsonl", records.encode("utf-8"))
    summary = result.to_json()
    write_table_atomic(pa.table(rows), out, Path("validate.parquet"))
    saved = {"summary": summary, "rows": {k: list(map(_jsonable, v)) for k, v in rows.items()}}
    write_bytes_atomic(out / "validate.json", json.dumps(saved, indent=1).encode())
    scatter(out / "validate.png", norms, cols.score, cols.q_len, summary, rows if rl else None)


def _jsonable(v: Any) -> Any:
    if isinstance(v, (np.floating, float)):
        return None if not np.isfinite(v) else float(v)
    return v.item() if isinstance(v, np.generic) else v
