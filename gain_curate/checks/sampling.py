"""K samples per prompt from one prefill: the shared-prefix sampler behind `validate --rollouts`.

`model.generate(num_return_sequences=K)` repeats each prompt K times before its prefill, so
a batch of P prompts costs P*K prompt passes. Here the P prompts (left-padded) are prefilled
once, the KV cache is repeated K times along the batch (row p*K + k holds prompt p's k-th
sample), and a plain decode loop draws every row from softmax(logits / T) over the whole
vocabulary (top_k = 0, top_p = 1, no repetition penalty: what a GRPO trainer's rollout
samples) until it emits an end token or reaches `max_new_tokens`. A finished row leaves the
batch (its KV rows are dropped), so the tail of a batch costs only the rows still running.

Each prompt draws from its own seeded generator, so its samples do not depend on which
prompts share its batch (up to floating-point differences between batch shapes).

    groups = sample_groups(model, [[151644, 872, ...], ...], k=8, max_new_tokens=256,
                           temperature=1.0, eos_ids=[151645], pad_id=151643, seeds=[0, 1, ...])
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from transformers.cache_utils import DynamicLayer

from gain_curate.runtime.transformers_compat import cache_kwargs

# on_step(step, rows, logits): before each draw, the (n, V) fp32 logits of the n rows still
# running (row ids p*K + k) at their step-th new token; the tests compare them to a plain pass.
StepHook = Callable[[int, torch.Tensor, torch.Tensor], None]


@torch.no_grad()
def sample_groups(
    model: Any,
    prompts: list[list[int]],
    k: int,
    *,
    max_new_tokens: int,
    temperature: float,
    eos_ids: list[int],
    pad_id: int,
    seeds: list[int],
    on_step: StepHook | None = None,
    keep_input_of: torch.nn.Module | None = None,
) -> list[list[list[int]]] | tuple[list[list[list[int]]], list[list[torch.Tensor]]]:
    """Per prompt, `k` completions as token ids through the first end token (or cut off at
    `max_new_tokens`). temperature 0 is greedy (argmax), for checks against `generate`.

    `keep_input_of`: a module of the model whose input at the position that predicts each
    sampled token is kept; then returns (completions, states), states[p][k] of shape
    (len(completion), d): what the GRPO pass reuses instead of running the model again."""
    device = next(model.parameters()).device
    if device.type == "cpu":
        keep_freed_memory()
    kept: list[torch.Tensor] = []  # per forward: (rows, d) at the last position
    handle = None
    if keep_input_of is not None:
        handle = keep_input_of.register_forward_pre_hook(
            lambda _m, a: kept.append(a[0][:, -1].clone())
        )
    try:
        tokens, kept_rows = _decode(
            model,
            prompts,
            k,
            max_new_tokens,
            temperature,
            eos_ids,
            pad_id,
            seeds,
            on_step,
            kept,
            device,
        )
    finally:
        if handle is not None:
            handle.remove()
    completions = [tokens[p * k : (p + 1) * k] for p in range(len(prompts))]
    if keep_input_of is None:
        return completions
    per_row: list[list[torch.Tensor]] = [[] for _ in tokens]
    kept[0] = kept[0].repeat_interleave(k, dim=0)  # the prefill's: one per prompt
    for rows, states in zip(kept_rows, kept):
        for r, state in zip(rows, states):
            per_row[r].append(state)
    stacked = [torch.stack(x) for x in per_row]  # (len(completion), d) each
    return completions, [stacked[p * k : (p + 1) * k] for p in range(len(prompts))]


def _decode(
    model: Any,
    prompts: list[list[int]],
    k: int,
    max_new_tokens: int,
    temperature: float,
    eos_ids: list[int],
    pad_id: int,
    seeds: list[int],
    on_step: StepHook | None,
    kept: list[torch.Tensor],
    device: torch.device,
) -> tuple[list[list[int]], list[list[int]]]:
    """The prefill and the decode loop: every row's tokens, and per step the rows run (the
    rows of `kept`'s entries, which a forward hook fills)."""
    n_prompts = len(prompts)
    ids, mask = left_pad(prompts, pad_id)
    positions = (mask.cumsum(1) - 1).clamp_min(0)  # a left-padded row still starts at 0
    out = model(
        input_ids=ids.to(device),
        attention_mask=mask.to(device),
        position_ids=positions.to(device),
        use_cache=True,
        logits_to_keep=1,
    )
    cache = returned_cache(out)
    cache.batch_repeat_interleave(k)  # (P, ...) -> (P*K, ...): the shared prefix, K times
    reserve(cache, max_new_tokens)
    logits = out.logits[:, -1].float().repeat_interleave(k, dim=0)  # (P*K, V)
    mask = mask.to(device).repeat_interleave(k, dim=0)  # (P*K, width)
    rows = torch.arange(n_prompts * k, device=device)  # which sample each batch row is
    next_pos = torch.tensor([len(p) for p in prompts], device=device).repeat_interleave(k)
    eos = torch.tensor(eos_ids, device=device)
    generators = [torch.Generator(device=device).manual_seed(s) for s in seeds]
    tokens: list[list[int]] = [[] for _ in range(n_prompts * k)]
    kept_rows: list[list[int]] = []
    for step in range(max_new_tokens):
        kept_rows.append(rows.tolist())
        if on_step is not None:
            on_step(step, rows, logits)
        drawn = draw(logits, temperature, rows // k, generators)
        for r, t in zip(rows.tolist(), drawn.tolist()):
            tokens[r].append(t)
        running = ~torch.isin(drawn, eos)
        if step + 1 == max_new_tokens or not running.any():
            break
        if not running.all():  # finished rows leave the batch, KV cache included
            keep = running.nonzero()[:, 0]
            cache.batch_select_indices(keep)
            rows, drawn, mask, next_pos = rows[keep], drawn[keep], mask[keep], next_pos[keep]
        mask = torch.cat([mask, mask.new_ones(len(rows), 1)], dim=1)
        out = model(
            input_ids=drawn[:, None],
            attention_mask=mask,
            position_ids=next_pos[:, None],
            **cache_kwargs(model, cache),
        )
        logits = out.logits[:, -1].float()
        next_pos = next_pos + 1
    return tokens, kept_rows


@functools.cache
def keep_freed_memory() -> bool:
    """On Linux (glibc), let freed memory stay in the process for the next allocation.

    By default glibc serves every allocation above a few MB (a decode step's (rows, V)
    logits and sampling buffers: 40-80 MB each) with a fresh mmap, so every step the kernel
    faults in and zeroes those pages again: a quarter of a 128-row CPU decode step here
    (measured: 40 steps of Qwen2.5-0.5B, 24 s -> 16-19 s). Process-wide and once; the
    process keeps its peak memory until it exits. False where it does not apply."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        mallopt = getattr(libc, "mallopt", None)
    except OSError:
        return False
    if mallopt is None:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's malloc.h
    return bool(mallopt(m_mmap_threshold, 1 << 30)) and bool(
        mallopt(m_trim_threshold, (1 << 31) - 1)
    )


def draw(
    logits: torch.Tensor,
    temperature: float,
    prompt_of_row: torch.Tensor,
    generators: list[torch.Generator],
    block: int = 128,
) -> torch.Tensor:
    """One token per row from softmax(logits / T) by inverse CDF, u uniform in [0, 1) from
    the generator of the row's prompt (each prompt's rows are contiguous: rows stay in
    order); argmax at T = 0. Two levels, so no full-vocabulary cumsum: the first block of
    `block` tokens whose cumulative mass exceeds u * total, then the token inside it (block
    masses summed in float32, cumulative sums in float64).

    Not torch.multinomial: on CPU it costs ~4 ms a row over a 152k vocabulary, a quarter of
    a 64-row decode step. Here one (n, V) buffer is allocated (on CPU a fresh large tensor
    costs its page faults, as much as the arithmetic) and everything else is per block."""
    if temperature == 0:
        return logits.argmax(-1)
    n, vocab = logits.shape
    e = logits.new_zeros(n, -(-vocab // block) * block)  # zero mass past the vocabulary
    torch.sub(logits, logits.amax(dim=-1, keepdim=True), out=e[:, :vocab])
    e[:, :vocab].div_(temperature).exp_()  # unnormalised probabilities
    e = e.view(n, -1, block)  # (n, blocks, block)
    cdf = e.sum(dim=-1).double().cumsum(dim=-1)  # (n, blocks)
    prompt_ids, counts = torch.unique_consecutive(prompt_of_row, return_counts=True)
    u = torch.cat(
        [
            torch.rand(c, generator=generators[p], dtype=torch.float64, device=logits.device)
            for p, c in zip(prompt_ids.tolist(), counts.tolist())
        ]
    )
    target = (u * cdf[:, -1])[:, None]
    # right=True: the first index whose cdf exceeds the target, never a zero-mass one
    b = torch.searchsorted(cdf, target, right=True).clamp_max(cdf.shape[1] - 1)  # (n, 1)
    before = torch.where(b > 0, cdf.gather(1, (b - 1).clamp_min(0)), 0.0)
    inner = e[torch.arange(n, device=e.device), b[:, 0]].double().cumsum(dim=-1)  # (n, block)
    t = torch.searchsorted(inner, target - before, right=True).clamp_max(block - 1)
    return (b * block + t)[:, 0].clamp_max(vocab - 1)


def reserve(cache: Any, tokens: int) -> None:
    """Give each plain dynamic layer of `cache` room for `tokens` more positions, so a decode
    step writes its keys and values in place instead of concatenating the whole cache (a
    fifth of a 128-row step at 300 positions on CPU). Other layer kinds (sliding window,
    older transformers) keep concatenating."""
    layers = getattr(cache, "layers", None)
    if not isinstance(layers, list) or any(type(layer) is not DynamicLayer for layer in layers):
        return
    for i, layer in enumerate(layers):
        if layer.keys is not None and layer.keys.dim() == 4:
            layers[i] = ReservedLayer(layer, tokens)


class ReservedLayer(DynamicLayer):
    """A DynamicLayer whose keys and values are views into buffers with spare room."""

    def __init__(self, old: DynamicLayer, tokens: int) -> None:
        super().__init__()
        b, h, n, d = old.keys.shape
        self.device, self.is_initialized, self.length = old.keys.device, True, n
        self.key_buffer = old.keys.new_empty(b, h, n + tokens, d)
        self.value_buffer = old.values.new_empty(b, h, n + tokens, d)
        self.key_buffer[:, :, :n], self.value_buffer[:, :, :n] = old.keys, old.values
        self._views()

    def _views(self) -> None:
        self.keys = self.key_buffer[:, :, : self.length]
        self.values = self.value_buffer[:, :, : self.length]

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        n = key_states.shape[-2]
        if self.length + n > self.key_buffer.shape[-2]:  # out of room: grow as DynamicLayer
            self.key_buffer = torch.cat([self.keys, key_states], dim=-2)
            self.value_buffer = torch.cat([self.values, value_states], dim=-2)
        else:
            self.key_buffer[:, :, self.length : self.length + n] = key_states
            self.value_buffer[:, :, self.length : self.length + n] = value_states
        self.length += n
        self._views()
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self.key_buffer, self.value_buffer = self.key_buffer[indices], self.value_buffer[indices]
        self._views()


def returned_cache(out: Any) -> Any:
    """The KV cache a forward with use_cache=True returned (transformers 5.24 renames
    `past_key_values` to `cache` and warns on the old name; 5.17 knows only it)."""
    return out["cache"] if "cache" in out else out["past_key_values"]


def left_pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token lists -> (B, T) ids padded on the left (every row ends where generation starts)
    and the (B, T) 0/1 mask of real tokens."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(seqs), width, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s) :] = torch.tensor(s)
        mask[i, width - len(s) :] = 1
    return ids, mask
