"""The last step of a scoring run: rank every finished part together, write the public
shards, then the manifest (written last, atomically). `gain-curate merge OUT` runs it alone
after --shard workers."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import asdict, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from gain_curate import __version__, store
from gain_curate.angles import FORMULA
from gain_curate.errors import OutputError
from gain_curate.score import Hooks, Prepared, ScoreConfig, ScoreResult, config_from_dict, prepare
from gain_curate.stats import spearman, summary


def merge(prep: Prepared, hooks: Hooks, seconds: float) -> ScoreResult:
    """Rank every part together and write the public shards, then the manifest."""
    cfg, src = prep.cfg, prep.src
    parts, part_stats = store.WorkDir(cfg.out).read_parts(len(prep.parts), prep.config_hash)
    n = src.table.num_rows
    cols = parts.to_pydict()

    def arr(name: str) -> np.ndarray:
        out = np.empty(
            n, dtype=np.float64 if name not in ("tokens_prefix", "tokens_question") else np.int64
        )
        out[np.asarray(cols["row"])] = cols[name]
        return out

    reasons: list[str | None] = [None] * n
    for r, why in zip(cols["row"], cols["reason"]):
        reasons[r] = why
    names = ("score", "c_intra", "c_inter", "tokens_prefix", "tokens_question")
    values = {name: arr(name) for name in names}
    for i, first in enumerate(prep.duplicate_of):  # a duplicate is what its first occurrence is
        if first is not None:
            reasons[i] = reasons[first]
            for v in values.values():
                v[i] = v[first]
    ranked = store.RankedRows(
        uids=prep.uids, answers=src.answers, **values, reasons=reasons,
        order=store.rank_order(values["score"], prep.uids, prep.duplicate_of), duplicate_of=prep.duplicate_of,
    )  # fmt: skip
    trainer_prompts = [cfg.template.user_content(q) if q is not None else "" for q in src.questions]
    table = store.build_table(
        src.table, ranked, question_key=src.spec.question_key, answer_key=src.spec.answer_key,
        data_source=src.spec.data_source, split=cfg.split, trainer_prompts=trainer_prompts,
    )  # fmt: skip
    hooks.status(f"writing {cfg.out}")
    (cfg.out / store.MANIFEST).unlink(missing_ok=True)  # never a manifest beside other shards
    shards = store.write_shards(table, cfg.out, rows_per_shard=cfg.rows_per_shard)
    totals: dict[str, Any] = {
        "kernel": prep.kernel,
        "token_budget": part_stats[0]["token_budget"] if part_stats else None,
    }
    for key in ("prompts", "tokens_run", "tokens_padded", "prompts_sharing_prefix", "oom_retries"):
        totals[key] = sum(s[key] for s in part_stats)
    totals["shared_prefix_tokens"] = max((s["shared_prefix_tokens"] for s in part_stats), default=0)
    totals["forward_seconds"] = round(sum(s.get("seconds", 0.0) for s in part_stats), 3)
    totals["parts"] = len(prep.parts)
    manifest = build_manifest(
        cfg, prep.src.spec, prep.model_info, ranked, shards, seconds, totals, prep.config_hash
    )
    store.write_manifest(cfg.out, manifest)
    return ScoreResult(cfg.out, manifest, seconds)


def merge_run(out: Path, hooks: Hooks | None = None) -> ScoreResult:
    """`gain-curate merge OUT`: rank-merge the parts that --shard workers wrote."""
    hooks = hooks or Hooks()
    t0 = time.perf_counter()
    info = store.WorkDir(out).run_info()
    if info is None:
        raise OutputError(
            f"{out} holds no scoring work ({store.WORK_DIR}/run.json missing): run `gain-curate score --out {out}` first"
        )
    cfg = replace(config_from_dict(info["config"]), out=out)
    prep = prepare(cfg, hooks)
    if prep.config_hash != info["config_hash"]:
        raise OutputError(f"{out}: the input or model changed since its parts were scored (config hash {info['config_hash']}, "
                          f"now {prep.config_hash}): score again with --overwrite")  # fmt: skip
    return merge(prep, hooks, time.perf_counter() - t0)


def build_manifest(
    cfg: ScoreConfig,
    spec: Any,
    model_info: dict[str, Any],
    rows: store.RankedRows,
    shards: list[dict[str, Any]],
    seconds: float,
    run_info: dict[str, Any],
    config_hash_: str,
) -> dict[str, Any]:
    scored = int(np.isfinite(rows.score).sum())
    unscored = Counter(r for r in rows.reasons if r is not None)
    files = [str((cfg.out / s["path"]).resolve()) for s in shards]
    return {
        "tool": "gain-curate",
        "version": __version__,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config_hash": config_hash_,
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
            "duplicates": sum(d is not None for d in rows.duplicate_of),
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
