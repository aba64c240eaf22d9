"""The manifest a merge writes (docs/design.md, "Outputs"): build_manifest from the ranked
rows and the shards, then what only the merge knows (run_manifest: the recorded template
and conversation, verl's prompt length, the runtime, the states). Key order = the order on
disk; the sections later commands add (schedule, exports, prediction) come after."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict
from datetime import datetime, timezone
from typing import Any

import numpy as np

from gain_curate import __version__, progress
from gain_curate.bootstrap import RESAMPLES, Estimate, spearman_interval
from gain_curate.executor.prepared import Prepared
from gain_curate.executor.recorded import conversation_record, recorded_template
from gain_curate.inputs.sources import InputSpec
from gain_curate.runfolder import store
from gain_curate.runfolder.run import ModelInfo, Shard, StatesInfo
from gain_curate.scoring.angles import FORMULA
from gain_curate.scoring.config import ScoreConfig
from gain_curate.scoring.record import PrefillStats, RankedRows
from gain_curate.stats import spearman, summary

# the prefill counters the parts' markers hold, summed into the manifest's `prefill`
SUMMED = ("prompts", "tokens_run", "tokens_padded", "prompts_sharing_prefix", "oom_retries")


def count(n: int, what: str) -> str:
    return f"{n:,} {what}{'' if n == 1 else 's'}"


def prefill_totals(prep: Prepared, part_stats: list[PrefillStats]) -> dict[str, int | float | str]:
    """The manifest's `prefill`: the runtime's kernel and budget, the parts' counters summed."""
    totals: dict[str, int | float | str] = {
        "kernel": prep.runtime.kernel,
        "token_budget": prep.runtime.token_budget,
        "token_budget_from": prep.runtime.budget_from,
    }
    for key in SUMMED:
        totals[key] = sum(getattr(s, key) for s in part_stats)
    if prep.cfg.keep_states:  # the prompt-end pass's tail tokens (a run without states: as before)
        totals["prompt_end_tokens"] = sum(s.prompt_end_tokens for s in part_stats)
    totals["shared_prefix_tokens"] = len(prep.prefix_ids) if prep.prefix_ids else 0
    totals["forward_seconds"] = round(sum(s.seconds for s in part_stats), 3)
    totals["parts"] = len(prep.parts)
    totals["batches"] = len(prep.batches)
    return totals


def length_interval(rows: RankedRows) -> Estimate:
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
    return est


def build_manifest(
    cfg: ScoreConfig,
    spec: InputSpec,
    model_info: ModelInfo,
    rows: RankedRows,
    shards: list[Shard],
    prefill: dict[str, int | float | str],
    config_hash_: str,
) -> store.ManifestJSON:
    scored = int(np.isfinite(rows.score).sum())
    unscored = Counter(r for r in rows.reasons if r is not None)
    files = [str((cfg.out / s.path).resolve()) for s in shards]
    return {
        "tool": "gain-curate",
        "version": __version__,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config_hash": config_hash_,
        "input": asdict(spec),
        "model": asdict(model_info),
        "signal": {
            "formula": FORMULA,
            "inter_weight": cfg.inter_weight,
            "hidden_state": (
                f"input of layer {model_info.layer}'s MLP (output of its post-attention norm)"
            ),
            "max_tokens": cfg.max_tokens,
            "template": dict(cfg.template.to_dict()),
        },
        "shards": [s.to_json() for s in shards],
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
            "spearman_score_vs_question_tokens_interval": dict(length_interval(rows).to_dict()),
        },
        "seconds": None,  # the command's, to the manifest: merge() sets it last
        "prefill": dict(prefill),
        # one shell word each (store.verl_files_flag): they paste into bash or zsh as they are
        "trainer_flags": {"verl": verl_flags(cfg.split or "train", files)},
    }


def run_manifest(
    manifest: store.ManifestJSON,
    prep: Prepared,
    template: Any,
    convs: list[Any],
    longest: int,
    kept: StatesInfo | None,
) -> None:
    """What only the merge knows, in the manifest's order: signal.template and
    signal.conversation as scored, verl's data.max_prompt_length, the runtime, the states."""
    cfg = prep.cfg
    manifest["signal"]["template"] = dict(recorded_template(cfg, template, convs).to_dict())
    conversation = conversation_record(cfg, template, convs)
    manifest["signal"]["conversation"] = dict(conversation)
    if longest and not conversation["trained_differs"]:
        # the longest rendered `prompt`, at least verl's default 512: a longer prompt is cut
        # (verl 0.9's agent loop caps it) or overflows the padded prompt batch (0.7 has no cap)
        manifest["trainer_flags"]["verl"].append(f"data.max_prompt_length={max(512, longest)}")
    manifest["runtime"] = asdict(prep.runtime)
    if kept is not None:
        manifest["states"] = kept.to_json()


def verl_flags(split: str, files: list[str]) -> list[str]:
    """data.train_files (rank order: data.shuffle=False) or, for a test or validation split,
    data.val_files (verl never shuffles those)."""
    train = store.verl_files_key(split) == "data.train_files"
    return [store.verl_files_flag(split, files)] + (["data.shuffle=False"] if train else [])
