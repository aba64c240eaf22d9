"""Everything decided before any model runs, done ONCE per run and kept in the run's folder.

    prep = prepare(cfg, runtime, hooks, workers=8)   # read, hash, tokenize, cut, plan
    save_prepared(prep)                              # OUT/.gain-curate/prepared/ + run.json
    prep = load_prepared(out)                        # every rank, GPU worker, actor, merge

Reading and hashing the input, loading the tokenizer, rendering and tokenizing every
conversation, and planning every forward batch happen here. The batch plan is made from
the WHOLE input (length-sorted under the runtime's token budget) and parts are groups of
whole batches, so the scores are the same bytes whether one process or eight score them.
What a prepared run holds, and how it is saved and loaded, is in prepared.py.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from gain_curate import progress
from gain_curate.errors import InputError, ModelError, OutputError
from gain_curate.executor.prepared import (
    Dims,
    Prepared,
    batch_seconds,
    cut_parts,
    device_flops,
    rows_table,
)
from gain_curate.executor.recorded import conversation_note
from gain_curate.runtime.resolve import Runtime
from gain_curate.scoring.config import Hooks, ScoreConfig, request_key
from gain_curate.scoring.probe_layers import resolve_probe_layers


def read_model_config(cfg: ScoreConfig) -> tuple[Any, Any, Any]:
    """(ModelRef, transformers config, ModelShape) of cfg.model, from its config alone."""
    from gain_curate.runtime.models import resolve_model
    from gain_curate.runtime.truncated import ModelShape, read_config, resolve_layer

    ref = resolve_model(cfg.model)
    config = read_config(ref)
    text = getattr(config, "text_config", None) or config
    n = text.num_hidden_layers
    return ref, config, ModelShape(resolve_layer(cfg.layer, n), n, text.hidden_size)


def prepare(
    cfg: ScoreConfig,
    runtime: Runtime,
    hooks: Hooks,
    *,
    workers: int = 1,
    model: tuple[Any, Any, Any] | None = None,
) -> Prepared:
    """Read the input, tokenize every conversation, plan every batch, cut the parts."""
    from gain_curate.inputs.conversation import conversation_segments, template_hash
    from gain_curate.inputs.sources import load_source
    from gain_curate.runtime.models import load_tokenizer, model_revision
    from gain_curate.scoring.batching import plan_batches

    if cfg.out.exists() and not cfg.out.is_dir():
        raise OutputError(f"output path {cfg.out} is a file, not a folder: choose another --out")
    hooks.status(f"reading {cfg.data}")
    src = load_source(
        cfg.data,
        question_key=cfg.question_key,
        answer_key=cfg.answer_key,
        split=cfg.split,
        limit=cfg.limit,
        data_source=cfg.data_source,
    )
    hooks.status(f"data_source {src.spec.data_source}: {src.spec.data_source_from}")
    n = src.table.num_rows
    ref, config, shape = model or read_model_config(cfg)
    if cfg.keep_states:  # a probe layer the loaded model cannot compute: one line, now
        resolve_probe_layers(cfg.probe_layers, shape.num_layers, shape.layer)
    hooks.status(f"loading tokenizer of {ref.name}")
    template_text = None
    if cfg.chat_template is not None:
        try:
            template_text = Path(cfg.chat_template).read_text(encoding="utf-8")
        except OSError as e:
            raise ModelError(
                f"--chat-template {cfg.chat_template}: {e.strerror or e}; "
                "give a readable Jinja file"
            ) from None
    tok = load_tokenizer(ref, chat_template=template_text)
    reasons: list[str | None] = list(src.problems)
    duplicate_of = first_occurrences(src.questions, src.answers)
    for i, first in enumerate(duplicate_of):
        if first is not None and reasons[i] is None:
            reasons[i] = "duplicate"  # never run: the merge copies its first occurrence's scores
    if all(r is not None for r in reasons):  # nothing to run the model on: the input is unusable
        counts = ", ".join(f"{k}: {v}" for k, v in sorted(Counter(reasons).items()))
        where = src.spec.path or src.spec.hub_id or cfg.data
        raise InputError(
            f"no row of {where} can be scored ({counts}); check the question column "
            f"'{src.spec.question_key}' or pass --question-key"
        )
    todo = [i for i in range(n) if reasons[i] is None]
    template, convs = run_conversations(
        cfg,
        src.table,
        asdict(src.spec),
        src.questions,
        progress.step(f"rendering {n:,} conversations", n),
    )
    hooks.status(
        f"tokenizing {len(todo):,} conversations: {conversation_note(cfg, template, convs)}"
    )
    segs = conversation_segments(
        tok,
        [convs[i] for i in todo],
        progress.step(f"tokenizing {len(todo):,} conversations", len(todo)),
    )
    tokens: dict[int, Any] = {}
    segments: dict[int, Any] = {}
    for i, s in zip(todo, segs):
        if s is None:
            reasons[i] = "question_not_found_in_template"
            continue
        tokens[i] = s
        if s.total_tokens > cfg.max_tokens:
            reasons[i] = "too_long"
        elif s.q < 2:
            reasons[i] = "question_too_short"
        elif s.p == 0:
            reasons[i] = "no_prefix"
        else:
            segments[i] = s
    plan = plan_batches(
        segments,
        token_budget=runtime.token_budget,
        share_prefix=cfg.share_prefix,
        device_type=runtime.device,
    )
    parts = cut_parts(
        plan.batches,
        batch_seconds(
            plan.batches,
            segments,
            len(plan.prefix_ids or ()),
            Dims.of(config, shape.layer),
            device_flops(runtime, _threads()),
        ),
        cfg.part_rows,
        workers,
    )
    model_info = {
        "name": ref.name,
        "path": ref.path,
        "revision": model_revision(ref),
        "dtype": runtime.dtype,
        "device": runtime.device,
        "layer": shape.layer,
        "num_layers": shape.num_layers,
        "hidden_size": shape.hidden_size,
        "chat_template_sha256": template_hash(tok),
        "chat_template_file": cfg.chat_template and str(Path(cfg.chat_template).resolve()),
        "dtype_requested": runtime.dtype_requested,
        "hardware": runtime.hardware,
    }
    uids = prompt_uids(src.questions, src.answers, src.table.column(0).to_pylist())
    spec = asdict(src.spec)
    h = config_hash(
        cfg,
        spec["content_hash"],
        model_info,
        runtime,
        template=template,
        data_source=spec["data_source"],
    )
    rows = rows_table(uids, src.questions, src.answers, reasons, duplicate_of, tokens)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    return Prepared(
        cfg,
        runtime,
        h,
        request_key(cfg),
        model_info,
        spec,
        n,
        segments,
        plan.prefix_ids,
        plan.batches,
        parts,
        rows,
        src.table,
        pad,
    )


def prompt_uids(
    questions: list[str | None], answers: list[str | None], raw: list[Any]
) -> list[str]:
    """Content hash of (question, answer, occurrence): stable under reordering, unique."""
    seen: Counter[str] = Counter()
    uids = []
    for q, a, r in zip(questions, answers, raw):
        key = json.dumps([q if q is not None else repr(r), a], ensure_ascii=False)
        uids.append(hashlib.sha256(f"{key}\x00{seen[key]}".encode()).hexdigest()[:16])
        seen[key] += 1
    return uids


def first_occurrences(questions: list[str | None], answers: list[str | None]) -> list[int | None]:
    """Per row, the earlier row with the same question and answer (None for the first)."""
    first: dict[tuple[str, str | None], int] = {}
    out: list[int | None] = []
    for i, (q, a) in enumerate(zip(questions, answers)):
        out.append(None if q is None else first.setdefault((q, a), i))
        if out[-1] == i:
            out[-1] = None
    return out


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def run_conversations(
    cfg: ScoreConfig,
    table: Any,
    spec: dict[str, Any],
    questions: list[str | None],
    advance: Callable[[int], None] = lambda n: None,
) -> tuple[Any, list[Any]]:
    """The run's template (the data source's defaults where no flag was given) and, per input
    row, the conversation scored and the one trained on (conversation.conversations). The merge
    calls it again on the prepared input table: the same rows, the same answer."""
    from gain_curate.inputs.answers import input_chats
    from gain_curate.inputs.conversation import conversations
    from gain_curate.inputs.template import resolve_template

    template = resolve_template(cfg.template, cfg.template_flags, spec["data_source"])
    chats = input_chats(table, spec["question_key"])
    if chats is not None and cfg.train_prompt == "conversation" and cfg.template_flags:
        given = ", ".join("--" + f.replace("_", "-") for f in cfg.template_flags)
        raise InputError(
            f"{given}: {spec['path'] or spec['source']} already holds the conversation the trainer "
            "renders (its chat `prompt`), so `score` scores that very conversation; drop "
            f"{given}, or pass --train-prompt question to score this template while the "
            "trainer sees the input's own prompt"
        )
    convs = conversations(
        template, questions, chats, train_prompt=cfg.train_prompt, advance=advance
    )
    return template, convs


def config_hash(
    cfg: ScoreConfig,
    input_hash: str,
    model_info: dict[str, Any],
    runtime: Runtime,
    *,
    template: Any = None,
    data_source: str | None = None,
) -> str:
    """What determines the scores and their bytes: input content, model, layer, template,
    formula, and the runtime (device kind, dtype, kernel, token budget: batches are planned
    under it). Not the number of workers, ranks, shards or parts."""
    keys = {
        "kernel": runtime.kernel,
        "device": runtime.device,
        "token_budget": runtime.token_budget,
        "dtype": runtime.dtype,
        "share_prefix": cfg.share_prefix,
        "rows_per_shard": cfg.rows_per_shard,
        "input": input_hash,
        "model": [model_info["path"], model_info["revision"], model_info["chat_template_sha256"]],
        "layer": model_info["layer"],
        "template": (template or cfg.template).to_dict(),
        "data_source": data_source,
        "train_prompt": cfg.train_prompt,
        "inter_weight": cfg.inter_weight,
        "max_tokens": cfg.max_tokens,
        "limit": cfg.limit,
        "question_key": cfg.question_key,
        "answer_key": cfg.answer_key,
        "split": cfg.split,
    }
    return hashlib.sha256(json.dumps(keys, sort_keys=True).encode()).hexdigest()[:16]
