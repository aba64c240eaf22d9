"""`gain-curate inspect`: what a scored run holds, as numbers, one-line prompts and a plot."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
import pyarrow as pa

from gain_curate.bootstrap import spearman_interval
from gain_curate.runfolder import store
from gain_curate.runfolder.run import open_run
from gain_curate.stats import spearman, summary

DIFFICULTY_KEYS = ("difficulty", "level")


def question_text(row: dict[str, Any]) -> str:
    ei = row.get("extra_info") or {}
    if isinstance(ei.get("question"), str):
        return ei["question"]
    users = [m["content"] for m in row.get("prompt") or [] if m.get("role") == "user"]
    return users[-1] if users else ""


def difficulty(table: pa.Table) -> tuple[str, np.ndarray] | None:
    """A numeric difficulty per row from a `difficulty` or `level` column (top level or in
    extra_info); 'Level 5' reads as 5. None when the data has none."""
    for key in DIFFICULTY_KEYS:
        values = None
        if key in table.column_names:
            values = table[key].to_pylist()
        elif (
            "extra_info" in table.column_names
            and key in table.schema.field("extra_info").type.names
        ):
            values = [e.get(key) if e else None for e in table["extra_info"].to_pylist()]
        if values is None:
            continue
        nums = np.array([_number(v) for v in values], dtype=np.float64)
        if np.isfinite(nums).sum() >= 3:
            return key, nums
    return None


def _number(v: Any) -> float:
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return float(v)
    m = re.search(r"-?\d+(\.\d+)?", str(v)) if v is not None else None
    return float(m.group()) if m else float("nan")


def _col(table: pa.Table, name: str) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in table[name].to_pylist()], dtype=np.float64)


class Prompt(TypedDict):
    """A prompt of the top or bottom list: the whole question (the table view cuts it to
    its width, --json never)."""

    rank: int
    gain_uid: str
    score: float
    question: str


class RunSummary(TypedDict):
    """What `inspect --json` prints (summarize), in its order."""

    out: str
    model: str
    data_source: str | None
    data_source_from: str | None
    conversation: str  # whether `prompt` is what was scored, in words
    trained_differs: bool | None
    rows: int
    scored: int
    unscored: dict[str, int]
    duplicates: int
    score: Any  # stats.summary: min, p10, p50, p90, max (None when nothing scored)
    c_intra: Any
    c_inter: Any
    top: list[Prompt]
    bottom: list[Prompt]
    spearman_score_vs_question_tokens: float | None
    spearman_score_vs_question_tokens_interval: Any  # an Estimate's JSON
    difficulty_column: str | None
    spearman_score_vs_difficulty: float | None
    spearman_score_vs_difficulty_interval: Any


def brief(r: dict[str, Any]) -> Prompt:
    return {
        "rank": r["gain_rank"],
        "gain_uid": r["gain_uid"],
        "score": r["gain_score"],
        "question": question_text(r),
    }


def summarize(out: Path, top: int = 5) -> RunSummary:
    """A scored run's counts, score ranges, top and bottom prompts, and correlations."""
    run = open_run(out)
    manifest, table = run.manifest.sections, run.table()
    rows = table.to_pylist()
    score, q_len = _col(table, "gain_score"), _col(table, "gain_tokens_question")
    scored = [r for r in rows if r["gain_score"] is not None]
    duplicates = sum(r.get("gain_duplicate_of") is not None for r in rows)
    distinct = [r for r in scored if r.get("gain_duplicate_of") is None]  # top/bottom lists

    diff = difficulty(table)
    conv = manifest["signal"].get("conversation") or {}
    return {
        "out": str(out),
        "model": manifest["model"]["name"],
        "data_source": manifest["input"].get("data_source"),
        "data_source_from": manifest["input"].get("data_source_from"),
        # One conversation (docs/design.md, "Outputs"): whether `prompt` is what was scored.
        "conversation": conv.get(
            "note", "not recorded (a run made before gain-curate recorded it)"
        ),
        "trained_differs": conv.get("trained_differs"),
        "rows": len(rows),
        "scored": len(scored),
        "unscored": manifest["counts"]["unscored"],
        "duplicates": duplicates,
        "score": summary(score),
        "c_intra": summary(_col(table, "gain_c_intra")),
        "c_inter": summary(_col(table, "gain_c_inter")),
        "top": [brief(r) for r in distinct[:top]],
        "bottom": [brief(r) for r in distinct[-top:]],
        "spearman_score_vs_question_tokens": spearman(score, q_len),
        # the manifest's, as score's summary printed it (merge resamples in input-row order;
        # the shards are in rank order, so resampling them here gave another interval)
        "spearman_score_vs_question_tokens_interval": manifest["stats"].get(
            "spearman_score_vs_question_tokens_interval"
        )
        or spearman_interval(score, q_len, what=("gain_score", "question length")).to_dict(),
        "difficulty_column": diff[0] if diff else None,
        "spearman_score_vs_difficulty": spearman(score, diff[1]) if diff else None,
        "spearman_score_vs_difficulty_interval": (
            spearman_interval(score, diff[1], what=("gain_score", diff[0])).to_dict()
            if diff
            else None
        ),
    }


def plot(out: Path, path: Path) -> tuple[int, int]:
    """Histogram of the score, score against question length, and score by difficulty
    level when the data has one. Returns the image size in pixels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run = open_run(out)
    manifest, table = run.manifest.sections, run.table()
    score, q_len = _col(table, "gain_score"), _col(table, "gain_tokens_question")
    ok = np.isfinite(score)
    diff = difficulty(table)
    panels = 3 if diff else 2
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 4), dpi=100)
    axes[0].hist(score[ok], bins=40, color="#3b6ea5")
    axes[0].set(title="gain_score", xlabel="score (C_intra + w C_inter)", ylabel="prompts")
    rho = spearman(score, q_len)
    axes[1].scatter(q_len[ok], score[ok], s=6, alpha=0.5, color="#3b6ea5")
    axes[1].set(
        title=f"score vs question length (Spearman {rho:+.2f})"
        if rho is not None
        else "score vs question length",
        xlabel="question tokens",
        ylabel="score",
    )
    if diff:
        key, d = diff
        levels = sorted({v for v in d[ok] if np.isfinite(v)})
        axes[2].boxplot(
            [score[ok & (d == lv)] for lv in levels], tick_labels=[f"{lv:g}" for lv in levels]
        )
        axes[2].set(title=f"score by {key}", xlabel=key, ylabel="score")
    fig.suptitle(
        f"{manifest['model']['name']} on {manifest['input']['source']}: "
        f"{int(ok.sum()):,} scored prompts"
    )
    fig.tight_layout()
    store.write_png(fig, path)
    size = fig.canvas.get_width_height()
    plt.close(fig)
    return size
