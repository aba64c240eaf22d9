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
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gain_curate import progress
from gain_curate.errors import InputError, ModelError, OutputError
from gain_curate.executor.parts import Dims, plan_parts
from gain_curate.executor.prepared import Prepared, rows_table
from gain_curate.executor.recorded import conversation_note, run_conversations
from gain_curate.runfolder.run import ModelInfo
from gain_curate.runtime.resolve import Runtime
from gain_curate.scoring.config import ScoreConfig, request_key
from gain_curate.scoring.probe_layers import resolve_probe_layers

if TYPE_CHECKING:
    from gain_curate.inputs.conversation import Segments
    from gain_curate.inputs.sources import SourceData
    from gain_curate.inputs.template import ScoringTemplate
    from gain_curate.runtime.models import ModelRef
    from gain_curate.runtime.truncated import ModelShape


@dataclass(frozen=True)
class ModelConfig:
    """cfg.model read from its config alone (no weights): where it is, its transformers
    config, and its shape (the scored layer, the depth, the hidden size)."""

    ref: ModelRef
    config: Any  # transformers.PretrainedConfig
    shape: ModelShape


def read_model_config(cfg: ScoreConfig) -> ModelConfig:
    from gain_curate.runtime.models import resolve_model
    from gain_curate.runtime.truncated import ModelShape, read_config, resolve_layer

    ref = resolve_model(cfg.model)
    config = read_config(ref)
    text = getattr(config, "text_config", None) or config
    n = text.num_hidden_layers
    return ModelConfig(ref, config, ModelShape(resolve_layer(cfg.layer, n), n, text.hidden_size))


@dataclass(frozen=True)
class Tokenized:
    """Every input row's fate after tokenizing: why it is not scored (None: it runs), its
    token segments where it has them, and the rows that run; the run's template."""

    template: ScoringTemplate
    reasons: list[str | None]
    tokens: dict[int, Segments]  # every row that tokenized (too long ones too)
    segments: dict[int, Segments]  # the rows that run


def prepare(
    cfg: ScoreConfig,
    runtime: Runtime,
    *,
    workers: int = 1,
    model: ModelConfig | None = None,
) -> Prepared:
    """Read the input, tokenize every conversation, plan every batch, cut the parts."""
    from gain_curate.inputs.conversation import template_hash

    if cfg.out.exists() and not cfg.out.is_dir():
        raise OutputError(f"output path {cfg.out} is a file, not a folder: choose another `out`")
    src = read_input(cfg)
    model = model or read_model_config(cfg)
    if cfg.keep_states:  # a probe layer the loaded model cannot compute: one line, now
        resolve_probe_layers(cfg.probe_layers, model.shape.num_layers, model.shape.layer)
    tok = tokenizer(cfg, model.ref)
    duplicate_of = first_occurrences(src.questions, src.answers)
    rows = tokenize(cfg, src, tok, duplicate_of)
    dims = Dims.of(model.config, model.shape.layer)
    plan, parts = plan_parts(cfg, runtime, rows.segments, dims, workers)
    info = model_info(cfg, runtime, model, template_hash(tok))
    uids = prompt_uids(src.questions, src.answers, src.table.column(0).to_pylist())
    h = config_hash(
        cfg,
        src.spec.content_hash,
        info,
        runtime,
        template=rows.template,
        data_source=src.spec.data_source,
    )
    return Prepared(
        cfg,
        runtime,
        h,
        request_key(cfg),
        info,
        src.spec,
        src.table.num_rows,
        rows.segments,
        plan.prefix_ids,
        plan.batches,
        parts,
        rows_table(uids, src.questions, src.answers, rows.reasons, duplicate_of, rows.tokens),
        src.table,
        tok.pad_token_id if tok.pad_token_id is not None else 0,
    )


def read_input(cfg: ScoreConfig) -> SourceData:
    """The input table with its question and answer text and its InputSpec (one line each
    for what is read and how data_source was chosen)."""
    from gain_curate.inputs.sources import load_source

    progress.note(f"reading {cfg.data}", style="dim")
    src = load_source(
        cfg.data,
        question_key=cfg.question_key,
        answer_key=cfg.answer_key,
        split=cfg.split,
        limit=cfg.limit,
        data_source=cfg.data_source,
    )
    progress.note(f"data_source {src.spec.data_source}: {src.spec.data_source_from}", style="dim")
    return src


def tokenizer(cfg: ScoreConfig, ref: ModelRef) -> Any:
    """The model's tokenizer, with cfg.chat_template's Jinja when given."""
    from gain_curate.runtime.models import load_tokenizer

    progress.note(f"loading tokenizer of {ref.name}", style="dim")
    template_text = None
    if cfg.chat_template is not None:
        try:
            template_text = Path(cfg.chat_template).read_text(encoding="utf-8")
        except OSError as e:
            raise ModelError(
                f"`chat_template` {cfg.chat_template}: {e.strerror or e}; "
                "give a readable Jinja file"
            ) from None
    return load_tokenizer(ref, chat_template=template_text)


def tokenize(
    cfg: ScoreConfig, src: SourceData, tok: Any, duplicate_of: list[int | None]
) -> Tokenized:
    """Render every usable row's conversation and tokenize it; a row that cannot run gets
    its reason (a duplicate never runs: the merge copies its first occurrence's scores)."""
    from gain_curate.inputs.conversation import conversation_segments

    reasons: list[str | None] = list(src.problems)
    for i, first in enumerate(duplicate_of):
        if first is not None and reasons[i] is None:
            reasons[i] = "duplicate"
    if all(r is not None for r in reasons):  # nothing to run the model on: the input is unusable
        counts = ", ".join(f"{k}: {v}" for k, v in sorted(Counter(reasons).items()))
        where = src.spec.path or src.spec.hub_id or cfg.data
        raise InputError(
            f"no row of {where} can be scored ({counts}); check the question column "
            f"'{src.spec.question_key}' or pass `question_key`"
        )
    n = src.table.num_rows
    todo = [i for i in range(n) if reasons[i] is None]
    template, convs = run_conversations(
        cfg, src.table, src.spec, src.questions, progress.step(f"rendering {n:,} conversations", n)
    )
    progress.note(
        f"tokenizing {len(todo):,} conversations: {conversation_note(cfg, template, convs)}",
        style="dim",
    )
    segs = conversation_segments(
        tok,
        [convs[i] for i in todo],
        progress.step(f"tokenizing {len(todo):,} conversations", len(todo)),
    )
    tokens: dict[int, Segments] = {}
    segments: dict[int, Segments] = {}
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
    return Tokenized(template, reasons, tokens, segments)


def model_info(
    cfg: ScoreConfig, runtime: Runtime, model: ModelConfig, chat_template_sha256: str
) -> ModelInfo:
    """The manifest's `model`."""
    from gain_curate.runtime.models import model_revision

    ref, shape = model.ref, model.shape
    return ModelInfo(
        name=ref.name,
        path=ref.path,
        revision=model_revision(ref),
        dtype=runtime.dtype,
        device=runtime.device,
        layer=shape.layer,
        num_layers=shape.num_layers,
        hidden_size=shape.hidden_size,
        chat_template_sha256=chat_template_sha256,
        chat_template_file=cfg.chat_template and str(Path(cfg.chat_template).resolve()),
        dtype_requested=runtime.dtype_requested,
        hardware=runtime.hardware,
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


def config_hash(
    cfg: ScoreConfig,
    input_hash: str,
    model: ModelInfo,
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
        "model": [model.path, model.revision, model.chat_template_sha256],
        "layer": model.layer,
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
