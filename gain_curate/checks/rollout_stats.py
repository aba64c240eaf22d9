"""The statistics of `validate --rollouts`: each signal against each RL target (pass rate,
learnability, GRPO gradient norm), the zero-variance filter, the score's AUROC for a
zero-variance group, the warnings, and every ranking compared (rankings.py)."""

from __future__ import annotations

from typing import Any

import numpy as np

SIGNALS = ("gain_score", "c_intra", "c_inter", "question_tokens")
TRUNCATED_WARN = 0.2  # above this share of cut-off completions, the pass rates say little
TARGETS = ("pass_rate", "learnability", "grpo_grad_norm")


def zero_variance_drop(score: np.ndarray, zero_var: np.ndarray, keep: float) -> dict[str, Any]:
    """Keep the top `keep` fraction of prompts by score (ties by position): the fraction of
    zero-variance prompts that falls away, against a random subset of the same size, which
    drops 1 - kept/n of them in expectation."""
    score, zero_var = np.asarray(score, np.float64), np.asarray(zero_var, bool)
    n = len(score)
    kept_n = int(round(keep * n))
    order = sorted(range(n), key=lambda i: (-score[i] if np.isfinite(score[i]) else np.inf, i))
    kept = np.zeros(n, bool)
    kept[order[:kept_n]] = True
    total = int(zero_var.sum())
    dropped = int((zero_var & ~kept).sum())
    return {
        "keep": keep,
        "kept": kept_n,
        "zero_variance": total,
        "dropped_by_score": None if total == 0 else dropped / total,
        "dropped_by_random": None if total == 0 else 1 - kept_n / n,
    }


def auroc(score: np.ndarray, positive: np.ndarray) -> float | None:
    """P(score of a positive > score of a negative), ties counting one half (Mann-Whitney
    U / (n_pos n_neg)); None when either class is empty."""
    from gain_curate.stats import rankdata

    score, positive = np.asarray(score, np.float64), np.asarray(positive, bool)
    keep = np.isfinite(score)
    score, positive = score[keep], positive[keep]
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = rankdata(score)
    u = ranks[positive].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def rollout_statistics(
    signals: dict[str, np.ndarray],
    rl: dict[str, Any],
    *,
    probes: dict[str, Any] | None = None,
    n_run: int | None = None,
    seed: int = 0,
    resamples: int = 2000,
) -> dict[str, Any]:
    """Spearman and length-controlled partial Spearman of every signal with every RL
    target; the zero-variance filter at 25/50/75 % kept; the score's AUROC. Then every
    ranking (the signals and the probes' held-out predictions, probe.ProbeFit by feature
    name) with seeded bootstrap intervals, what the default curriculum serves of a run of
    n_run prompts, and the verdict: rankings.compare_rankings."""
    from gain_curate.checks.rankings import compare_rankings, signal_rankings
    from gain_curate.stats import partial_spearman, spearman

    length = signals["question_tokens"]
    corr = {}
    for s in SIGNALS:
        for t in TARGETS:
            corr[f"spearman_{s}_vs_{t}"] = spearman(signals[s], rl[t])
            if s != "question_tokens":
                corr[f"partial_spearman_{s}_vs_{t}_given_length"] = partial_spearman(
                    signals[s], rl[t], length
                )
    zv = rl["zero_variance"]
    score = signals["gain_score"]
    return {
        "reward": rl["reward"],
        "pass_rate_mean": float(np.mean(rl["pass_rate"])),
        "zero_variance_share": float(np.mean(zv)),
        "all_correct": int(np.sum(rl["pass_rate"] == 1)),
        "all_wrong": int(np.sum(zv & (rl["pass_rate"] != 1))),
        "mean_completion_tokens": float(np.mean(rl["mean_length"])),
        "truncated_share": float(np.mean(rl["truncated"])),
        "none_rewards": int(rl.get("none_rewards", 0)),
        "warnings": rollout_warnings(rl),
        **corr,
        "keep_top_by_score": [zero_variance_drop(score, zv, x) for x in (0.25, 0.5, 0.75)],
        "auroc_score_predicts_zero_variance": auroc(score, zv),
        **compare_rankings(
            signal_rankings(signals, probes),
            rl,
            length=length,
            n_run=n_run,
            seed=seed,
            resamples=resamples,
            probes=probes,
        ),
    }


def rollout_warnings(rl: dict[str, Any]) -> list[str]:
    """One line each: too many completions cut off; rewards that were None."""
    out = []
    share = float(np.mean(rl["truncated"]))
    if share > TRUNCATED_WARN:
        out.append(
            f"{100 * share:.0f}% of the completions were cut off at --max-new-tokens "
            f"{rl['max_new_tokens']} "
            "before they ended, so the pass rates measure the length limit as much as the model; "
            "raise --max-new-tokens"
        )
    if rl.get("none_rewards"):
        out.append(
            f"--reward {rl['reward']} returned None for {rl['none_rewards']} completions; "
            "they were scored 0 (TRL's weighted nansum counts a None as 0)"
        )
    return out
