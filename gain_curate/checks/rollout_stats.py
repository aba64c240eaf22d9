"""The statistics of `validate --rollouts`: each signal against each RL target (pass rate,
learnability, GRPO gradient norm), the zero-variance filter, the score's AUROC for a
zero-variance group, the warnings, and every ranking compared (rankings.py)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import TYPE_CHECKING

import numpy as np

from gain_curate.bootstrap import Estimate

if TYPE_CHECKING:
    from gain_curate.checks.probe import ProbeFit
    from gain_curate.checks.rankings import RankingTable
    from gain_curate.checks.rollouts import Rollouts

SIGNALS = ("gain_score", "c_intra", "c_inter", "question_tokens")
TRUNCATED_WARN = 0.2  # above this share of cut-off completions, the pass rates say little
TARGETS = ("pass_rate", "learnability", "grpo_grad_norm")


@dataclass(frozen=True)
class ZeroVarianceDrop:
    """Keeping the top `keep` share by score: how many prompts are kept, how many groups
    have zero variance, the share of them that falls away (with its interval), against a
    random subset's expected share (None when no group has zero variance)."""

    keep: float
    kept: int
    zero_variance: int
    dropped_by_score: float | None
    dropped_by_score_interval: Estimate
    dropped_by_random: float | None

    def to_json(self) -> dict[str, object]:
        return {
            **asdict(self),
            "dropped_by_score_interval": self.dropped_by_score_interval.to_dict(),
        }


def zero_variance_drop(
    score: np.ndarray, zero_var: np.ndarray, keep: float, *, seed: int = 0, resamples: int = 2000
) -> ZeroVarianceDrop:
    """Keep the top `keep` fraction of prompts by score (ties by position): the fraction of
    zero-variance prompts that falls away, with its seeded bootstrap interval over prompts,
    against a random subset of the same size, which drops 1 - kept/n of them in expectation
    (the interval's null: a warning when it includes that share)."""
    from gain_curate.bootstrap import bootstrap

    score, zero_var = np.asarray(score, np.float64), np.asarray(zero_var, bool)
    n = len(score)
    kept_n = int(round(keep * n))
    total = int(zero_var.sum())
    random = 1 - kept_n / n if n else None
    est = bootstrap(
        lambda s, z: dropped_rows(s, z, keep),
        (score, zero_var),
        null=random,
        seed=seed,
        resamples=resamples,
    )
    return ZeroVarianceDrop(
        keep,
        kept_n,
        total,
        None if total == 0 else est.value,
        est,
        None if total == 0 else random,
    )


def dropped_rows(score: np.ndarray, zero_var: np.ndarray, keep: float) -> np.ndarray:
    """(B, n) scores and zero-variance flags -> (B,): the share of each row's zero-variance
    prompts outside its top round(keep n) by score (ties by position, unscored last); NaN
    where a row has none."""
    b, n = score.shape
    order = np.argsort(np.where(np.isfinite(score), -score, np.inf), axis=1, kind="stable")
    kept = np.zeros((b, n), bool)
    np.put_along_axis(kept, order[:, : int(round(keep * n))], True, axis=1)
    total = zero_var.sum(1)
    dropped = (zero_var & ~kept).sum(1)
    return np.where(total > 0, dropped / np.maximum(total, 1), np.nan)


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


@dataclass(frozen=True)
class RolloutStats:
    """validate --rollouts' statistics (rollout_statistics), in validate.json's order."""

    reward: str
    pass_rate_mean: float
    zero_variance_share: float
    all_correct: int
    all_wrong: int
    mean_completion_tokens: float
    truncated_share: float
    none_rewards: int
    warnings: list[str]
    correlations: dict[str, float | None]  # spearman_<signal>_vs_<target>, partial_...
    keep_top_by_score: list[ZeroVarianceDrop]
    auroc_score_predicts_zero_variance: float | None
    rankings: RankingTable

    def to_json(self) -> dict[str, object]:
        head = {f.name: getattr(self, f.name) for f in fields(self)[:9]}
        return {
            **head,
            **self.correlations,
            "keep_top_by_score": [x.to_json() for x in self.keep_top_by_score],
            "auroc_score_predicts_zero_variance": self.auroc_score_predicts_zero_variance,
            **self.rankings.to_json(),
        }


def rollout_statistics(
    signals: dict[str, np.ndarray],
    rl: Rollouts,
    *,
    probes: dict[str, ProbeFit] | None = None,
    n_run: int | None = None,
    seed: int = 0,
    resamples: int = 2000,
) -> RolloutStats:
    """Spearman and length-controlled partial Spearman of every signal with every RL
    target; the zero-variance filter at 25/50/75 % kept; the score's AUROC. Then every
    ranking (the signals and the probes' held-out predictions, probe.ProbeFit by feature
    name) with seeded bootstrap intervals, what the default curriculum serves of a run of
    n_run prompts, and the verdict: rankings.compare_rankings."""
    from gain_curate.checks.rankings import compare_rankings, signal_rankings
    from gain_curate.stats import partial_spearman, spearman

    length = signals["question_tokens"]
    targets = rl.targets()
    corr = {}
    for s in SIGNALS:
        for t in TARGETS:
            corr[f"spearman_{s}_vs_{t}"] = spearman(signals[s], getattr(targets, t))
            if s != "question_tokens":
                corr[f"partial_spearman_{s}_vs_{t}_given_length"] = partial_spearman(
                    signals[s], getattr(targets, t), length
                )
    zv = rl.zero_variance
    score = signals["gain_score"]
    keep_top = [
        zero_variance_drop(score, zv, x, seed=seed, resamples=resamples) for x in (0.25, 0.5, 0.75)
    ]
    ranked = compare_rankings(
        signal_rankings(signals, probes),
        targets,
        length=length,
        n_run=n_run,
        seed=seed,
        resamples=resamples,
        probes=probes,
    )
    like_random = [
        f"{100 * x.keep:.0f}%"
        for x in keep_top
        if x.dropped_by_score is not None and x.dropped_by_score_interval.warning
    ]
    if like_random:
        line = (
            f"keeping the top {', '.join(like_random)} by gain_score drops zero-variance groups "
            "no more surely than a random subset would: the 95% interval includes the random "
            f"share (n = {len(score)})"
        )
        ranked = replace(ranked, uncertainty=[line, *ranked.uncertainty])
    return RolloutStats(
        reward=rl.reward,
        pass_rate_mean=float(np.mean(rl.pass_rate)),
        zero_variance_share=float(np.mean(zv)),
        all_correct=int(np.sum(rl.pass_rate == 1)),
        all_wrong=int(np.sum(zv & (rl.pass_rate != 1))),
        mean_completion_tokens=float(np.mean(rl.mean_length)),
        truncated_share=float(np.mean(rl.truncated)),
        none_rewards=int(rl.none_rewards),
        warnings=rollout_warnings(rl),
        correlations=corr,
        keep_top_by_score=keep_top,
        auroc_score_predicts_zero_variance=auroc(score, zv),
        rankings=ranked,
    )


def rollout_warnings(rl: Rollouts) -> list[str]:
    """One line each: too many completions cut off; rewards that were None."""
    out = []
    share = float(np.mean(rl.truncated))
    if share > TRUNCATED_WARN:
        out.append(
            f"{100 * share:.0f}% of the completions were cut off at --max-new-tokens "
            f"{rl.max_new_tokens} "
            "before they ended, so the pass rates measure the length limit as much as the model; "
            "raise --max-new-tokens"
        )
    if rl.none_rewards:
        out.append(
            f"--reward {rl.reward} returned None for {rl.none_rewards} completions; "
            "they were scored 0 (TRL's weighted nansum counts a None as 0)"
        )
    return out
