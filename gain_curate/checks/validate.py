"""`gain-curate validate`: does angle concentration track gradient size on YOUR model?

For a sample of prompts, the Frobenius norm of the gradient of the chosen layer's
`mlp.up_proj` weight (the weight the theory is about) under the supervised loss of the
prompt's reference solution (mean token cross-entropy of the answer column, rendered as
the assistant turn after the scoring conversation), against gain_score, C_intra, C_inter
and question length. Report what it finds, whatever it is.

The supervised gradients: supervised.py; the rollouts (with --rollouts): rollouts.py; the
probes' features: probe_features.py; what is read of a scored run: run_inputs.py; the
figure: plots.py.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from gain_curate.checks import run_inputs
from gain_curate.checks.plots import scatter
from gain_curate.checks.probe_features import probe_features, save_probes
from gain_curate.checks.supervised import (
    build_examples,
    correlation_intervals,
    correlations,
    grad_norms,
)
from gain_curate.inputs.template import ScoringTemplate


def run_validate(
    model: str,
    data: str,
    *,
    sample: int,
    layer: int | None,
    out: Path,
    template: ScoringTemplate,
    answer_key: str | None = None,
    question_key: str | None = None,
    dtype: str = "float32",
    device: str = "auto",
    seed: int = 0,
    inter_weight: float = 1.0,
    split: str = "train",
    chat_template: str | None = None,
    rollouts: Any = None,
    reward: str | None = None,
    hooks: Any = None,
    run: Path | None = None,
    template_flags: tuple[str, ...] | None = None,
) -> dict[str, Any]:
    """The supervised-gradient check, and with `rollouts` (a RolloutSettings) the RL side:
    pass rate, learnability, zero-variance groups and the GRPO gradient (rollouts.py)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch
    from transformers import AutoModelForCausalLM

    from gain_curate.errors import InputError
    from gain_curate.executor.launch import run_score
    from gain_curate.executor.score import ScoreConfig
    from gain_curate.inputs.answers import column_values
    from gain_curate.inputs.sources import load_source
    from gain_curate.runfolder.store import write_bytes_atomic, write_table_atomic
    from gain_curate.runtime.models import load_tokenizer, resolve_dtype, resolve_model
    from gain_curate.runtime.transformers_compat import from_pretrained_kwargs, quiet_transformers
    from gain_curate.runtime.truncated import model_shape

    src = load_source(data, question_key=question_key, answer_key=answer_key, split=split)
    if src.spec.answer_key is None:
        raise InputError(
            f"{data} has no answer column: validate needs reference solutions; pass `answer_key`"
        )
    raw_answers = column_values(
        src.table, src.spec.answer_key
    )  # the solution text, before extraction
    ok = [
        i
        for i in range(src.table.num_rows)
        if src.problems[i] is None and isinstance(raw_answers[i], (str, int, float))
    ]
    by_input = None
    if run is not None:  # only rows the run scored (it may have used --limit)
        from gain_curate.runfolder import store

        manifest = store.read_manifest(run)
        ranked = pa.concat_tables(
            [pq.read_table(run / s["path"]) for s in manifest["shards"]]
        ).to_pylist()
        by_input = {r["extra_info"]["index"]: r for r in ranked}
        ok = [i for i in ok if i in by_input]
    if not ok:
        raise InputError(f"{data}: no row has both a question and an answer")
    rng = np.random.default_rng(seed)
    picked = sorted(rng.choice(ok, size=min(sample, len(ok)), replace=False).tolist())
    questions = [src.questions[i] for i in picked]
    solutions = [str(raw_answers[i]) for i in picked]
    if rollouts is not None:  # fail on a bad --reward before any model runs
        from gain_curate.checks.rewards import check_reward
        from gain_curate.checks.rollouts import check_settings

        check_settings(rollouts)
        golds = [
            src.answers[i] if src.answers[i] is not None else solutions[k]
            for k, i in enumerate(picked)
        ]
        reward_rows = run_inputs.reward_rows(src, picked, golds, by_input)
        check_reward(reward, reward_rows, golds)

    out.mkdir(parents=True, exist_ok=True)
    clock = time.perf_counter()
    sample_file = out / "sample.jsonl"
    sample_lines = (
        json.dumps({"question": q, "answer": a}) + "\n" for q, a in zip(questions, solutions)
    )
    write_bytes_atomic(sample_file, "".join(sample_lines).encode())
    # pooled prefill states for the probes (rollouts only): the run's own where it kept them
    keep = rollouts is not None
    cfg = ScoreConfig(
        data=str(sample_file),
        model=model,
        out=out / "score",
        template=template,
        layer=layer,
        inter_weight=inter_weight,
        dtype=dtype,
        device=device,
        chat_template=chat_template,
        overwrite=True,
        template_flags=template_flags,
        data_source=src.spec.data_source,
        keep_states=keep,
    )
    if by_input is not None:  # the run's own scores of these rows: nothing is scored again
        by_row = {k: by_input[i] for k, i in enumerate(picked)}
    else:
        manifest = run_score(cfg).manifest
        # the conversation it scored (flags given, the rest per data source, as `score`)
        template = ScoringTemplate.from_dict(manifest["signal"]["template"])
        table = pa.concat_tables(
            [pq.read_table(out / "score" / s["path"]) for s in manifest["shards"]]
        ).to_pylist()
        by_row = {r["extra_info"]["index"]: r for r in table}

    seconds = {"score": round(time.perf_counter() - clock, 1)}  # where validate spends its time
    ref = resolve_model(model)
    tok = load_tokenizer(
        ref,
        chat_template=Path(chat_template).read_text(encoding="utf-8") if chat_template else None,
    )
    dev = torch.device(
        device if device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    )
    shape = model_shape(ref, layer)
    with quiet_transformers():
        lm = AutoModelForCausalLM.from_pretrained(
            ref.path, **from_pretrained_kwargs(resolve_dtype(dtype, dev), ref.revision)
        ).to(dev)
    if dev.type == "cpu":  # no page faults for each batch's large logits (sampling.py)
        from gain_curate.checks.sampling import keep_freed_memory

        keep_freed_memory()
    examples = build_examples(tok, template, questions, solutions)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    done = hooks.add("supervised gradients", len(examples)) if hooks else None
    norms, losses = grad_norms(lm, examples, shape.layer, pad_id=pad, on_batch=done)
    seconds["load_and_supervised_gradients"] = round(
        time.perf_counter() - clock - seconds["score"], 1
    )

    def col(name: str) -> np.ndarray:
        return np.array(
            [np.nan if by_row[k][name] is None else by_row[k][name] for k in range(len(picked))],
            dtype=np.float64,
        )

    score, c_intra, c_inter, q_len = (
        col("gain_score"),
        col("gain_c_intra"),
        col("gain_c_inter"),
        col("gain_tokens_question"),
    )
    result = {
        "model": ref.name,
        "data": data,
        "sample": len(picked),
        "layer": shape.layer,
        "seed": seed,
        "dtype": str(next(lm.parameters()).dtype).removeprefix("torch."),
        "device": dev.type,
        "weight": f"layers[{shape.layer}].mlp.up_proj.weight",
        "model_revision": manifest["model"]["revision"],
        "inter_weight": inter_weight,
        "template": template.to_dict(),
        "loss": "mean cross-entropy of the reference solution as the assistant turn",
        **correlations(norms, score, c_intra, c_inter, q_len),
        **correlation_intervals(norms, score, c_intra, c_inter, q_len, seed=seed),
    }
    rows = {
        "input_row": picked,
        "question": questions,
        "gain_score": score,
        "gain_c_intra": c_intra,
        "gain_c_inter": c_inter,
        "question_tokens": q_len,
        "grad_norm": norms,
        "loss": losses,
    }
    if rollouts is not None:
        from gain_curate.checks.calibrate import recommend_sampled, sampled_states
        from gain_curate.checks.probe import fit_probes, fitted_on
        from gain_curate.checks.rollout_stats import SIGNALS, TARGETS, rollout_statistics
        from gain_curate.checks.rollouts import run_rollouts

        # the trainer's conversation, the output's `prompt`: by default the very conversation
        # scored (system prompt, few-shot, question, instruction; or the row's own chat)
        chats = [
            [{"role": m["role"], "content": m["content"]} for m in by_row[k]["prompt"]]
            for k in range(len(picked))
        ]
        # the rest of each row as the trainer's reward gets it (TRL passes every column)
        reward_rows = [
            {**{c: v for c, v in by_row[k].items() if c != "prompt"}, **reward_rows[k]}
            for k in range(len(picked))
        ]
        rl = run_rollouts(
            lm,
            tok,
            chats,
            golds,
            settings=rollouts,
            reward=reward,
            layer=shape.layer,
            folder=out / "rollouts",
            model_revision=result["model_revision"],
            hooks=hooks,
            rows=reward_rows,
        )
        signals = dict(zip(SIGNALS, (score, c_intra, c_inter, q_len)))
        clock_probe = time.perf_counter()
        features = probe_features(cfg, run, picked, shape, manifest)
        # the run whose states they are (its model, template, conversation): predict checks it
        probes = fit_probes(features, rl["pass_rate"], seed=seed, fitted_on=fitted_on(manifest))
        saved = save_probes(out / "probes", probes)
        seconds["probe_states_and_fit"] = round(time.perf_counter() - clock_probe, 1)
        n_run = run_inputs.run_rows(run) if run is not None else None
        stats = rollout_statistics(signals, rl, probes=probes, n_run=n_run, seed=seed)
        result["rollouts"] = {"settings": asdict(rollouts), **stats, "probe_files": saved}
        if run is not None and manifest.get("states"):  # + every kept array (prompt_end@L<k>)
            features.update(sampled_states(run, manifest, picked))
        meta = {"fitted_on": fitted_on(manifest), "pass_rates": "validate --rollouts"}
        rec = recommend_sampled(features, signals, rl["pass_rate"], out=out, meta=meta, seed=seed)
        result.update(rec)  # recommended, baselines, probe, verdict (calibrate.py)
        seconds.update(rl["seconds"])  # generation, rewards, GRPO gradients
        rows.update({t: rl[t] for t in TARGETS})
        rows.update(
            {
                "zero_variance": rl["zero_variance"],
                "mean_completion_tokens": rl["mean_length"],
                "truncated_share": rl["truncated"],
            }
        )
        records = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rl["records"])
        write_bytes_atomic(out / "rollouts" / "completions.jsonl", records.encode("utf-8"))
    result["seconds"] = seconds
    write_table_atomic(pa.table(rows), out, Path("validate.parquet"))
    summary = {"summary": result, "rows": {k: list(map(_jsonable, v)) for k, v in rows.items()}}
    write_bytes_atomic(out / "validate.json", json.dumps(summary, indent=1).encode())
    scatter(
        out / "validate.png", norms, score, q_len, result, rows if rollouts is not None else None
    )
    return result


def _jsonable(v: Any) -> Any:
    if isinstance(v, (np.floating, float)):
        return None if not np.isfinite(v) else float(v)
    return v.item() if isinstance(v, np.generic) else v
