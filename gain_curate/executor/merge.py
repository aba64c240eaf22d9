"""The last step of a scoring run: rank every finished part together, write the public
shards, the pooled states (--keep-states: OUT/states.npz), then the manifest (written last,
atomically). `gain-curate merge OUT` runs it alone after --shard workers."""

from __future__ import annotations

import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from gain_curate import __version__, progress
from gain_curate.bootstrap import RESAMPLES, spearman_interval
from gain_curate.executor.prepare import run_conversations
from gain_curate.executor.prepared import Prepared, load_prepared
from gain_curate.executor.recorded import conversation_record, recorded_template
from gain_curate.executor.workdir import WorkDir
from gain_curate.runfolder import store
from gain_curate.scoring.angles import FORMULA
from gain_curate.scoring.config import ScoreConfig, ScoreResult
from gain_curate.scoring.probe_layers import POOLED, feature_name, run_probe_layers, states_key
from gain_curate.scoring.record import RankedRows, ScoredRows
from gain_curate.scoring.table import build_table, rank_order
from gain_curate.stats import spearman, summary


def merge(prep: Prepared, started: float) -> ScoreResult:
    """Rank every part together and write the public shards, then the manifest. Reads only
    the run's own files: the prepared rows and input, the parts and their markers.
    started: time.perf_counter() when the command began; the manifest's `seconds` run from
    it to the manifest, the merge included. Its steps show their progress through
    gain_curate.progress (the command's bars, or log lines)."""
    cfg, n = prep.cfg, prep.n_rows
    keys = [prep.part_key(p) for p in range(len(prep.parts))]
    work = WorkDir(cfg.out)
    parts, part_stats = work.read_parts(
        keys,
        prep.config_hash,
        states=cfg.keep_states,
        states_key=states_key(cfg, prep.model_info),
        advance=progress.step(f"merge: reading {_count(len(keys), 'part')}", len(keys)),
    )
    rows = prep.rows.to_pydict()
    reasons: list[str | None] = list(rows["reason"])
    ids, ps = rows["input_ids"], rows["p"]
    values = {name: np.full(n, np.nan) for name in ("score", "c_intra", "c_inter")}
    values["tokens_prefix"] = np.array([-1 if p is None else p for p in ps], dtype=np.int64)
    values["tokens_question"] = np.array(
        [-1 if p is None else len(i) - p for i, p in zip(ids, ps)], dtype=np.int64
    )
    scored = ScoredRows.from_table(parts)
    for name in ("score", "c_intra", "c_inter"):
        values[name][scored.row] = getattr(scored, name)
    for r, why in zip(scored.row.tolist(), scored.reason):
        reasons[r] = why
    duplicate_of = [None if d is None else int(d) for d in rows["duplicate_of"]]
    for i, first in enumerate(duplicate_of):  # a duplicate is what its first occurrence is
        if first is not None:
            reasons[i] = reasons[first]
            for v in values.values():
                v[i] = v[first]
    uids, questions, answers = rows["uid"], rows["question"], rows["answer"]
    ranked = RankedRows(
        uids=uids,
        answers=answers,
        **values,
        reasons=reasons,
        order=rank_order(values["score"], uids, duplicate_of),
        duplicate_of=duplicate_of,
    )
    spec = prep.spec
    template, convs = run_conversations(
        cfg,
        prep.table,
        spec,
        questions,
        progress.step(f"merge: rendering {_count(n, 'prompt')}", n),
    )
    prompts = [c.trained if c is not None else None for c in convs]
    found = [c.question if c is not None and c.from_input else None for c in convs]

    def shard_table(first: int, end: int) -> Any:  # the rows ranked first..end-1
        return build_table(
            prep.table,
            ranked,
            question_key=spec["question_key"],
            answer_key=spec["answer_key"],
            data_source=spec["data_source"],
            split=cfg.split,
            prompts=prompts,
            questions=found if any(q is not None for q in found) else None,
            replace_data_source=cfg.data_source is not None,
            ranks=(first, end),
        )

    (cfg.out / store.MANIFEST).unlink(missing_ok=True)  # never a manifest beside other shards
    n_shards = store.shard_count(n, cfg.rows_per_shard)
    shards = store.write_shards(
        shard_table,
        n,
        cfg.out,
        rows_per_shard=cfg.rows_per_shard,
        split=cfg.split,
        advance=progress.step(f"merge: writing {_count(n_shards, 'shard')} to {cfg.out}", n_shards),
    )
    kept = (
        write_states(
            work,
            len(prep.parts),
            uids,
            duplicate_of,
            prep.model_info,
            run_probe_layers(cfg, prep.model_info),
        )
        if cfg.keep_states
        else None
    )
    if kept is None:
        (cfg.out / store.STATES).unlink(missing_ok=True)  # the folder holds what the manifest says
    totals: dict[str, Any] = {
        "kernel": prep.runtime.kernel,
        "token_budget": prep.runtime.token_budget,
        "token_budget_from": prep.runtime.budget_from,
    }
    for key in ("prompts", "tokens_run", "tokens_padded", "prompts_sharing_prefix", "oom_retries"):
        totals[key] = sum(s[key] for s in part_stats)
    if cfg.keep_states:  # the prompt-end pass's tail tokens (a run without states: as before)
        totals["prompt_end_tokens"] = sum(s.get("prompt_end_tokens", 0) for s in part_stats)
    totals["shared_prefix_tokens"] = len(prep.prefix_ids) if prep.prefix_ids else 0
    totals["forward_seconds"] = round(sum(s.get("seconds", 0.0) for s in part_stats), 3)
    totals["parts"] = len(prep.parts)
    totals["batches"] = len(prep.batches)
    manifest = build_manifest(cfg, spec, prep.model_info, ranked, shards, totals, prep.config_hash)
    manifest["signal"]["template"] = recorded_template(cfg, template, convs).to_dict()
    manifest["signal"]["conversation"] = conversation_record(cfg, template, convs)
    longest = max((t for t in rows["total_tokens"] if t is not None), default=0)
    if longest and not manifest["signal"]["conversation"]["trained_differs"]:
        # the longest rendered `prompt`, at least verl's default 512: a longer prompt is cut
        # (verl 0.9's agent loop caps it) or overflows the padded prompt batch (0.7 has no cap)
        manifest["trainer_flags"]["verl"].append(f"data.max_prompt_length={max(512, longest)}")
    manifest["runtime"] = prep.runtime.to_dict()
    if kept is not None:
        manifest["states"] = kept
    seconds = time.perf_counter() - started
    manifest["seconds"] = round(seconds, 3)
    store.write_manifest(cfg.out, manifest)
    return ScoreResult(cfg.out, manifest, seconds)


def _count(n: int, what: str) -> str:
    return f"{n:,} {what}{'' if n == 1 else 's'}"


def length_interval(rows: RankedRows) -> dict[str, Any]:
    """The Spearman of score and question length with its bootstrap interval (a bar: ~6 s
    above 20,000 rows on 2 cores)."""
    advance = progress.step(f"merge: Spearman interval, {RESAMPLES:,} resamples", RESAMPLES)
    est = spearman_interval(
        rows.score,
        np.where(rows.tokens_question >= 0, rows.tokens_question, np.nan),
        what=("gain_score", "question length"),
        advance=advance,
    )
    advance.finish()  # no interval to resample (too few rows, a constant column): done
    return est.to_dict()


def write_states(
    work: WorkDir,
    n_parts: int,
    uids: list[str],
    duplicate_of: list[int | None],
    model_info: dict[str, Any],
    probe_layers: list[int],
) -> dict[str, Any]:
    """OUT/states.npz from the parts' pooled states: one row per scored input row (a duplicate
    gets its first occurrence's states, as it gets its scores), in input-row order, with
    `row` (the input row, extra_info.index) and `gain_uid`, then the (N, d) float16 features:
    question_mean, last_token, prompt_end@L<k> per probe layer. The manifest's `states` entry."""
    got = work.read_states(
        n_parts, progress.step(f"merge: reading the states of {_count(n_parts, 'part')}", n_parts)
    )
    d = int(model_info["hidden_size"])
    rows = got.get("row", np.zeros(0, np.int64))
    at = {int(r): i for i, r in enumerate(rows)}
    copies = [
        (i, at[first]) for i, first in enumerate(duplicate_of) if first is not None and first in at
    ]
    take = np.array([*range(len(rows)), *(j for _, j in copies)], dtype=np.int64)
    row = np.concatenate([rows, np.array([i for i, _ in copies], np.int64)])
    order = np.argsort(row, kind="stable")
    arrays = {"row": row[order], "gain_uid": np.array([uids[r] for r in row[order]], dtype=np.str_)}
    features = [*POOLED, *(feature_name(k) for k in probe_layers)]
    for name in features:
        v = got.get(name, np.zeros((0, d), np.float16))
        arrays[name] = v[take[order]]
    sha = store.write_npz_atomic(work.out / store.STATES, arrays)
    return {
        "path": store.STATES,
        "rows": int(len(row)),
        "sha256": sha,
        "dtype": "float16",
        "layer": model_info["layer"],
        "hidden_size": d,
        "probe_layers": list(probe_layers),
        "features": features,
        "arrays": {
            "row": "input row (extra_info.index)",
            "gain_uid": "the row's gain_uid",
            "question_mean": "mean of the question tokens' MLP inputs at the layer",
            "last_token": "MLP input at the question's last token, at the layer",
            **{
                feature_name(k): f"residual stream after {k} decoder layers (Hugging Face's "
                f"output_hidden_states[{k}]) at the last token of the whole prompt, "
                "generation prompt included"
                for k in probe_layers
            },
        },
    }


def merge_run(out: Path) -> ScoreResult:
    """`gain-curate merge OUT`: rank-merge the parts that --shard workers wrote. Nothing is
    resolved or read again here: the run's runtime, config hash and prepared rows come from
    OUT/.gain-curate, so a CPU login node merges what GPU nodes scored."""
    t0 = time.perf_counter()
    return merge(load_prepared(out, for_merge=True), t0)


def build_manifest(
    cfg: ScoreConfig,
    spec: dict[str, Any],
    model_info: dict[str, Any],
    rows: RankedRows,
    shards: list[dict[str, Any]],
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
        "input": spec,
        "model": model_info,
        "signal": {
            "formula": FORMULA,
            "inter_weight": cfg.inter_weight,
            "hidden_state": (
                f"input of layer {model_info['layer']}'s MLP (output of its post-attention norm)"
            ),
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
            # the same with its seeded 95% bootstrap interval and n (bootstrap.py)
            "spearman_score_vs_question_tokens_interval": length_interval(rows),
        },
        "seconds": None,  # the command's, to the manifest: merge() sets it last
        "prefill": run_info,
        # one shell word each (store.verl_files_flag): they paste into bash or zsh as they are
        "trainer_flags": {"verl": verl_flags(cfg.split, files)},
    }


def verl_flags(split: str, files: list[str]) -> list[str]:
    """data.train_files (rank order: data.shuffle=False) or, for a test or validation split,
    data.val_files (verl never shuffles those)."""
    train = store.verl_files_key(split) == "data.train_files"
    return [store.verl_files_flag(split, files)] + (["data.shuffle=False"] if train else [])
