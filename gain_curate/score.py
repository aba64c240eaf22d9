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
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from gain_curate import __version__, store
from gain_curate.angles import FORMULA
from gain_curate.stats import spearman, summary
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


def duplicate_flags(questions: list[str | None], answers: list[str | None]) -> list[bool]:
    seen: set[tuple[str, str | None]] = set()
    flags = []
    for q, a in zip(questions, answers):
        flags.append(q is not None and (q, a) in seen)
        if q is not None:
            seen.add((q, a))
    return flags


def run_score(cfg: ScoreConfig, hooks: Hooks | None = None) -> ScoreResult:
    import torch

    from gain_curate.angles import angle_scores
    from gain_curate.models import load_tokenizer, resolve_dtype, resolve_model
    from gain_curate.prefill import PrefillStats, load_model, resolve_kernel, segment_sums
    from gain_curate.sources import load_source
    from gain_curate.template import segment_batch, template_hash

    hooks = hooks or Hooks()
    t0 = time.perf_counter()
    store.check_output_dir(cfg.out, overwrite=cfg.overwrite)

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
    tok = load_tokenizer(ref)
    device = torch.device(
        cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    )
    dtype = resolve_dtype(cfg.dtype, device)
    kernel = resolve_kernel(cfg.kernel, device)

    reasons: list[str | None] = list(src.problems)
    for i, dup in enumerate(duplicate_flags(src.questions, src.answers)):
        if dup and reasons[i] is None:
            reasons[i] = "duplicate"
    todo = [i for i in range(n) if reasons[i] is None]
    hooks.status(f"tokenizing {len(todo)} prompts")
    segs = segment_batch(tok, cfg.template, [src.questions[i] for i in todo])
    tokens_p = np.full(n, -1, dtype=np.int64)
    tokens_q = np.full(n, -1, dtype=np.int64)
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

    score = np.full(n, np.nan)
    c_intra, c_inter = np.full(n, np.nan), np.full(n, np.nan)
    hooks.status(f"loading {ref.name} ({dtype}, {device})")
    lm = load_model(ref, dtype=dtype, device=device, layer=cfg.layer)
    budget = cfg.token_budget or (32768 if device.type == "cuda" else 2048)
    hooks.start(len(run_segs), sum(len(s.input_ids) for s in run_segs))
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    stats = PrefillStats()
    batches = segment_sums(
        lm, run_segs, token_budget=budget, pad_id=pad_id, kernel=kernel,
        share_prefix=cfg.share_prefix, on_batch=hooks.batch, stats=stats,
    )  # fmt: skip
    for b in batches:
        rows = [runnable[j] for j in b.indices]
        p = torch.tensor([tokens_p[i] for i in rows])
        q = torch.tensor([tokens_q[i] for i in rows])
        a = angle_scores(b.s_q, q, b.s_p, p, cfg.inter_weight)
        score[rows], c_intra[rows], c_inter[rows] = (
            a.score.numpy(),
            a.c_intra.numpy(),
            a.c_inter.numpy(),
        )
    for i in runnable:
        if not np.isfinite(score[i]):
            reasons[i] = "non_finite_hidden_states"
            score[i] = c_intra[i] = c_inter[i] = np.nan

    uids = prompt_uids(src.questions, src.answers, src.table.column(0).to_pylist())
    ranked = store.RankedRows(
        uids=uids, questions=src.questions, answers=src.answers, score=score, c_intra=c_intra,
        c_inter=c_inter, tokens_prefix=tokens_p, tokens_question=tokens_q, reasons=reasons,
        order=store.rank_order(score, uids),
    )  # fmt: skip
    trainer_prompts = [cfg.template.user_content(q) if q is not None else "" for q in src.questions]
    table = store.build_table(
        src.table, ranked, question_key=src.spec.question_key, answer_key=src.spec.answer_key,
        data_source=src.spec.data_source, split=cfg.split, trainer_prompts=trainer_prompts,
    )  # fmt: skip
    hooks.status(f"writing {cfg.out}")
    if cfg.overwrite:
        store.remove_previous_run(cfg.out)
    shards = store.write_shards(table, cfg.out, rows_per_shard=cfg.rows_per_shard)
    seconds = time.perf_counter() - t0
    model_info = {
        "name": ref.name, "path": ref.path, "revision": ref.revision, "dtype": str(dtype).removeprefix("torch."),
        "device": device.type, "layer": lm.layer, "num_layers": lm.num_layers, "hidden_size": lm.hidden_size,
        "chat_template_sha256": template_hash(tok),
    }  # fmt: skip
    run_info = {"kernel": kernel, "token_budget": budget, **asdict(stats)}
    manifest = build_manifest(cfg, src.spec, model_info, ranked, shards, seconds, run_info)
    store.write_manifest(cfg.out, manifest)
    return ScoreResult(cfg.out, manifest, seconds)


def config_hash(cfg: ScoreConfig, input_hash: str, model_info: dict[str, Any]) -> str:
    """What determines the scores: input content, model, layer, dtype, template, formula."""
    keys = {
        "input": input_hash, "model": [model_info["path"], model_info["revision"], model_info["chat_template_sha256"]],
        "dtype": model_info["dtype"], "layer": model_info["layer"], "template": cfg.template.to_dict(),
        "inter_weight": cfg.inter_weight, "max_tokens": cfg.max_tokens, "limit": cfg.limit,
        "question_key": cfg.question_key, "answer_key": cfg.answer_key, "split": cfg.split,
    }  # fmt: skip
    return hashlib.sha256(json.dumps(keys, sort_keys=True).encode()).hexdigest()[:16]


def build_manifest(
    cfg: ScoreConfig,
    spec: Any,
    model_info: dict[str, Any],
    rows: store.RankedRows,
    shards: list[dict[str, Any]],
    seconds: float,
    run_info: dict[str, Any],
) -> dict[str, Any]:
    scored = int(np.isfinite(rows.score).sum())
    unscored = Counter(r for r in rows.reasons if r is not None)
    files = [str((cfg.out / s["path"]).resolve()) for s in shards]
    return {
        "tool": "gain-curate",
        "version": __version__,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config_hash": config_hash(cfg, spec.content_hash, model_info),
        "input": asdict(spec),
        "model": model_info,
        "signal": {
            "formula": FORMULA,
            "inter_weight": cfg.inter_weight,
            "hidden_state": f"input of layer {model_info['layer']}'s MLP (output of its post-attention norm)",
            "max_tokens": cfg.max_tokens,
            "template": cfg.template.to_dict(),
        },
        "shards": shards,
        "counts": {
            "rows": len(rows.uids),
            "scored": scored,
            "unscored": dict(sorted(unscored.items())),
        },
        "stats": {
            "score": summary(rows.score),
            "c_intra": summary(rows.c_intra),
            "c_inter": summary(rows.c_inter),
            "question_tokens": summary(
                np.where(rows.tokens_question >= 0, rows.tokens_question, np.nan)
            ),
            "spearman_score_vs_question_tokens": spearman(
                rows.score, rows.tokens_question.astype(np.float64)
            ),
        },
        "seconds": round(seconds, 3),
        "prefill": run_info,
        "trainer_flags": {
            "verl": [
                f"data.train_files=[{','.join(files)}]",
                "data.shuffle=False",
            ],
        },
    }
