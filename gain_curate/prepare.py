"""Everything decided before any model runs, done ONCE per run and kept in the run's folder.

    prep = prepare(cfg, runtime, hooks, workers=8)   # read, hash, tokenize, cut, plan
    save_prepared(prep)                              # OUT/.gain-curate/prepared/ + run.json
    prep = load_prepared(out)                        # every rank, GPU worker, actor, merge

Reading and hashing the input, loading the tokenizer, rendering and tokenizing every
conversation, and planning every forward batch happen here. The batch plan is made from
the WHOLE input (length-sorted under the runtime's token budget) and parts are groups of
whole batches, so the scores are the same bytes whether one process or eight score them.

    OUT/.gain-curate/run.json                  config, request key, config hash, runtime, parts
    OUT/.gain-curate/prepared/rows.parquet     per input row: uid, question, answer, reason,
                                               duplicate_of, token ids up to the question, p
    OUT/.gain-curate/prepared/batches.parquet  the batch plan: (shared, rows) in run order
    OUT/.gain-curate/prepared/input.parquet    the input table the shards are built from
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from gain_curate.config import Hooks, ScoreConfig, config_dict, config_from_dict, request_key
from gain_curate.errors import InputError, ModelError, OutputError
from gain_curate.runtime import Runtime

PREPARED = "prepared"


@dataclass
class Prepared:
    cfg: ScoreConfig
    runtime: Runtime
    config_hash: str
    key: str  # request_key(cfg): flags + cheap input/model fingerprints
    model_info: dict[str, Any]
    spec: dict[str, Any]  # sources.InputSpec as a dict
    n_rows: int
    segments: dict[int, Any]  # input row -> template.Segments, for the rows that run
    prefix_ids: list[int] | None
    batches: list[Any]  # prefill.Batch, in run order
    parts: list[tuple[int, int]]  # part -> [first, last) batch
    rows: Any = None  # pa.Table per input row (see save_prepared); the merge reads it
    table: Any = None  # the input pa.Table; the merge reads it
    pad_id: int = 0
    launch: str | None = None

    @property
    def out(self) -> Path:
        return self.cfg.out

    def part_batches(self, part: int) -> list[Any]:
        a, b = self.parts[part]
        return self.batches[a:b]

    def part_key(self, part: int) -> str:
        """What a finished part must have been made of: its batches' rows, in order."""
        rows = [[int(b.shared), *b.rows] for b in self.part_batches(part)]
        return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]


def prompt_uids(questions: list[str | None], answers: list[str | None], raw: list[Any]) -> list[str]:  # fmt: skip
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


def part_size(n: int, part_rows: int, workers: int) -> int:
    """Rows per part: --part-rows, cut so that each of `workers` processes gets a part (8 GPUs
    on 7,473 prompts: 8 parts, not one part and seven idle GPUs)."""
    if workers <= 1:
        return part_rows
    return max(1, min(part_rows, -(-n // workers)))


def cut_parts(batches: list[Any], rows_per_part: int) -> list[tuple[int, int]]:
    """Consecutive whole batches, about `rows_per_part` rows each."""
    parts, start, rows = [], 0, 0
    for i, b in enumerate(batches):
        rows += len(b.rows)
        if rows >= rows_per_part:
            parts.append((start, i + 1))
            start, rows = i + 1, 0
    if start < len(batches):
        parts.append((start, len(batches)))
    return parts


def read_model_config(cfg: ScoreConfig) -> tuple[Any, Any, Any]:
    """(ModelRef, transformers config, ModelShape) of cfg.model, from its config alone."""
    from gain_curate.models import resolve_model
    from gain_curate.prefill import ModelShape, read_config, resolve_layer

    ref = resolve_model(cfg.model)
    config = read_config(ref)
    text = getattr(config, "text_config", None) or config
    n = text.num_hidden_layers
    return ref, config, ModelShape(resolve_layer(cfg.layer, n), n, text.hidden_size)


def prepare(cfg: ScoreConfig, runtime: Runtime, hooks: Hooks, *, workers: int = 1,
            model: tuple[Any, Any, Any] | None = None) -> Prepared:  # fmt: skip
    """Read the input, tokenize every conversation, plan every batch, cut the parts."""
    from gain_curate.models import load_tokenizer, model_revision
    from gain_curate.prefill import plan_batches
    from gain_curate.sources import load_source
    from gain_curate.template import conversation_segments, template_hash

    if cfg.out.exists() and not cfg.out.is_dir():
        raise OutputError(f"output path {cfg.out} is a file, not a folder: choose another --out")
    hooks.status(f"reading {cfg.data}")
    src = load_source(cfg.data, question_key=cfg.question_key, answer_key=cfg.answer_key,
                      split=cfg.split, limit=cfg.limit, data_source=cfg.data_source)  # fmt: skip
    hooks.status(f"data_source {src.spec.data_source}: {src.spec.data_source_from}")
    n = src.table.num_rows
    ref, _, shape = model or read_model_config(cfg)
    hooks.status(f"loading tokenizer of {ref.name}")
    template_text = None
    if cfg.chat_template is not None:
        try:
            template_text = Path(cfg.chat_template).read_text(encoding="utf-8")
        except OSError as e:
            raise ModelError(f"--chat-template {cfg.chat_template}: {e.strerror or e}; give a readable Jinja file") from None  # fmt: skip
    tok = load_tokenizer(ref, chat_template=template_text)
    reasons: list[str | None] = list(src.problems)
    duplicate_of = first_occurrences(src.questions, src.answers)
    for i, first in enumerate(duplicate_of):
        if first is not None and reasons[i] is None:
            reasons[i] = "duplicate"  # never run: the merge copies its first occurrence's scores
    if all(r is not None for r in reasons):  # nothing to run the model on: the input is unusable
        counts = ", ".join(f"{k}: {v}" for k, v in sorted(Counter(reasons).items()))
        where = src.spec.path or src.spec.hub_id or cfg.data
        raise InputError(f"no row of {where} can be scored ({counts}); check the question column "
                         f"'{src.spec.question_key}' or pass --question-key")  # fmt: skip
    todo = [i for i in range(n) if reasons[i] is None]
    template, convs = run_conversations(cfg, src.table, asdict(src.spec), src.questions)
    hooks.status(
        f"tokenizing {len(todo):,} conversations: {conversation_note(cfg, template, convs)}"
    )
    segs = conversation_segments(tok, [convs[i] for i in todo])
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
    plan = plan_batches(segments, token_budget=runtime.token_budget,
                        share_prefix=cfg.share_prefix, device_type=runtime.device)  # fmt: skip
    parts = cut_parts(plan.batches, part_size(len(segments), cfg.part_rows, workers))
    model_info = {
        "name": ref.name, "path": ref.path, "revision": model_revision(ref), "dtype": runtime.dtype,
        "device": runtime.device, "layer": shape.layer, "num_layers": shape.num_layers,
        "hidden_size": shape.hidden_size, "chat_template_sha256": template_hash(tok),
        "chat_template_file": cfg.chat_template and str(Path(cfg.chat_template).resolve()),
        "dtype_requested": runtime.dtype_requested, "hardware": runtime.hardware,
    }  # fmt: skip
    uids = prompt_uids(src.questions, src.answers, src.table.column(0).to_pylist())
    spec = asdict(src.spec)
    h = config_hash(cfg, spec["content_hash"], model_info, runtime, template=template,
                    data_source=spec["data_source"])  # fmt: skip
    rows = _rows_table(uids, src.questions, src.answers, reasons, duplicate_of, tokens)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    return Prepared(cfg, runtime, h, request_key(cfg), model_info, spec, n, segments,
                    plan.prefix_ids, plan.batches, parts, rows, src.table, pad)  # fmt: skip


def run_conversations(cfg: ScoreConfig, table: Any, spec: dict[str, Any], questions: list[str | None]) -> tuple[Any, list[Any]]:  # fmt: skip
    """The run's template (the data source's defaults where no flag was given) and, per input
    row, the conversation scored and the one trained on (template.conversations). The merge
    calls it again on the prepared input table: the same rows, the same answer."""
    from gain_curate.sources import input_chats
    from gain_curate.template import conversations, resolve_template

    template = resolve_template(cfg.template, cfg.template_flags, spec["data_source"])
    chats = input_chats(table, spec["question_key"])
    if chats is not None and cfg.train_prompt == "conversation" and cfg.template_flags:
        given = ", ".join("--" + f.replace("_", "-") for f in cfg.template_flags)
        raise InputError(f"{given}: {spec['path'] or spec['source']} already holds the conversation the trainer "
                         "renders (its chat `prompt`), so `score` scores that very conversation; drop "
                         f"{given}, or pass --train-prompt question to score this template while the "
                         "trainer sees the input's own prompt")  # fmt: skip
    return template, conversations(template, questions, chats, train_prompt=cfg.train_prompt)


def conversation_note(cfg: ScoreConfig, template: Any, convs: list[Any]) -> str:
    """One line for the console, the manifest and `inspect`: what is scored, what is trained."""
    from gain_curate.template import describe

    rows = [c for c in convs if c is not None]
    differ = sum(c.differs for c in rows)
    own = any(c.from_input for c in rows)
    scored = "each row's own chat `prompt`" if own and cfg.train_prompt == "conversation" else describe(template)  # fmt: skip
    if not differ:
        return f"{scored}; the `prompt` column holds this very conversation"
    trained = "the input's own chat `prompt`" if own else "one user turn: the question" + (" + instruction" if template.instruction else "")  # fmt: skip
    return (f"scored: {scored}; trained (`prompt`) on a DIFFERENT conversation in {differ:,} of "
            f"{len(rows):,} rows: {trained} (--train-prompt {cfg.train_prompt})")  # fmt: skip


def config_hash(cfg: ScoreConfig, input_hash: str, model_info: dict[str, Any], runtime: Runtime,
                *, template: Any = None, data_source: str | None = None) -> str:  # fmt: skip
    """What determines the scores and their bytes: input content, model, layer, template,
    formula, and the runtime (device kind, dtype, kernel, token budget: batches are planned
    under it). Not the number of workers, ranks, shards or parts."""
    keys = {
        "kernel": runtime.kernel, "device": runtime.device, "token_budget": runtime.token_budget,
        "dtype": runtime.dtype, "share_prefix": cfg.share_prefix, "rows_per_shard": cfg.rows_per_shard,
        "input": input_hash, "model": [model_info["path"], model_info["revision"], model_info["chat_template_sha256"]],
        "layer": model_info["layer"], "template": (template or cfg.template).to_dict(),
        "data_source": data_source, "train_prompt": cfg.train_prompt,
        "inter_weight": cfg.inter_weight, "max_tokens": cfg.max_tokens, "limit": cfg.limit,
        "question_key": cfg.question_key, "answer_key": cfg.answer_key, "split": cfg.split,
    }  # fmt: skip
    return hashlib.sha256(json.dumps(keys, sort_keys=True).encode()).hexdigest()[:16]


def _rows_table(uids: list[str], questions: list[str | None], answers: list[str | None],
                reasons: list[str | None], duplicate_of: list[int | None], tokens: dict[int, Any]) -> Any:  # fmt: skip
    import pyarrow as pa

    n = len(uids)
    ids = [tokens[i].input_ids if i in tokens else None for i in range(n)]
    return pa.table({
        "row": pa.array(range(n), pa.int64()), "uid": pa.array(uids, pa.string()),
        "question": pa.array(questions, pa.string()), "answer": pa.array(answers, pa.string()),
        "reason": pa.array(reasons, pa.string()), "duplicate_of": pa.array(duplicate_of, pa.int64()),
        "input_ids": pa.array(ids, pa.list_(pa.int32())),
        "p": pa.array([tokens[i].p if i in tokens else None for i in range(n)], pa.int32()),
        "total_tokens": pa.array([tokens[i].total_tokens if i in tokens else None for i in range(n)], pa.int32()),
    })  # fmt: skip


def run_record(prep: Prepared) -> dict[str, Any]:
    """run.json: what every other process of the run reads instead of deciding again."""
    return {
        "config_hash": prep.config_hash, "key": prep.key, "launch": prep.launch,
        "config": config_dict(prep.cfg), "runtime": prep.runtime.to_dict(),
        "model": prep.model_info, "input": prep.spec, "rows": prep.n_rows,
        "parts": [list(p) for p in prep.parts], "prefix_ids": prep.prefix_ids, "pad_id": prep.pad_id,
    }  # fmt: skip


def save_prepared(prep: Prepared) -> None:
    """The prepared files first, run.json last: a run.json means the rest is complete."""
    import pyarrow as pa

    from gain_curate import store

    folder = Path(store.WORK_DIR) / PREPARED
    store.write_table_atomic(prep.rows, prep.out, folder / "rows.parquet")
    store.write_table_atomic(prep.table, prep.out, folder / "input.parquet")
    batches = pa.table({
        "shared": pa.array([b.shared for b in prep.batches], pa.bool_()),
        "rows": pa.array([b.rows for b in prep.batches], pa.list_(pa.int64())),
    })  # fmt: skip
    store.write_table_atomic(batches, prep.out, folder / "batches.parquet")
    store.WorkDir(prep.out).write_run(run_record(prep))


def load_prepared(out: Path, *, for_merge: bool = False) -> Prepared:
    """The run as its first process prepared it. Scorers get the segments of every row that
    runs; the merge also gets the per-row table and the input table."""
    import pyarrow.parquet as pq

    from gain_curate import store
    from gain_curate.prefill import Batch
    from gain_curate.template import Segments

    work = store.WorkDir(out)
    info = work.run_info()
    if info is None or "runtime" not in info:
        raise OutputError(f"{out} holds no prepared scoring run ({store.WORK_DIR}/run.json missing): "
                          f"run `gain-curate score --out {out}` first")  # fmt: skip
    folder = work.root / PREPARED
    try:
        rows = pq.read_table(folder / "rows.parquet")
        bt = pq.read_table(folder / "batches.parquet").to_pydict()
        table = pq.read_table(folder / "input.parquet") if for_merge else None
    except OSError as e:
        raise OutputError(f"{folder}: the prepared run is incomplete ({e}); score again with --overwrite") from None  # fmt: skip
    batches = [Batch(list(r), bool(s)) for s, r in zip(bt["shared"], bt["rows"])]
    running = {k for b in batches for k in b.rows}
    ids, ps, totals = (rows[c].to_pylist() for c in ("input_ids", "p", "total_tokens"))
    segments = {k: Segments(ids[k], ps[k], totals[k]) for k in sorted(running)}
    cfg = config_from_dict({**info["config"], "out": str(out)})
    return Prepared(cfg, Runtime.from_dict(info["runtime"]), info["config_hash"], info["key"],
                    info["model"], info["input"], info["rows"], segments, info["prefix_ids"], batches,
                    [tuple(p) for p in info["parts"]], rows if for_merge else None, table,
                    info.get("pad_id", 0), info.get("launch"))  # fmt: skip
