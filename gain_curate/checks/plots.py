"""validate.png: the supervised gradient norm against gain_score and question length; with
rollouts also the pass rate and the GRPO gradient norm against gain_score."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def scatter(
    path: Path,
    grad: np.ndarray,
    score: np.ndarray,
    length: np.ndarray,
    summary: dict[str, Any],
    rl: dict[str, Any] | None = None,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4 if rl else 2, figsize=(20 if rl else 10, 4), dpi=100)
    if rl:
        zv = np.asarray(rl["zero_variance"], bool)
        axes[2].scatter(
            score[~zv], rl["pass_rate"][~zv], s=12, color="#3b6ea5", label="mixed group"
        )
        axes[2].scatter(
            score[zv], rl["pass_rate"][zv], s=12, color="#c44e52", marker="x", label="zero variance"
        )
        axes[2].set(xlabel="gain_score", ylabel="pass rate", title="pass rate over K rollouts")
        axes[2].legend(loc="best")
        axes[3].scatter(score, rl["grpo_grad_norm"], s=12, color="#3b6ea5")
        axes[3].set(
            xlabel="gain_score", ylabel="||grad up_proj||_F (GRPO)", title="GRPO gradient norm"
        )
    sc = axes[0].scatter(score, grad, c=length, s=10, cmap="viridis")
    fig.colorbar(sc, ax=axes[0], label="question tokens")
    rho = summary["spearman_grad_vs_score"]
    axes[0].set(
        xlabel="gain_score",
        ylabel="||grad up_proj||_F",
        title=f"Spearman {rho:+.3f}" if rho is not None else "",
    )
    axes[1].scatter(length, grad, s=10, color="#3b6ea5")
    axes[1].set(xlabel="question tokens", ylabel="||grad up_proj||_F")
    fig.suptitle(f"{summary['model']} on {Path(summary['data']).name}: {summary['sample']} prompts")
    fig.tight_layout()
    from gain_curate.runfolder.store import write_png

    write_png(fig, path)
    plt.close(fig)
