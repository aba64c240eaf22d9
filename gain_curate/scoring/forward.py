"""The forward passes of the prefill. Shared prefix: P (system prompt, few-shot turns,
user-turn header) is the same token string for nearly every prompt, and causal attention
makes its hidden states and KV the same too. So P runs once (`run_prefix`); its KV is
copied into each batch's cache and its unit sum s_P is reused; only question tokens run,
at positions p, p+1, ... (`question_batch`). A prompt whose tokens do not start with the
shared prefix runs whole (`full_batch`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from gain_curate.runtime.transformers_compat import cache_kwargs
from gain_curate.runtime.truncated import LoadedModel, mlp_inputs
from gain_curate.scoring.reduction import reduce_rows


@dataclass(frozen=True)
class PrefixState:
    ids: list[int]
    s_p: torch.Tensor  # (d,) fp32 on CPU
    kv: list[tuple[torch.Tensor, torch.Tensor]]  # per layer, (1, kv_heads, p, head_dim)


def _new_cache(lm: LoadedModel) -> Any:
    """A cache of plain full-length layers, whatever the model's attention pattern.

    Not `DynamicCache(config=...)`: for sliding-window layers (Mistral, Gemma 2/3, ...) that
    keeps only the last window - 1 tokens and counts its length from what it was given, so
    a cache pre-filled with the prefix KV reports window - 1 tokens on sliding layers and p
    on full ones. Transformers 4.56 then numbers the question tokens from layer 0's length
    and gets the full-attention layers of hybrid models wrong (measured: Gemma 2/3 with
    p = 156, window 16: s_Q off by 4.5 in fp32). Keeping all p prefix tokens on every layer
    makes the cache length p everywhere; the model still applies each layer's window
    through the mask it builds from the config (absolute positions), as in the unshared
    run. Costs the full prefix KV on sliding layers, which the token budget counts anyway.
    """
    from transformers import DynamicCache

    return DynamicCache()


def run_prefix(lm: LoadedModel, ids: list[int], kernel: str) -> PrefixState:
    cache = _new_cache(lm)
    x = torch.tensor([ids], device=lm.device)
    h = mlp_inputs(lm, x, **cache_kwargs(lm.model, cache))[0]
    s_p = reduce_rows(h, torch.tensor([0, len(ids)]), kernel)[0].cpu()
    kv = [(layer.keys, layer.values) for layer in cache.layers[: lm.layer + 1]]
    return PrefixState(ids, s_p, kv)


def right_pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token lists -> (B, T) ids padded on the right, and the (B, T) 0/1 mask of real tokens."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(seqs), width, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    return ids, mask


def new_cache(lm: LoadedModel) -> Any:
    """An empty cache for `question_batch` / `full_batch` to fill, which the caller keeps
    (the prompt-end pass of --keep-states runs on from it)."""
    return _new_cache(lm)


def question_batch(
    lm: LoadedModel, prefix: PrefixState, qs: list[list[int]], pad_id: int, cache: Any = None
) -> torch.Tensor:
    """Question tokens only, right-padded, attending to the shared prefix: (B, T, d).
    `cache`: an empty one (new_cache) that is left holding P + Q's KV, (B, kv, p + T, hd)."""
    ids, q_mask = right_pad(qs, pad_id)
    (b, width), p = ids.shape, len(prefix.ids)
    mask = torch.cat([torch.ones(b, p, dtype=torch.long), q_mask], dim=1)
    cache = _new_cache(lm) if cache is None else cache
    for layer, (k, v) in enumerate(prefix.kv):
        cache.update(k.expand(b, -1, -1, -1), v.expand(b, -1, -1, -1), layer)
    pos = torch.arange(p, p + width).expand(b, -1)
    dev = lm.device
    return mlp_inputs(
        lm,
        ids.to(dev),
        attention_mask=mask.to(dev),
        position_ids=pos.to(dev),
        **cache_kwargs(lm.model, cache),
    )


def full_batch(
    lm: LoadedModel, seqs: list[list[int]], pad_id: int, cache: Any = None
) -> torch.Tensor:
    """Whole conversations (P and Q), right-padded: (B, T, d). Real tokens never attend to
    pads under a causal mask, and keep positions 0..n-1, so this equals a per-prompt run.
    `cache`: an empty one (new_cache) left holding the batch's KV; the attention is the same
    (an empty cache adds no key, and the mask is sized from the same T)."""
    ids, mask = right_pad(seqs, pad_id)
    kw = cache_kwargs(lm.model, cache) if cache is not None else {"use_cache": False}
    return mlp_inputs(lm, ids.to(lm.device), attention_mask=mask.to(lm.device), **kw)


def packed(h: torch.Tensor, lengths: list[int]) -> torch.Tensor:
    """(B, T, d) right-padded -> (sum lengths, d) real rows, in batch order."""
    keep = torch.arange(h.shape[1]) < torch.tensor(lengths)[:, None]
    return h[keep.to(h.device)]
