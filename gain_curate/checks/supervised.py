"""The supervised-gradient check of `validate`: per prompt, the Frobenius norm of the gradient
of the chosen layer's `mlp.up_proj` weight under the supervised loss of its reference
solution (mean token cross-entropy of the answer, rendered as the assistant turn after the
scoring conversation), and its rank correlations with the angle signals.

Per-prompt gradients come from batched forward/backward passes: for y = x W^T the
gradient of sample b is G_b = sum_t g_bt x_bt^T, with x the up_proj inputs and g the
gradients at its outputs. Prompts in a batch never interact (causal attention, right
padding, per-sample losses summed), so G_b equals a one-prompt loss.backward() exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from gain_curate.bootstrap import Estimate
from gain_curate.checks.gradients import up_proj_row_grads
from gain_curate.inputs.template import ScoringTemplate
from gain_curate.stats import partial_spearman, spearman


@dataclass(frozen=True)
class Example:
    ids: list[int]  # prompt + solution tokens
    n_prompt: int  # loss on ids[n_prompt:]


def build_examples(
    tok: Any, template: ScoringTemplate, questions: list[str], solutions: list[str]
) -> list[Example]:
    out = []
    for q, s in zip(questions, solutions):
        msgs = template.messages(q)
        prompt = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        full = tok.apply_chat_template(msgs + [{"role": "assistant", "content": s}], tokenize=False)
        p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
        f_ids = tok(full, add_special_tokens=False)["input_ids"]
        if f_ids[: len(p_ids)] != p_ids or len(f_ids) <= len(
            p_ids
        ):  # template re-renders earlier turns
            f_ids = p_ids + tok(s, add_special_tokens=False)["input_ids"]
        out.append(Example(f_ids, len(p_ids)))
    return out


def grad_norms(
    model: Any,
    examples: list[Example],
    layer: int,
    *,
    token_budget: int = 4096,
    pad_id: int = 0,
    on_batch: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-example ||dL/dW_up||_F and loss L (mean CE over the solution tokens). Logits are
    taken only from the batch's first solution position on (`logits_to_keep`, where the
    model takes it: the prompts' logits, most of a (B, T, vocab) tensor, are never built);
    the model's own head computes them, soft-capping or scaling included."""
    import inspect

    import torch

    from gain_curate.scoring.batching import length_sorted_batches
    from gain_curate.scoring.forward import right_pad

    device = next(model.parameters()).device
    trims = "logits_to_keep" in inspect.signature(model.forward).parameters
    norms, losses = np.zeros(len(examples)), np.zeros(len(examples))
    with up_proj_row_grads(model, layer) as row_grads:
        for batch in length_sorted_batches([len(e.ids) for e in examples], token_budget):
            ids, mask = right_pad([examples[i].ids for i in batch], pad_id)
            labels = torch.full_like(ids, -100)
            for r, i in enumerate(batch):
                e = examples[i]
                labels[r, e.n_prompt : len(e.ids)] = ids[r, e.n_prompt : len(e.ids)]
            # position t predicts token t + 1: positions start .. T - 2 predict every solution
            start = min(examples[i].n_prompt for i in batch) - 1 if trims else 0
            kw = {"logits_to_keep": torch.arange(start, ids.shape[1] - 1, device=device)}
            out = model(
                input_ids=ids.to(device), attention_mask=mask.to(device), **(kw if trims else {})
            )
            logits = out.logits.float() if trims else out.logits.float()[:, :-1]
            target = labels[:, start + 1 :].to(device)
            ce = torch.nn.functional.cross_entropy(
                logits.transpose(1, 2), target, ignore_index=-100, reduction="none"
            )
            counts = (target != -100).sum(1).clamp_min(1)
            per_sample = ce.sum(1) / counts
            per_sample.sum().backward()
            norms[batch] = row_grads().flatten(1).norm(dim=1).cpu().numpy()
            losses[batch] = per_sample.detach().cpu().numpy()
            if on_batch is not None:
                on_batch(len(batch))
    return norms, losses


def correlations(
    grad: np.ndarray,
    score: np.ndarray,
    c_intra: np.ndarray,
    c_inter: np.ndarray,
    length: np.ndarray,
) -> dict[str, float | None]:
    return {
        "spearman_grad_vs_score": spearman(grad, score),
        "spearman_grad_vs_c_intra": spearman(grad, c_intra),
        "spearman_grad_vs_c_inter": spearman(grad, c_inter),
        "spearman_grad_vs_question_tokens": spearman(grad, length),
        "partial_spearman_grad_vs_score_given_length": partial_spearman(grad, score, length),
    }


@dataclass(frozen=True)
class CorrelationIntervals:
    """The statistics of `correlations`, each an Estimate (value, 95% seeded bootstrap
    interval, n, a warning when the interval includes 0), and the warnings once each."""

    intervals: dict[str, Estimate]
    uncertainty: list[str]

    def to_json(self) -> dict[str, object]:
        """validate.json's `intervals` and `uncertainty`, in that order."""
        return {
            "intervals": {k: e.to_dict() for k, e in self.intervals.items()},
            "uncertainty": self.uncertainty,
        }


def correlation_intervals(
    grad: np.ndarray,
    score: np.ndarray,
    c_intra: np.ndarray,
    c_inter: np.ndarray,
    length: np.ndarray,
    *,
    seed: int = 0,
) -> CorrelationIntervals:
    """The same statistics as `correlations`, with their intervals (CorrelationIntervals)."""
    from gain_curate.bootstrap import partial_spearman_ci, spearman_ci

    what = "the up_proj gradient norm"
    est = {
        "spearman_grad_vs_score": spearman_ci(grad, score, what=(what, "gain_score"), seed=seed),
        "spearman_grad_vs_c_intra": spearman_ci(grad, c_intra, what=(what, "C_intra"), seed=seed),
        "spearman_grad_vs_c_inter": spearman_ci(grad, c_inter, what=(what, "C_inter"), seed=seed),
        "spearman_grad_vs_question_tokens": spearman_ci(
            grad, length, what=(what, "question length"), seed=seed
        ),
        "partial_spearman_grad_vs_score_given_length": partial_spearman_ci(
            grad, score, length, what=(what, "gain_score", "question length"), seed=seed
        ),
    }
    lines = list(
        dict.fromkeys(e.warning or e.reason for e in est.values() if e.warning or e.reason)
    )
    return CorrelationIntervals(est, lines)
