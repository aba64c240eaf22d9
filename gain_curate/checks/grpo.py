"""The GRPO gradient of `validate --rollouts`: per prompt, ||dL/dW_up||_F of its group's loss
L = -sum_k A_k sum_t log pi(o_kt) / sum_k |o_k| (rollouts.py has the definitions), exact per
group from batched passes.

Two ways to the same number:
- from the rollout's own states (the default, when the hooked layer is the last one of a
  Llama-style decoder: Llama, Mistral, Qwen2, Qwen3): the sampler kept, for every sampled
  token, the residual stream entering the last layer's MLP at the position that predicted
  it. The loss reaches W_up only through that MLP, the final norm and the head, so those
  few modules run again on the kept states: no attention, no earlier layer, no prompt;
- else one pass over the model: each prompt once, its KV cache (graph included) repeated
  over its K rows, the completions on top (right-padded).
Either way the loss's gradient at the final hidden states comes chunk by chunk from the
softmax (`head_grad`: no (tokens, V) logits graph), then flows back to the hooked weight,
and G = sum of g^T x over the group's positions (x the up_proj inputs, g the gradients at
its outputs; rows never interact: causal attention, masked pads).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

# decoder layers of the form h + mlp(post_attention_layernorm(h)), then model.norm and the head
STATE_REUSE_TYPES = ("llama", "mistral", "qwen2", "qwen3")


def reusable_state_module(model: Any, layer: int) -> Any:
    """The module whose input the sampler keeps for the state-reuse path (the last layer's
    post_attention_layernorm), or None when that path does not apply to this model/layer."""
    from gain_curate.runtime.transformers_compat import decoder_layers

    if getattr(getattr(model, "config", None), "model_type", None) not in STATE_REUSE_TYPES:
        return None
    layers = decoder_layers(model)
    if layer != len(layers) - 1:
        return None
    last = layers[layer]
    parts = (
        getattr(last, "post_attention_layernorm", None),
        getattr(last, "mlp", None),
        getattr(model.base_model, "norm", None),
    )
    return parts[0] if all(p is not None for p in parts) else None


def grpo_grad_norms(
    model: Any,
    prompts: list[list[int]],
    completions: list[list[list[int]]],
    advantages: list[np.ndarray],
    layer: int,
    *,
    temperature: float = 1.0,
    token_budget: int = 8192,
    pad_id: int = 0,
    on_group: Callable[[int], None] | None = None,
    states: dict[int, list[Any]] | None = None,
) -> np.ndarray:
    """Per prompt, ||dL/dW_up||_F of its group's GRPO loss. `states[i][k]`: the kept states
    of prompt i's k-th completion, (len, d) (sample_groups' keep_input_of); groups without
    them take the full pass, whole groups a batch, up to `token_budget` tokens run."""
    norms = np.zeros(len(prompts))
    todo = [i for i in range(len(prompts)) if np.any(advantages[i] != 0) and completions[i]]
    if on_group is not None:
        on_group(len(prompts) - len(todo))  # zero-variance groups: gradient exactly 0
    reuse = reusable_state_module(model, layer) is not None and states is not None
    fast = [i for i in todo if reuse and i in states]
    slow = [i for i in todo if i not in fast]
    with _hooked_up_proj(model, layer) as (lin, calls):
        for i in fast:
            calls.clear()
            norms[i] = _norm_from_states(
                model, layer, completions[i], states[i], advantages[i], temperature, lin, calls
            )
            if on_group is not None:
                on_group(1)
        for batch in _group_batches(prompts, completions, slow, token_budget):
            calls.clear()
            norms[batch] = _norms_full_pass(
                model, prompts, completions, advantages, batch, temperature, pad_id, lin, calls
            )
            if on_group is not None:
                on_group(len(batch))
    return norms


@dataclass
class UpProjPass:
    """One pass through the hooked up_proj: its input x, and the gradient g at its output
    once backward reaches it (None when nothing downstream of the pass is in the loss)."""

    x: Any  # (..., in_features)
    g: Any = None  # (..., out_features)


@contextlib.contextmanager
def _hooked_up_proj(model: Any, layer: int) -> Iterator[tuple[Any, list[UpProjPass]]]:
    """While open, only layer `layer`'s up_proj weight takes gradients, and every pass
    through it appends an UpProjPass; no g arrives when nothing downstream of that pass is
    in the loss (its contribution is 0)."""
    from gain_curate.checks.gradients import up_proj

    lin, calls = up_proj(model, layer), []

    def hook(_m: Any, args: tuple[Any, ...], output: Any) -> None:
        call = UpProjPass(args[0].detach())
        calls.append(call)
        output.register_hook(lambda g: setattr(call, "g", g.detach()))

    model.requires_grad_(False)
    lin.weight.requires_grad_(True)
    handle = lin.register_forward_hook(hook)
    try:
        yield lin, calls
    finally:
        handle.remove()
        lin.weight.grad = None
        lin.weight.requires_grad_(False)


def _token_weights(completions: list[list[int]], advantages: np.ndarray, device: Any) -> Any:
    """GRPO's token mean over the group: each token of row k weighs -A_k / (group tokens)."""
    import torch

    total = sum(len(c) for c in completions)
    return torch.tensor(
        [-advantages[k] / total for k, c in enumerate(completions) for _ in c],
        dtype=torch.float32,
        device=device,
    )


def _norm_from_states(
    model: Any,
    layer: int,
    completions: list[list[int]],
    kept: list[Any],
    advantages: np.ndarray,
    temperature: float,
    lin: Any,
    calls: list[UpProjPass],
) -> float:
    """One group from its kept states: the last layer's MLP, the final norm and the head."""
    import torch

    from gain_curate.runtime.transformers_compat import decoder_layers

    device = lin.weight.device
    last, head = decoder_layers(model)[layer], model.get_output_embeddings()
    residual = torch.cat(kept).to(device)  # (N, d), row after row, as the targets
    hidden = model.base_model.norm(residual + last.mlp(last.post_attention_layernorm(residual)))
    targets = torch.tensor([t for c in completions for t in c], device=device)
    weight = _token_weights(completions, advantages, device)
    torch.autograd.backward(hidden, head_grad(head, hidden.detach(), targets, weight, temperature))
    (call,) = calls
    grad = call.g.float().T @ call.x.float()  # (I, d) = sum_t g_t x_t^T
    return grad.norm().item()


def _norms_full_pass(
    model: Any,
    prompts: list[list[int]],
    completions: list[list[list[int]]],
    advantages: list[np.ndarray],
    batch: list[int],
    temperature: float,
    pad_id: int,
    lin: Any,
    calls: list[UpProjPass],
) -> np.ndarray:
    """A batch of groups through the model: prompts once, completions on their KV cache."""
    import torch

    from gain_curate.checks.sampling import left_pad, returned_cache
    from gain_curate.runtime.transformers_compat import cache_kwargs
    from gain_curate.scoring.forward import right_pad

    device, base, head = lin.weight.device, model.base_model, model.get_output_embeddings()
    k = len(completions[batch[0]])
    ids, p_mask = left_pad([prompts[i] for i in batch], pad_id)
    out = base(
        input_ids=ids.to(device),
        attention_mask=p_mask.to(device),
        use_cache=True,
        position_ids=(p_mask.cumsum(1) - 1).clamp_min(0).to(device),
    )
    cache = returned_cache(out)
    cache.batch_repeat_interleave(k)  # (P, ...) -> (P*K, ...), differentiable
    rows = [(i, j) for i in batch for j in range(k)]
    c_ids, c_mask = right_pad([completions[i][j] for i, j in rows], pad_id)
    start = torch.tensor([len(prompts[i]) for i, _ in rows])[:, None]
    hidden = base(
        input_ids=c_ids.to(device),
        position_ids=(start + torch.arange(c_ids.shape[1])).to(device),
        attention_mask=torch.cat([p_mask.repeat_interleave(k, 0), c_mask], 1).to(device),
        **cache_kwargs(base, cache),
    ).last_hidden_state  # (P*K, Tc, d)
    # completion token t is predicted by the prompt's last state (t = 0), else by t - 1
    first = out.last_hidden_state[:, -1:].repeat_interleave(k, 0)
    states = torch.cat([first, hidden[:, :-1]], 1)[c_mask.bool().to(device)]  # (N, d)
    weight = torch.cat([_token_weights(completions[i], advantages[i], device) for i in batch])
    targets = c_ids.to(device)[c_mask.bool().to(device)]
    torch.autograd.backward(states, head_grad(head, states.detach(), targets, weight, temperature))
    grads = torch.zeros(len(batch), lin.out_features, lin.in_features, device=device)
    for call in calls:  # prompt pass: P rows; completion pass: P*K rows, groups together
        if call.g is not None:
            g = call.g.float().reshape(len(batch), -1, lin.out_features)
            x = call.x.float().reshape(len(batch), -1, lin.in_features)
            grads += torch.einsum("pti,ptd->pid", g, x)
    return grads.flatten(1).norm(dim=1).cpu().numpy()


def head_grad(
    head: Any, states: Any, targets: Any, weight: Any, temperature: float, chunk: int = 512
) -> Any:
    """d/dh of sum_n w_n log softmax(head(h_n) / T)[y_n], (N, d): per chunk of rows,
    w (onehot(y) - softmax) / T times the head's weight, what autograd would give through
    `head(h).float() / T` without holding (N, V) logits and their log-softmax graph."""
    import torch

    out = torch.empty_like(states)
    with torch.no_grad():
        for a in range(0, len(states), chunk):
            logits = head(states[a : a + chunk]).float()  # (chunk, V)
            if temperature != 1:
                logits.div_(temperature)
            dlogits = torch.softmax(logits, dim=-1).neg_()
            dlogits[torch.arange(len(dlogits), device=dlogits.device), targets[a : a + chunk]] += 1
            dlogits.mul_((weight[a : a + chunk] / temperature)[:, None])
            out[a : a + chunk] = dlogits.to(head.weight.dtype) @ head.weight
    return out


def _group_batches(
    prompts: list[list[int]], completions: list[list[list[int]]], todo: list[int], token_budget: int
) -> list[list[int]]:
    """Groups (a prompt and its K rows) packed, longest completion first, into batches whose
    tokens run (prompts x longest prompt + rows x longest completion) fit the budget; a
    group larger than the budget goes alone."""
    longest = {i: max(len(c) for c in completions[i]) for i in todo}
    batches: list[list[int]] = []
    current: list[int] = []
    for i in sorted(todo, key=lambda i: (-longest[i], i)):
        group = [*current, i]
        size = len(group) * max(len(prompts[j]) for j in group) + sum(
            len(completions[j]) for j in group
        ) * max(longest[j] for j in group)
        if current and size > token_budget:
            batches.append(current)
            group = [i]
        current = group
    return batches + ([current] if current else [])
