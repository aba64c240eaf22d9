"""Model loading and the truncated prefill that yields per-prompt segment sums.

Only what the signal needs runs: the base decoder (no lm_head, no logits) truncated to the
chosen layer, stopped by a pre-hook on that layer's MLP, whose input is the output of the
post-attention RMSNorm (what mlp.up_proj multiplies). Later layers are never loaded.
Tokens after the question are never run either: attention is causal, they cannot change
P or Q.

Shared prefix: P (system prompt, few-shot turns, user-turn header) is the same token string
for nearly every prompt, and causal attention makes its hidden states and KV the same too.
So P runs once; its KV is copied into each batch's cache and its unit sum s_P is reused;
only question tokens run, at positions p, p+1, ... Each prompt's P is checked at the token
level; a prompt whose tokens do not start with the shared prefix runs whole.

Pooled states (`keep_states`, what `score --keep-states` stores for a learnability probe):
per prompt, the mean of its question tokens' MLP inputs (the very rows the reduction reads)
and the MLP input at its LAST token that runs, which is the question's last token (the
prefill stops at the end of the question: no instruction, no generation prompt), float16.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from gain_curate.errors import ModelError
from gain_curate.models import (
    ModelRef,
    cache_kwargs,
    decoder_layers,
    from_pretrained_kwargs,
    quiet_transformers,
)
from gain_curate.reduction import reduce_rows
from gain_curate.template import Segments


class _StopForward(Exception):
    """Raised by the MLP pre-hook once the hooked layer's MLP input is captured."""


@dataclass
class LoadedModel:
    model: torch.nn.Module  # base decoder, truncated to layer + 1 layers
    layer: int  # 0-based index of the hooked layer in the full model
    num_layers: int  # layers of the full model
    hidden_size: int
    device: torch.device
    dtype: torch.dtype
    captured: list[torch.Tensor]  # filled by the hook, emptied by mlp_inputs
    prefixes: dict[tuple[int, ...], Any] = field(default_factory=dict)  # run once per process


def resolve_layer(layer: int | None, num_layers: int) -> int:
    """None -> last layer; negative indices count from the end, as in Python."""
    idx = num_layers - 1 if layer is None else layer
    if idx < 0:
        idx += num_layers
    if not 0 <= idx < num_layers:
        raise ModelError(
            f"--layer {layer} is out of range: the model has {num_layers} layers (0..{num_layers - 1})"
        )
    return idx


@dataclass(frozen=True)
class ModelShape:
    layer: int  # 0-based hooked layer
    num_layers: int
    hidden_size: int


def read_config(ref: ModelRef) -> Any:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(ref.path, revision=ref.revision)
    except (OSError, ValueError) as e:
        raise ModelError(
            f"cannot read the model config of {ref.name}: {str(e).splitlines()[0]}"
        ) from None


def model_shape(ref: ModelRef, layer: int | None) -> ModelShape:
    """The hooked layer and the model's size, from its config alone (no weights)."""
    config = read_config(ref)
    text_config = getattr(config, "text_config", None) or config
    n = text_config.num_hidden_layers
    return ModelShape(resolve_layer(layer, n), n, text_config.hidden_size)


def load_model(
    ref: ModelRef, *, dtype: torch.dtype, device: torch.device, layer: int | None,
    split: bool = False,
) -> LoadedModel:  # fmt: skip
    """The base model truncated after `layer` on `device`; `split` (the runtime's placement,
    decided once) places one replica over the node's GPUs with accelerate's device map."""
    from transformers import AutoModel

    config = read_config(ref)
    text_config = getattr(config, "text_config", None) or config
    num_layers = text_config.num_hidden_layers
    idx = resolve_layer(layer, num_layers)
    text_config.num_hidden_layers = idx + 1  # layers past the hooked one are never loaded
    if isinstance(getattr(text_config, "layer_types", None), list):
        text_config.layer_types = text_config.layer_types[: idx + 1]
    device_map = None
    if split and device.type == "cuda":
        from gain_curate.placement import node_max_memory, split_across_gpus

        device_map = split_across_gpus(config, layer=idx, dtype=dtype, max_memory=node_max_memory())
    extra = {"device_map": device_map} if device_map else {}
    with quiet_transformers():
        try:
            model = AutoModel.from_pretrained(
                ref.path, config=config, **from_pretrained_kwargs(dtype, ref.revision), **extra
            )
        except (OSError, ValueError) as e:
            raise ModelError(f"cannot load model {ref.name}: {str(e).splitlines()[0]}") from None
    if device_map:
        device = model.get_input_embeddings().weight.device  # inputs enter on the first GPU
    else:
        model.to(device)
    model.eval().requires_grad_(False)
    captured: list[torch.Tensor] = []

    def hook(_module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        captured.append(args[0])
        raise _StopForward

    mlp = getattr(decoder_layers(model)[idx], "mlp", None)
    if mlp is None:
        raise ModelError(f"layer {idx} of {ref.name} has no `mlp` module to hook")
    mlp.register_forward_pre_hook(hook)
    return LoadedModel(model, idx, num_layers, text_config.hidden_size, device, dtype, captured)


@torch.inference_mode()
def mlp_inputs(lm: LoadedModel, input_ids: torch.Tensor, **kwargs: Any) -> torch.Tensor:
    """(B, T) ids -> (B, T, d) input of the hooked layer's MLP; nothing after it runs."""
    lm.captured.clear()
    with contextlib.suppress(_StopForward):
        lm.model(input_ids=input_ids, **kwargs)
    if not lm.captured:
        raise ModelError("the model finished without reaching the hooked MLP")
    return lm.captured.pop()


def length_sorted_batches(
    lengths: list[int], token_budget: int, max_padding: float = 0.05, per_row: int = 0
) -> list[list[int]]:
    """Indices grouped into batches whose padded size (B x (longest + per_row)) fits the
    token budget and whose padding stays under `max_padding` of it. per_row counts what
    each row holds besides its own tokens: the shared prefix's KV, copied into every row.

    Longest first, so an out-of-memory failure shows up in the first batch, not the last.
    Without the padding cap, a small dataset's few batches each span a wide length range
    and a third of the compute goes to pads.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    real = 0
    for i in order:
        if batches:
            longest, size = lengths[batches[-1][0]], len(batches[-1]) + 1
            padded = size * longest
            fits = size * (longest + per_row) <= token_budget
            if fits and (padded - real - lengths[i]) <= max_padding * padded:
                batches[-1].append(i)
                real += lengths[i]
                continue
        batches.append([i])
        real = lengths[i]
    return batches


@dataclass(frozen=True)
class BatchSums:
    """Segment sums of one batch: indices into the caller's list, (B, d) fp32 sums on CPU;
    with keep_states also (B, 2, d) float16 pooled states on CPU: [:, 0] the mean of the
    question tokens' MLP inputs, [:, 1] the MLP input at the question's last token."""

    indices: list[int]
    s_p: torch.Tensor
    s_q: torch.Tensor
    states: torch.Tensor | None = None


@dataclass
class PrefillStats:
    """What the prefill did, for the manifest and the benchmark."""

    prompts: int = 0
    tokens_run: int = 0  # real tokens through the model (shared prefix counted once)
    tokens_padded: int = 0  # B x T summed over batches
    shared_prefix_tokens: int = 0
    prompts_sharing_prefix: int = 0
    oom_retries: int = 0
    seconds: float = 0.0  # the model's forward + the reduction only (what MFU divides by)


@dataclass(frozen=True)
class PrefixState:
    ids: list[int]
    s_p: torch.Tensor  # (d,) fp32 on CPU
    kv: list[tuple[torch.Tensor, torch.Tensor]]  # per layer, (1, kv_heads, p, head_dim)


def shared_prefix(segments: list[Segments]) -> list[int] | None:
    """The most common P token string, if at least two prompts share it."""
    counts = Counter(tuple(s.input_ids[: s.p]) for s in segments)
    if not counts:
        return None
    ids, n = counts.most_common(1)[0]
    return list(ids) if n >= 2 and ids else None


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


def _question_batch(
    lm: LoadedModel, prefix: PrefixState, qs: list[list[int]], pad_id: int
) -> torch.Tensor:
    """Question tokens only, right-padded, attending to the shared prefix: (B, T, d)."""
    ids, q_mask = right_pad(qs, pad_id)
    (b, width), p = ids.shape, len(prefix.ids)
    mask = torch.cat([torch.ones(b, p, dtype=torch.long), q_mask], dim=1)
    cache = _new_cache(lm)
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


def _full_batch(lm: LoadedModel, seqs: list[list[int]], pad_id: int) -> torch.Tensor:
    """Whole conversations (P and Q), right-padded: (B, T, d). Real tokens never attend to
    pads under a causal mask, and keep positions 0..n-1, so this equals a per-prompt run."""
    ids, mask = right_pad(seqs, pad_id)
    return mlp_inputs(lm, ids.to(lm.device), attention_mask=mask.to(lm.device), use_cache=False)


def _packed(h: torch.Tensor, lengths: list[int]) -> torch.Tensor:
    """(B, T, d) right-padded -> (sum lengths, d) real rows, in batch order."""
    keep = torch.arange(h.shape[1]) < torch.tensor(lengths)[:, None]
    return h[keep.to(h.device)]


def _is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower()


@contextlib.contextmanager
def _timed(stats: PrefillStats) -> Iterator[None]:
    """Add the block's device time to stats.seconds: CUDA events on a GPU (the block ends in
    a .cpu() copy, so the end event has completed), the wall clock elsewhere."""
    if not torch.cuda.is_available() or not torch.cuda.is_initialized():
        t0 = time.perf_counter()
        yield
        stats.seconds += time.perf_counter() - t0
        return
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    yield
    end.record()
    end.synchronize()
    stats.seconds += start.elapsed_time(end) / 1e3


@dataclass(frozen=True)
class Batch:
    """One forward batch: keys into the caller's segments, and whether its rows run only
    their question tokens after the shared prefix (`shared`) or whole (P and Q)."""

    rows: list[int]
    shared: bool


@dataclass(frozen=True)
class BatchPlan:
    """Every batch of a run, made ONCE from the whole input: parts are groups of whole
    batches, so the scores (and their bytes) never depend on how the work is split."""

    prefix_ids: list[int] | None
    batches: list[Batch]


class RowTooLarge(Exception):
    """One row alone does not fit the device's memory (the caller names it to the user)."""

    def __init__(self, key: int, tokens: int) -> None:
        super().__init__(f"row {key} ({tokens} tokens) does not fit even alone")
        self.key, self.tokens = key, tokens


def _row_tokens(seg: Segments, shared: bool, prefix_len: int) -> int:
    return seg.q if shared and prefix_len else len(seg.input_ids)


def _group(segments: Mapping[int, Segments], keys: list[int], shared: bool, budget: int,
           prefix_len: int, device_type: str) -> list[Batch]:  # fmt: skip
    lengths = [_row_tokens(segments[k], shared, prefix_len) for k in keys]
    # On a GPU the budget is memory, and each row carries its own copy of the prefix KV:
    # count it. On a CPU memory is plentiful and the budget tunes GEMM sizes; counting the
    # KV there shrank default-template batches ~4x (measured on the AVX2 EPYC, 500 GSM8K
    # prompts: 66.1 s with it, 53.4 s without).
    per_row = prefix_len if shared and device_type == "cuda" else 0
    groups = length_sorted_batches(lengths, budget, per_row=per_row)
    return [Batch([keys[j] for j in g], shared) for g in groups]


def plan_batches(segments: Mapping[int, Segments], *, token_budget: int, share_prefix: bool = True,
                 device_type: str = "cpu") -> BatchPlan:  # fmt: skip
    """Length-sorted batches under the token budget over ALL rows: first the rows that start
    with the shared prefix (question tokens only), then the rest (whole)."""
    keys = sorted(segments)
    prefix_ids = shared_prefix([segments[k] for k in keys]) if share_prefix else None
    p = len(prefix_ids) if prefix_ids else 0
    shared = [k for k in keys if p and segments[k].input_ids[: segments[k].p] == prefix_ids]
    is_shared = set(shared)
    alone = [k for k in keys if k not in is_shared]
    batches = _group(segments, shared, True, token_budget, p, device_type)
    batches += _group(segments, alone, False, token_budget, p, device_type)
    return BatchPlan(prefix_ids if shared else None, batches)


def run_plan(lm: LoadedModel, segments: Mapping[int, Segments], prefix_ids: list[int] | None,
             batches: list[Batch], *, token_budget: int, pad_id: int = 0, kernel: str = "torch",
             on_batch: Callable[[int, int], None] | None = None, stats: PrefillStats | None = None,
             recover_after: int = 8, keep_states: bool = False) -> Iterator[BatchSums]:  # fmt: skip
    """Run planned batches and yield their P and Q unit-vector sums (BatchSums.indices are
    the segments' keys), with `keep_states` also each prompt's pooled states. Out of memory:
    halve the budget and re-plan everything not yet run
    at it (not just the failed batch, so later batches do not each fail first); after
    `recover_after` batches in a row succeed, double it again (up to the start) and re-plan.
    A row that does not fit even alone raises RowTooLarge."""
    stats = stats if stats is not None else PrefillStats()
    p = len(prefix_ids) if prefix_ids else 0
    prefix: PrefixState | None = None
    budget, pending, streak = token_budget, list(batches), 0

    def replan(todo: list[Batch]) -> list[Batch]:
        out = []
        for shared in (True, False):
            keys = [k for b in todo if b.shared == shared for k in b.rows]
            out += _group(segments, keys, shared, budget, p, lm.device.type)
        return out

    while pending:
        batch = pending.pop(0)
        if batch.shared and prefix is None:
            prefix = lm.prefixes.get(tuple(prefix_ids))
            if prefix is None:  # once per loaded model: every part of this process reuses it
                prefix = lm.prefixes[tuple(prefix_ids)] = run_prefix(lm, prefix_ids, kernel)
                stats.tokens_run += p
            stats.shared_prefix_tokens = p
        oom = False
        # keep_states only when asked: the runners' positional signature stays as it was
        keep = {"keep_states": True} if keep_states else {}
        try:
            with _timed(stats):
                result = _run_shared(lm, prefix, segments, batch, pad_id, kernel, stats, on_batch, **keep) \
                    if batch.shared else _run_alone(lm, segments, batch, pad_id, kernel, stats, on_batch, **keep)  # fmt: skip
        except (torch.cuda.OutOfMemoryError, RuntimeError) as e:
            if not _is_oom(e):
                raise
            if len(batch.rows) == 1:
                key = batch.rows[0]
                raise RowTooLarge(key, len(segments[key].input_ids)) from None
            oom = True
        if oom:  # outside the except block: the failed batch's tensors are released by now
            torch.cuda.empty_cache()
            stats.oom_retries += 1
            budget, streak = max(1, budget // 2), 0
            pending = replan([batch, *pending])
            continue
        yield result
        streak += 1
        if budget < token_budget and streak >= recover_after and pending:
            budget, streak = min(token_budget, budget * 2), 0
            pending = replan(pending)


def _run_shared(lm: LoadedModel, prefix: PrefixState, segments: Mapping[int, Segments],
                batch: Batch, pad_id: int, kernel: str, stats: PrefillStats,
                on_batch: Callable[[int, int], None] | None, *, keep_states: bool = False) -> BatchSums:  # fmt: skip
    p = len(prefix.ids)
    qs = [segments[k].input_ids[p:] for k in batch.rows]
    lengths = [len(q) for q in qs]
    h = _question_batch(lm, prefix, qs, pad_id)
    offsets = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    s_q = reduce_rows(_packed(h, lengths), offsets, kernel).cpu()
    _count(stats, len(qs), sum(lengths), h.shape[0] * h.shape[1], on_batch)
    stats.prompts_sharing_prefix += len(qs)
    states = pooled_states(h, [0] * len(qs), lengths) if keep_states else None
    return BatchSums(list(batch.rows), prefix.s_p.expand(len(qs), -1), s_q, states)


def _run_alone(lm: LoadedModel, segments: Mapping[int, Segments], batch: Batch, pad_id: int,
               kernel: str, stats: PrefillStats, on_batch: Callable[[int, int], None] | None,
               *, keep_states: bool = False) -> BatchSums:  # fmt: skip
    segs = [segments[k] for k in batch.rows]
    lengths = [len(s.input_ids) for s in segs]
    h = _full_batch(lm, [s.input_ids for s in segs], pad_id)
    bounds = [0]
    for s in segs:  # P then Q of each prompt, consecutive in the packed rows
        bounds += [bounds[-1] + s.p, bounds[-1] + len(s.input_ids)]
    sums = reduce_rows(_packed(h, lengths), torch.tensor(bounds), kernel).cpu().view(len(segs), 2, -1)  # fmt: skip
    _count(stats, len(segs), sum(lengths), h.shape[0] * h.shape[1], on_batch)
    states = pooled_states(h, [s.p for s in segs], lengths) if keep_states else None
    return BatchSums(list(batch.rows), sums[:, 0], sums[:, 1], states)


def pooled_states(h: torch.Tensor, starts: list[int], ends: list[int]) -> torch.Tensor:
    """(B, T, d) MLP inputs, question tokens of row i at [starts[i], ends[i]) -> (B, 2, d)
    float16 on CPU: the fp32 mean of those rows, and the row at ends[i] - 1 (the last token
    that ran: the question's last). float16 halves the file; a probe needs no more."""
    pooled = [torch.stack([h[i, a:b].float().mean(0), h[i, b - 1].float()]) for i, (a, b) in enumerate(zip(starts, ends))]  # fmt: skip
    return torch.stack(pooled).to(torch.float16).cpu()  # one copy off the device per batch


def segment_sums(
    lm: LoadedModel,
    segments: list[Segments],
    *,
    token_budget: int,
    pad_id: int = 0,
    kernel: str = "torch",
    share_prefix: bool = True,
    on_batch: Callable[[int, int], None] | None = None,
    stats: PrefillStats | None = None,
    keep_states: bool = False,
) -> Iterator[BatchSums]:
    """Plan and run: the P and Q unit-vector sums of every segment, a batch at a time
    (indices into `segments`); with `keep_states` also the pooled states (BatchSums)."""
    keyed = dict(enumerate(segments))
    plan = plan_batches(keyed, token_budget=token_budget, share_prefix=share_prefix,
                        device_type=lm.device.type)  # fmt: skip
    yield from run_plan(lm, keyed, plan.prefix_ids, plan.batches, token_budget=token_budget,
                        pad_id=pad_id, kernel=kernel, on_batch=on_batch, stats=stats,
                        keep_states=keep_states)  # fmt: skip


def _count(
    stats: PrefillStats,
    prompts: int,
    tokens: int,
    padded: int,
    on_batch: Callable[[int, int], None] | None,
) -> None:
    stats.prompts += prompts
    stats.tokens_run += tokens
    stats.tokens_padded += padded
    if on_batch is not None:
        on_batch(prompts, tokens)
