"""`gain-curate validate`: does angle concentration track gradient size on YOUR model?

For a sample of prompts, the Frobenius norm of the gradient of the chosen layer's
`mlp.up_proj` weight (the weight the theory is about) under the supervised loss of the
prompt's reference solution (mean token cross-entropy of the answer column, rendered as
the assistant turn after the scoring conversation), against gain_score, C_intra, C_inter
and question length. Report what it finds, whatever it is.

Per-prompt gradients come from batched forward/backward passes: for y = x W^T the
gradient of sample b is G_b = sum_t g_bt x_bt^T, with x the up_proj inputs and g the
gradients at its outputs. Prompts in a batch never interact (causal attention, right
padding, per-sample losses summed), so G_b equals a one-prompt loss.backward() exactly.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gain_curate.gradients import up_proj_row_grads
from gain_curate.stats import partial_spearman, spearman
from gain_curate.template import ScoringTemplate


@dataclass(frozen=True)
class Example:
    ids: list[int]  # prompt + solution tokens
    n_prompt: int  # loss on ids[n_prompt:]


def build_examples(
    tok: Any, template: ScoringTemplate, questions: list[str], solutions: list[str]
) -> list[Example]:
    out = []
    for q, s in zip(questions, solutions):
        msgs = template.messages(q)
        prompt = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        full = tok.apply_chat_template(msgs + [{"role": "assistant", "content": s}], tokenize=False)
        p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
        f_ids = tok(full, add_special_tokens=False)["input_ids"]
        if f_ids[: len(p_ids)] != p_ids or len(f_ids) <= len(
            p_ids
        ):  # template re-renders earlier turns
            f_ids = p_ids + tok(s, add_special_tokens=False)["input_ids"]
        out.append(Example(f_ids, len(p_ids)))
    return out


def grad_norms(
    model: Any, examples: list[Example], layer: int, *, token_budget: int = 4096, pad_id: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Per-example ||dL/dW_up||_F and loss L (mean CE over the solution tokens)."""
    import torch

    from gain_curate.prefill import length_sorted_batches, right_pad

    device = next(model.parameters()).device
    norms, losses = np.zeros(len(examples)), np.zeros(len(examples))
    with up_proj_row_grads(model, layer) as row_grads:
        for batch in length_sorted_batches([len(e.ids) for e in examples], token_budget):
            ids, mask = right_pad([examples[i].ids for i in batch], pad_id)
            labels = torch.full_like(ids, -100)
            for r, i in enumerate(batch):
                e = examples[i]
                labels[r, e.n_prompt : len(e.ids)] = ids[r, e.n_prompt : len(e.ids)]
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
            # token t predicts t + 1
            ce = torch.nn.functional.cross_entropy(
                logits[:, :-1].transpose(1, 2),
                labels[:, 1:].to(device),
                ignore_index=-100,
                reduction="none",
            )
            counts = (labels[:, 1:] != -100).sum(1).to(device).clamp_min(1)
            per_sample = ce.sum(1) / counts
            per_sample.sum().backward()
            norms[batch] = row_grads().flatten(1).norm(dim=1).cpu().numpy()
            losses[batch] = per_sample.detach().cpu().numpy()
    return norms, losses


def correlations(
    grad: np.ndarray,
    score: np.ndarray,
    c_intra: np.ndarray,
    c_inter: np.ndarray,
    length: np.ndarray,
) -> dict[str, float | None]:
    return {
        "spearman_grad_vs_score": spearman(grad, score),
        "spearman_grad_vs_c_intra": spearman(grad, c_intra),
        "spearman_grad_vs_c_inter": spearman(grad, c_inter),
        "spearman_grad_vs_question_tokens": spearman(grad, length),
        "partial_spearman_grad_vs_score_given_length": partial_spearman(grad, score, length),
    }


# What `validate --run OUT` takes from the run's manifest instead of from flags.
RUN_SETTINGS = ("model", "data", "split", "question_key", "answer_key", "layer", "inter_weight",
                "template", "chat_template")  # fmt: skip
LOCAL_KINDS = ("jsonl", "json", "parquet", "csv", "arrow_dir")


def run_settings(out: Path) -> dict[str, Any]:
    """The model, data, scoring template and runtime dtype a scored run used, from its
    manifest, as run_validate's keyword arguments: validate then checks the signal the run
    ranked by, with the run's own scores (nothing is scored or resolved again)."""
    from gain_curate import store

    m = store.read_manifest(out)
    inp, model, signal = m["input"], m["model"], m["signal"]
    return {
        "model": model["path"],
        "data": inp["path"] if inp["kind"] in LOCAL_KINDS else inp["source"],
        "split": inp["split"], "question_key": inp["question_key"], "answer_key": inp["answer_key"],
        "layer": model["layer"], "inter_weight": signal["inter_weight"],
        "template": ScoringTemplate.from_dict(signal["template"]),
        "chat_template": model.get("chat_template_file"), "dtype": model["dtype"], "run": out,
    }  # fmt: skip


def run_validate(model: str, data: str, *, sample: int, layer: int | None, out: Path, template: ScoringTemplate,
                 answer_key: str | None = None, question_key: str | None = None, dtype: str = "float32",
                 device: str = "auto", seed: int = 0, inter_weight: float = 1.0, split: str = "train",
                 chat_template: str | None = None, rollouts: Any = None, reward: str | None = None,
                 hooks: Any = None, run: Path | None = None,
                 template_flags: tuple[str, ...] | None = None) -> dict[str, Any]:  # fmt: skip
    """The supervised-gradient check, and with `rollouts` (a RolloutSettings) the RL side:
    pass rate, learnability, zero-variance groups and the GRPO gradient (rollouts.py)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch
    from transformers import AutoModelForCausalLM

    from gain_curate.errors import InputError
    from gain_curate.launch import run_score
    from gain_curate.models import (
        from_pretrained_kwargs,
        load_tokenizer,
        quiet_transformers,
        resolve_dtype,
        resolve_model,
    )
    from gain_curate.prefill import model_shape
    from gain_curate.score import ScoreConfig
    from gain_curate.sources import column_values, load_source

    src = load_source(data, question_key=question_key, answer_key=answer_key, split=split)
    if src.spec.answer_key is None:
        raise InputError(
            f"{data} has no answer column: validate needs reference solutions; pass --answer-key"
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
        from gain_curate import store

        manifest = store.read_manifest(run)
        ranked = pa.concat_tables([pq.read_table(run / s["path"]) for s in manifest["shards"]]).to_pylist()  # fmt: skip
        by_input = {r["extra_info"]["index"]: r for r in ranked}
        ok = [i for i in ok if i in by_input]
    if not ok:
        raise InputError(f"{data}: no row has both a question and an answer")
    rng = np.random.default_rng(seed)
    picked = sorted(rng.choice(ok, size=min(sample, len(ok)), replace=False).tolist())
    questions = [src.questions[i] for i in picked]
    solutions = [str(raw_answers[i]) for i in picked]
    if rollouts is not None:  # fail on a bad --reward before any model runs
        from gain_curate.rewards import check_reward
        from gain_curate.rollouts import check_settings

        check_settings(rollouts)
        golds = [src.answers[i] if src.answers[i] is not None else solutions[k] for k, i in enumerate(picked)]  # fmt: skip
        reward_rows = _reward_rows(src, picked, golds, by_input)
        check_reward(reward, reward_rows, golds)

    out.mkdir(parents=True, exist_ok=True)
    clock = time.perf_counter()
    sample_file = out / "sample.jsonl"
    sample_file.write_text(
        "".join(
            json.dumps({"question": q, "answer": a}) + "\n" for q, a in zip(questions, solutions)
        )
    )
    # pooled prefill states for the probes (rollouts only): the run's own where it kept them
    keep = rollouts is not None
    cfg = ScoreConfig(data=str(sample_file), model=model, out=out / "score", template=template,
                      layer=layer, inter_weight=inter_weight, dtype=dtype, device=device,
                      chat_template=chat_template, overwrite=True, template_flags=template_flags,
                      data_source=src.spec.data_source, keep_states=keep)  # fmt: skip
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
    tok = load_tokenizer(ref, chat_template=Path(chat_template).read_text(encoding="utf-8") if chat_template else None)  # fmt: skip
    dev = torch.device(
        device if device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    )
    shape = model_shape(ref, layer)
    with quiet_transformers():
        lm = AutoModelForCausalLM.from_pretrained(
            ref.path, **from_pretrained_kwargs(resolve_dtype(dtype, dev), ref.revision)
        ).to(dev)
    if dev.type == "cpu":  # no page faults for each batch's large logits (sampling.py)
        from gain_curate.sampling import keep_freed_memory

        keep_freed_memory()
    examples = build_examples(tok, template, questions, solutions)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    norms, losses = grad_norms(lm, examples, shape.layer, pad_id=pad)
    seconds["load_and_supervised_gradients"] = round(time.perf_counter() - clock - seconds["score"], 1)  # fmt: skip

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
        "model": ref.name, "data": data, "sample": len(picked), "layer": shape.layer, "seed": seed,
        "dtype": str(next(lm.parameters()).dtype).removeprefix("torch."),
        "device": dev.type, "weight": f"layers[{shape.layer}].mlp.up_proj.weight",
        "model_revision": manifest["model"]["revision"], "inter_weight": inter_weight,
        "template": template.to_dict(),
        "loss": "mean cross-entropy of the reference solution as the assistant turn",
        **correlations(norms, score, c_intra, c_inter, q_len),
    }  # fmt: skip
    rows = {"input_row": picked, "question": questions, "gain_score": score, "gain_c_intra": c_intra,
            "gain_c_inter": c_inter, "question_tokens": q_len, "grad_norm": norms, "loss": losses}  # fmt: skip
    if rollouts is not None:
        from gain_curate.probe import fit_probes
        from gain_curate.rollouts import SIGNALS, TARGETS, rollout_statistics, run_rollouts

        # the trainer's conversation, the output's `prompt`: by default the very conversation
        # scored (system prompt, few-shot, question, instruction; or the row's own chat)
        chats = [[{"role": m["role"], "content": m["content"]} for m in by_row[k]["prompt"]] for k in range(len(picked))]  # fmt: skip
        # the rest of each row as the trainer's reward gets it (TRL passes every column)
        reward_rows = [{**{c: v for c, v in by_row[k].items() if c != "prompt"}, **reward_rows[k]} for k in range(len(picked))]  # fmt: skip
        rl = run_rollouts(lm, tok, chats, golds, settings=rollouts, reward=reward, layer=shape.layer,
                          folder=out / "rollouts", model_revision=result["model_revision"], hooks=hooks,
                          rows=reward_rows)  # fmt: skip
        signals = dict(zip(SIGNALS, (score, c_intra, c_inter, q_len)))
        clock_probe = time.perf_counter()
        features = probe_features(cfg, run, picked, shape, manifest)
        probes = fit_probes(features, rl["pass_rate"], seed=seed)
        saved = save_probes(out / "probes", probes)
        seconds["probe_states_and_fit"] = round(time.perf_counter() - clock_probe, 1)
        n_run = run_rows(run) if run is not None else None
        stats = rollout_statistics(signals, rl, probes=probes, n_run=n_run, seed=seed)
        result["rollouts"] = {"settings": asdict(rollouts), **stats, "probe_files": saved}
        seconds.update(rl["seconds"])  # generation, rewards, GRPO gradients
        rows.update({t: rl[t] for t in TARGETS})
        rows.update(
            {"zero_variance": rl["zero_variance"], "mean_completion_tokens": rl["mean_length"],
             "truncated_share": rl["truncated"]}
        )  # fmt: skip
        (out / "rollouts").mkdir(parents=True, exist_ok=True)
        with (out / "rollouts" / "completions.jsonl").open("w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rl["records"])
    result["seconds"] = seconds
    pq.write_table(pa.table(rows), out / "validate.parquet")
    (out / "validate.json").write_text(
        json.dumps(
            {"summary": result, "rows": {k: list(map(_jsonable, v)) for k, v in rows.items()}},
            indent=1,
        )
    )
    _scatter(
        out / "validate.png", norms, score, q_len, result, rows if rollouts is not None else None
    )
    return result


def middle_layer(num_layers: int) -> int:
    return num_layers // 2


def probe_features(cfg: Any, run: Path | None, picked: list[int], shape: Any,
                   manifest: dict[str, Any]) -> dict[str, np.ndarray]:  # fmt: skip
    """The probes' features for the sampled prompts, by name ("last_token@L23"): the pooled
    prefill states (question_mean, last_token: prefill.pooled_states) at the scored layer
    and at the middle layer, exactly as `score --keep-states` stores them. The scored
    layer's come from the run's OUT/states.npz when it kept them, else from scoring the
    sample with --keep-states (validate's own score pass already did); the middle layer's
    from scoring the sample at that layer (OUT/score-L<k>/)."""
    from dataclasses import replace

    from gain_curate import store
    from gain_curate.launch import run_score
    from gain_curate.predict import KINDS

    def sample_states(layer: int, folder: Path) -> dict[str, np.ndarray]:
        if run is None and layer == shape.layer:  # validate's own score pass kept them
            m, folder = manifest, cfg.out
        else:
            m = run_score(replace(cfg, layer=layer, out=folder, keep_states=True)).manifest
        return _rows_of(store.read_npz(folder / m["states"]["path"]), range(len(picked)))

    out: dict[str, np.ndarray] = {}
    mid = middle_layer(shape.num_layers)
    for layer in dict.fromkeys((shape.layer, mid)):
        kept = manifest.get("states") if run is not None else None
        if kept is not None and int(kept["layer"]) == layer:
            st = _rows_of(store.read_npz(run / kept["path"]), picked)
        else:
            st = sample_states(layer, cfg.out if layer == shape.layer else cfg.out.with_name(f"score-L{layer}"))  # fmt: skip
        out.update({f"{k}@L{layer}": st[k] for k in KINDS})
    return out


def _rows_of(states: dict[str, np.ndarray], rows: Any) -> dict[str, np.ndarray]:
    """The pooled states of the given input rows (a states.npz's `row`), in that order, fp32."""
    at = {int(r): i for i, r in enumerate(states["row"])}
    out = {}
    for k in ("question_mean", "last_token"):
        v = np.full((len(rows), states[k].shape[1]), np.nan, np.float32)  # NaN: no states
        for j, r in enumerate(rows):
            if int(r) in at:
                v[j] = states[k][at[int(r)]]
        out[k] = v
    return out


def save_probes(folder: Path, probes: dict[str, Any]) -> dict[str, str]:
    """Each probe as OUT/probes/<features>.npz (gain-curate predict reads it); name -> path."""
    return {name: str(fit.save(folder / f"{name}.npz")) for name, fit in probes.items()}


def run_rows(run: Path) -> int:
    """How many prompts the scored run ranks: what a curriculum over it draws from."""
    from gain_curate import store

    return int(sum(s["rows"] for s in store.read_manifest(run)["shards"]))


def _reward_rows(src: Any, picked: list[int], golds: list[str],
                 by_input: dict[int, dict[str, Any]] | None) -> list[dict[str, Any]]:  # fmt: skip
    """What a trainer's reward reads of each sampled row: `data_source` and `reward_model`
    from a scored run's own rows; else the input's own columns when it has them, else what
    `score` writes (the input's data_source name; the extracted answer as ground truth)."""
    from gain_curate.sources import column_values

    if by_input is not None:
        return [{"data_source": by_input[i]["data_source"], "reward_model": by_input[i]["reward_model"]} for i in picked]  # fmt: skip
    names = src.table.column_names
    sources = column_values(src.table, "data_source") if "data_source" in names else None
    models = column_values(src.table, "reward_model") if "reward_model" in names else None
    return [
        {"data_source": (sources[i] if sources and isinstance(sources[i], str) else src.spec.data_source),
         "reward_model": (models[i] if models and isinstance(models[i], dict) and "ground_truth" in models[i]
                          else {"ground_truth": gold, "style": "rule"})}
        for i, gold in zip(picked, golds)
    ]  # fmt: skip


def _jsonable(v: Any) -> Any:
    if isinstance(v, (np.floating, float)):
        return None if not np.isfinite(v) else float(v)
    return v.item() if isinstance(v, np.generic) else v


def _scatter(
    path: Path, grad: np.ndarray, score: np.ndarray, length: np.ndarray, summary: dict[str, Any],
    rl: dict[str, Any] | None = None,
) -> None:  # fmt: skip
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4 if rl else 2, figsize=(20 if rl else 10, 4), dpi=100)
    if rl:
        zv = np.asarray(rl["zero_variance"], bool)
        axes[2].scatter(
            score[~zv], rl["pass_rate"][~zv], s=12, color="#3b6ea5", label="mixed group"
        )
        axes[2].scatter(
            score[zv], rl["pass_rate"][zv], s=12, color="#c44e52", marker="x", label="zero variance"
        )
        axes[2].set(xlabel="gain_score", ylabel="pass rate", title="pass rate over K rollouts")
        axes[2].legend(loc="best")
        axes[3].scatter(score, rl["grpo_grad_norm"], s=12, color="#3b6ea5")
        axes[3].set(xlabel="gain_score", ylabel="||grad up_proj||_F (GRPO)", title="GRPO gradient norm")  # fmt: skip
    sc = axes[0].scatter(score, grad, c=length, s=10, cmap="viridis")
    fig.colorbar(sc, ax=axes[0], label="question tokens")
    rho = summary["spearman_grad_vs_score"]
    axes[0].set(xlabel="gain_score", ylabel="||grad up_proj||_F",
                title=f"Spearman {rho:+.3f}" if rho is not None else "")  # fmt: skip
    axes[1].scatter(length, grad, s=10, color="#3b6ea5")
    axes[1].set(xlabel="question tokens", ylabel="||grad up_proj||_F")
    fig.suptitle(f"{summary['model']} on {Path(summary['data']).name}: {summary['sample']} prompts")
    fig.tight_layout()
    from gain_curate.store import write_png

    write_png(fig, path)
    plt.close(fig)
