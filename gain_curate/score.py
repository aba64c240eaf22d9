"""The `score` pipeline: read prompts, cut segments, prefill, reduce, rank, write.

Plain functions composed in `run_score`; the CLI only parses flags and shows progress.
Every row of the input comes out: rows that cannot be scored carry null scores and a
reason and rank after all scored rows.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from gain_curate import store
from gain_curate.errors import InputError, ModelError, OutputError
from gain_curate.template import ScoringTemplate


@dataclass(frozen=True)
class ScoreConfig:
    data: str
    model: str
    out: Path
    template: ScoringTemplate = field(default_factory=ScoringTemplate)
    question_key: str | None = None
    answer_key: str | None = None
    split: str = "train"
    limit: int | None = None
    layer: int | None = None
    inter_weight: float = 1.0
    max_tokens: int = 4096
    dtype: str = "auto"
    device: str = "auto"
    token_budget: int | None = None
    kernel: str = "auto"
    share_prefix: bool = True
    part_rows: int = 10_000
    workers: int = (
        1  # processes sharing the parts (GPUs, --shard N, Ray actors): at least one part each
    )
    chat_template: str | None = None  # a Jinja file for models that ship none
    rows_per_shard: int = 50_000
    overwrite: bool = False


@dataclass
class Hooks:
    """Progress callbacks; all optional, so library callers can ignore them."""

    status: Callable[[str], None] = lambda msg: None
    start: Callable[[int, int], None] = lambda prompts, tokens: None
    batch: Callable[[int, int], None] = lambda prompts, tokens: None


@dataclass(frozen=True)
class ScoreResult:
    out: Path
    manifest: dict[str, Any]
    seconds: float


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


@dataclass
class Prepared:
    """Everything decided before any model runs: input, tokenizer, reasons, parts, hash."""

    cfg: ScoreConfig
    src: Any  # sources.SourceData
    ref: Any  # models.ModelRef
    tok: Any
    device: Any  # torch.device
    dtype: Any  # torch.dtype
    kernel: str
    reasons: list[str | None]  # per input row, before tokenization ("duplicate": not run)
    duplicate_of: list[int | None]  # per input row: the first occurrence's row, or None
    uids: list[str]
    parts: list[range]
    model_info: dict[str, Any]
    config_hash: str


def prepare(cfg: ScoreConfig, hooks: Hooks) -> Prepared:
    import torch

    from gain_curate.hardware import device_label
    from gain_curate.models import load_tokenizer, model_revision, resolve_dtype, resolve_model
    from gain_curate.prefill import model_shape
    from gain_curate.reduction import resolve_kernel
    from gain_curate.sources import load_source
    from gain_curate.template import template_hash

    if cfg.out.exists() and not cfg.out.is_dir():
        raise OutputError(f"output path {cfg.out} is a file, not a folder: choose another --out")
    hooks.status(f"reading {cfg.data}")
    src = load_source(
        cfg.data,
        question_key=cfg.question_key,
        answer_key=cfg.answer_key,
        split=cfg.split,
        limit=cfg.limit,
    )
    n = src.table.num_rows
    ref = resolve_model(cfg.model)
    hooks.status(f"loading tokenizer of {ref.name}")
    template_text = None
    if cfg.chat_template is not None:
        try:
            template_text = Path(cfg.chat_template).read_text(encoding="utf-8")
        except OSError as e:
            raise ModelError(
                f"--chat-template {cfg.chat_template}: {e.strerror or e}; give a readable Jinja file"
            ) from None
    tok = load_tokenizer(ref, chat_template=template_text)
    device = torch.device(
        cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    )
    dtype = resolve_dtype(cfg.dtype, device)
    kernel = resolve_kernel(cfg.kernel, device)
    shape = model_shape(ref, cfg.layer)
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
    model_info = {
        "name": ref.name, "path": ref.path, "revision": model_revision(ref), "dtype": str(dtype).removeprefix("torch."),
        "device": device.type, "layer": shape.layer, "num_layers": shape.num_layers, "hidden_size": shape.hidden_size,
        "chat_template_sha256": template_hash(tok), "chat_template_file": cfg.chat_template and str(Path(cfg.chat_template).resolve()), "dtype_requested": cfg.dtype,
        "hardware": device_label(device),
    }  # fmt: skip
    rows_per_part = part_size(n, cfg.part_rows, cfg.workers)
    parts = [range(a, min(a + rows_per_part, n)) for a in range(0, n, rows_per_part)]
    uids = prompt_uids(src.questions, src.answers, src.table.column(0).to_pylist())
    h = config_hash(
        cfg, src.spec.content_hash, {**model_info, "kernel": kernel, "rows_per_part": rows_per_part}
    )
    return Prepared(cfg, src, ref, tok, device, dtype, kernel, reasons, duplicate_of, uids, parts, model_info, h)  # fmt: skip


def part_size(n: int, part_rows: int, workers: int) -> int:
    """Rows per part: --part-rows, cut so that each of `workers` processes gets a part (8 GPUs
    on 7,473 prompts: 8 parts of 935, not one part of 7,473 and seven idle GPUs)."""
    if workers <= 1:
        return part_rows
    return max(1, min(part_rows, -(-n // workers)))


def score_rows(prep: Prepared, lm: Any, rows: range, hooks: Hooks) -> tuple[Any, dict[str, Any]]:
    """Score one part of the input: a table in PART_SCHEMA order and the prefill stats."""
    import pyarrow as pa
    import torch

    from gain_curate.angles import angle_scores
    from gain_curate.prefill import PrefillStats, segment_sums
    from gain_curate.template import segment_batch

    cfg, src = prep.cfg, prep.src
    reasons = {i: prep.reasons[i] for i in rows}
    todo = [i for i in rows if reasons[i] is None]
    segs = segment_batch(prep.tok, cfg.template, [src.questions[i] for i in todo])
    tokens_p = dict.fromkeys(rows, -1)
    tokens_q = dict.fromkeys(rows, -1)
    runnable, run_segs = [], []
    for i, s in zip(todo, segs):
        if s is None:
            reasons[i] = "question_not_found_in_template"
            continue
        tokens_p[i], tokens_q[i] = s.p, s.q
        if s.total_tokens > cfg.max_tokens:
            reasons[i] = "too_long"
        elif s.q < 2:
            reasons[i] = "question_too_short"
        elif s.p == 0:
            reasons[i] = "no_prefix"
        else:
            runnable.append(i)
            run_segs.append(s)
    score = dict.fromkeys(rows, float("nan"))
    c_intra, c_inter = dict(score), dict(score)
    budget = cfg.token_budget or (32768 if prep.device.type == "cuda" else 2048)
    pad_id = prep.tok.pad_token_id if prep.tok.pad_token_id is not None else 0
    stats = PrefillStats()
    batches = segment_sums(
        lm, run_segs, token_budget=budget, pad_id=pad_id, kernel=prep.kernel,
        share_prefix=cfg.share_prefix, on_batch=hooks.batch, stats=stats,
    )  # fmt: skip
    for b in batches:
        idx = [runnable[j] for j in b.indices]
        p = torch.tensor([tokens_p[i] for i in idx])
        q = torch.tensor([tokens_q[i] for i in idx])
        a = angle_scores(b.s_q, q, b.s_p, p, cfg.inter_weight)
        for k, i in enumerate(idx):
            score[i], c_intra[i], c_inter[i] = (
                a.score[k].item(),
                a.c_intra[k].item(),
                a.c_inter[k].item(),
            )
    for i in runnable:
        if not np.isfinite(score[i]):
            reasons[i] = "non_finite_hidden_states"
            score[i] = c_intra[i] = c_inter[i] = float("nan")
    hooks.batch(len(rows) - len(runnable), 0)  # rows never run still count as done
    table = pa.table({
        "row": list(rows), "score": [score[i] for i in rows], "c_intra": [c_intra[i] for i in rows],
        "c_inter": [c_inter[i] for i in rows], "tokens_prefix": [tokens_p[i] for i in rows],
        "tokens_question": [tokens_q[i] for i in rows], "reason": [reasons[i] for i in rows],
    })  # fmt: skip
    return table, {"token_budget": budget, **asdict(stats)}


def run_score(
    cfg: ScoreConfig, hooks: Hooks | None = None, *, shard: tuple[int, int] | None = None
) -> ScoreResult | None:
    """Score every unfinished part (or this shard's share of them) in this process, then
    merge. Parts are the unit of work and of resume: a rerun on the same OUT with the same
    config skips finished parts; `shard=(i, n)` scores parts p with p % n == i and stops
    before the merge (`gain-curate merge OUT` does it once every shard is done)."""
    if shard is not None and cfg.workers <= 1:
        cfg = replace(cfg, workers=shard[1])  # every shard cuts the same parts
    return execute(cfg, hooks or Hooks(), score_in_process, shard=shard)


PartRunner = Callable[["Prepared", list[int], Hooks], None]


def execute(cfg: ScoreConfig, hooks: Hooks, run_parts: PartRunner, *,
            shard: tuple[int, int] | None = None) -> ScoreResult | None:  # fmt: skip
    """The one flow every backend shares: prepare, claim OUT and find the unfinished parts,
    let `run_parts` score them (in this process, one process per GPU, Ray actors), merge.
    Resume, config checks and the merge live here and nowhere else."""
    t0 = time.perf_counter()
    prep = prepare(cfg, hooks)
    todo = claim_parts(prep, hooks, shard)
    if isinstance(todo, ScoreResult):
        return todo
    if todo:
        run_parts(prep, todo, hooks)
    if shard is not None:
        return None
    from gain_curate.merge import merge

    return merge(prep, hooks, time.perf_counter() - t0)


def score_in_process(prep: Prepared, todo: list[int], hooks: Hooks) -> None:
    """Load the model here and score the parts one after another."""
    from gain_curate.prefill import load_model

    hooks.status(f"loading {prep.ref.name} ({prep.dtype}, {prep.device})")
    lm = load_model(prep.ref, dtype=prep.dtype, device=prep.device, layer=prep.cfg.layer)
    hooks.start(sum(len(prep.parts[p]) for p in todo), 0)
    work = store.WorkDir(prep.cfg.out)
    for p in todo:
        table, stats = score_rows(prep, lm, prep.parts[p], hooks)
        work.write_part(p, table, prep.config_hash, stats)


def claim_parts(
    prep: Prepared, hooks: Hooks, shard: tuple[int, int] | None = None
) -> list[int] | ScoreResult:
    """Take OUT for this config: the parts still to score (this shard's share), or the
    finished result when OUT already holds this very run."""
    cfg = prep.cfg
    manifest = store.read_manifest(cfg.out) if (cfg.out / store.MANIFEST).is_file() else None
    if (
        manifest is not None
        and manifest.get("config_hash") == prep.config_hash
        and not cfg.overwrite
    ):
        hooks.status(f"{cfg.out} is already complete for this config")
        return ScoreResult(cfg.out, manifest, 0.0)
    work = store.WorkDir(cfg.out)
    run = {"config": config_dict(cfg), "parts": len(prep.parts), "rows": prep.src.table.num_rows}
    work.claim(prep.config_hash, run, overwrite=cfg.overwrite)
    mine = [p for p in range(len(prep.parts)) if shard is None or p % shard[1] == shard[0]]
    todo = [p for p in mine if not work.done(p, prep.config_hash)]
    if len(todo) < len(mine):
        hooks.status(f"resuming: {len(mine) - len(todo)} of {len(mine)} parts already finished")
    return todo


def config_dict(cfg: ScoreConfig) -> dict[str, Any]:
    d = asdict(cfg)
    d["out"] = str(cfg.out)
    d["template"] = cfg.template.to_dict()
    return d


def config_from_dict(d: dict[str, Any]) -> ScoreConfig:
    template = ScoringTemplate.from_dict(d["template"])
    return ScoreConfig(**{**d, "out": Path(d["out"]), "template": template, "overwrite": False})


def config_hash(cfg: ScoreConfig, input_hash: str, model_info: dict[str, Any]) -> str:
    """What determines the scores and their bytes: input content, model, layer, dtype,
    kernel, template, formula, and the parts (batches are formed within a part)."""
    keys = {
        "kernel": model_info["kernel"], "device": model_info["device"], "part_rows": model_info["rows_per_part"],
        "token_budget": cfg.token_budget, "share_prefix": cfg.share_prefix, "rows_per_shard": cfg.rows_per_shard,
        "input": input_hash, "model": [model_info["path"], model_info["revision"], model_info["chat_template_sha256"]],
        "dtype": model_info["dtype"], "layer": model_info["layer"], "template": cfg.template.to_dict(),
        "inter_weight": cfg.inter_weight, "max_tokens": cfg.max_tokens, "limit": cfg.limit,
        "question_key": cfg.question_key, "answer_key": cfg.answer_key, "split": cfg.split,
    }  # fmt: skip
    return hashlib.sha256(json.dumps(keys, sort_keys=True).encode()).hexdigest()[:16]
