"""The prompt-end pass of `score --keep-states`: the residual stream at the last token of the
whole rendered prompt (generation prompt included: where generation starts) at the probe
layers (probe_layers.py), `prompt_end@L<k>` = Hugging Face's `output_hidden_states[k]` there.

The question pass stops at the question's last token (the angle score needs no more). Its
KV cache is kept, and each row's tail (Segments.tail: instruction, end of turn, generation
prompt) runs after it as one more small batched forward:

    cache     (B, kv, C, hd)  C = shared prefix + the question batch's width, row i's real
                              slots [0, context[i]) (right-padded: its pads come after them)
    tail ids  (B, W)          right-padded; 2D mask = [slot < context[i] | tail pad mask]
    positions context[i] + j  each row goes on from its own length, not from C

so a pad in the middle is a masked key and each tail token attends to exactly its own
prefix, question and earlier tail tokens. Decoder layer k-1's output is read at each row's
last real tail token by a forward hook, and the pass stops before layer max(k) (a pre-hook
raises, as runtime/truncated.py stops at the MLP). Nothing here touches the question pass:
the angle score's bytes are the same with or without it.

Sliding-window layers (Mistral, Gemma 2/3, Qwen2 with use_sliding_window): Transformers counts
a window in cache slots, and the question batch's pads are slots, so a tail token of a row
shorter than the batch's widest sees up to (width - q_i) fewer real tokens on those layers
than in a plain forward whenever its context is longer than the window. Full-attention
models (Qwen2.5, Llama, SmolLM2: what the tests use) are exact.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from gain_curate.runtime.transformers_compat import cache_kwargs, decoder_layers
from gain_curate.runtime.truncated import LoadedModel
from gain_curate.scoring.forward import right_pad


class _StopTail(Exception):
    """Raised before decoder layer max(k): nothing past the last probe layer runs."""


@contextlib.contextmanager
def layer_outputs(
    lm: LoadedModel, layers: Sequence[int], last: Sequence[int]
) -> Iterator[dict[int, torch.Tensor]]:
    """While open, every forward fills got[k] with decoder layer k-1's output (the residual
    stream after k layers) at position last[i] of batch row i: (B, d)."""
    got: dict[int, torch.Tensor] = {}
    blocks = decoder_layers(lm.model)
    handles = []
    for k in layers:

        def hook(_m: Any, _args: Any, out: Any, k: int = k) -> None:
            h = out[0] if isinstance(out, tuple) else out  # (B, T, d); 4.x returns a tuple
            rows = torch.arange(h.shape[0], device=h.device)
            got[k] = h[rows, torch.tensor(list(last), device=h.device)]

        handles.append(blocks[k - 1].register_forward_hook(hook))
    try:
        yield got
    finally:
        for handle in handles:
            handle.remove()


def question_ends(
    lm: LoadedModel, layers: Sequence[int], tails: Sequence[list[int]], lengths: Sequence[int]
) -> contextlib.AbstractContextManager[dict[int, torch.Tensor]]:
    """Around the question pass: a row whose tail is empty ends its prompt at its question's
    last token (position lengths[i] - 1 of the batch), so its states come from this pass.
    Hooks only when such a row is in the batch."""
    if all(tails):
        return contextlib.nullcontext({})
    return layer_outputs(lm, layers, [n - 1 for n in lengths])


@torch.inference_mode()
def prompt_end(
    lm: LoadedModel,
    cache: Any,
    context: Sequence[int],
    tails: Sequence[list[int]],
    pad_id: int,
    layers: Sequence[int],
    at_question: dict[int, torch.Tensor],
) -> torch.Tensor:
    """(B, K, d) fp32 on the device: row i's residual stream after k layers (k in `layers`)
    at the last token of its prompt. `cache` holds the question pass's KV, row i's real
    slots [0, context[i]); `at_question` the question pass's values for empty tails."""
    b, dev = len(tails), lm.device
    if all(not t for t in tails):
        return _stack(at_question, layers, dev)
    ids, tail_mask = right_pad(list(tails), pad_id)  # an empty tail: one masked pad
    width, slots = ids.shape[1], cache.get_seq_length()
    ctx = torch.tensor(list(context))
    ctx_mask = (torch.arange(slots)[None, :] < ctx[:, None]).long()
    mask = torch.cat([ctx_mask, tail_mask], dim=1)  # (B, C + W)
    pos = ctx[:, None] + torch.arange(width)[None, :]  # (B, W)
    last = [max(len(t) - 1, 0) for t in tails]

    def stop(_m: Any, _args: Any) -> None:
        raise _StopTail

    top = decoder_layers(lm.model)[max(layers)].register_forward_pre_hook(stop)
    try:
        with layer_outputs(lm, layers, last) as got, contextlib.suppress(_StopTail):
            lm.model(
                input_ids=ids.to(dev),
                attention_mask=mask.to(dev),
                position_ids=pos.to(dev),
                **cache_kwargs(lm.model, cache),
            )
    finally:
        top.remove()
    out = _stack(got, layers, dev)
    empty = [i for i in range(b) if not tails[i]]
    if empty:
        out[empty] = _stack(at_question, layers, dev)[empty]
    return out


def _stack(got: dict[int, torch.Tensor], layers: Sequence[int], dev: torch.device) -> torch.Tensor:
    """{k: (B, d)} -> (B, K, d) fp32 on `dev` (a split model keeps each layer on its GPU)."""
    return torch.stack([got[k].to(dev) for k in layers], dim=1).float()


def with_prompt_end(
    lm: LoadedModel,
    pooled: torch.Tensor,
    cache: Any,
    context: list[int],
    tails: list[list[int]],
    pad_id: int,
    layers: tuple[int, ...],
    at_question: dict[int, torch.Tensor],
) -> torch.Tensor:
    """(B, 2, d) pooled states + (B, K, d) prompt-end states -> (B, 2 + K, d) float16 on CPU."""
    if cache is None:  # no probe layer (the scored layer is layer 0)
        return pooled
    ends = prompt_end(lm, cache, context, tails, pad_id, layers, at_question)
    return torch.cat([pooled, ends.to(torch.float16).cpu()], dim=1)
