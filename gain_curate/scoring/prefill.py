"""The truncated prefill that yields per-prompt segment sums, a planned batch at a time.

Only what the signal needs runs: the truncated model (runtime.truncated) up to the chosen
layer's MLP input. Tokens after the question are never run either: attention is causal,
they cannot change P or Q. The shared prefix P runs once and only question tokens run
after it (forward); a prompt whose tokens do not start with it runs whole. The batches
come from the plan (batching); out of memory, the rest is re-planned at half the budget.

States (`keep_states`, what `score --keep-states` stores for a learnability probe), float16
per prompt: the mean of its question tokens' MLP inputs (the very rows the reduction reads),
the MLP input at the question's last token, and at each probe layer k the residual stream
at the last token of the whole prompt, generation prompt included (prompt_end.py: the tail
runs after the question pass, on its KV cache; the question pass is the same either way).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch

from gain_curate.inputs.conversation import Segments
from gain_curate.runtime.truncated import LoadedModel
from gain_curate.scoring.batching import Batch, RowTooLarge, group, plan_batches
from gain_curate.scoring.forward import (
    PrefixState,
    full_batch,
    new_cache,
    packed,
    question_batch,
    run_prefix,
)
from gain_curate.scoring.prompt_end import question_ends, with_prompt_end
from gain_curate.scoring.record import PrefillStats
from gain_curate.scoring.reduction import reduce_rows

__all__ = ["BatchSums", "PrefillStats", "pooled_states", "run_plan", "segment_sums"]


@dataclass(frozen=True)
class BatchSums:
    """Segment sums of one batch: indices into the caller's list, (B, d) fp32 sums on CPU;
    with keep_states also (B, 2 + K, d) float16 states on CPU: [:, 0] the mean of the
    question tokens' MLP inputs, [:, 1] the MLP input at the question's last token,
    [:, 2 + j] the residual stream after probe_layers[j] layers at the prompt's last token."""

    indices: list[int]
    s_p: torch.Tensor
    s_q: torch.Tensor
    states: torch.Tensor | None = None


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


def run_plan(
    lm: LoadedModel,
    segments: Mapping[int, Segments],
    prefix_ids: list[int] | None,
    batches: list[Batch],
    *,
    token_budget: int,
    pad_id: int = 0,
    kernel: str = "torch",
    on_batch: Callable[[int, int], None] | None = None,
    stats: PrefillStats | None = None,
    recover_after: int = 8,
    keep_states: bool = False,
    probe_layers: Sequence[int] = (),
) -> Iterator[BatchSums]:
    """Run planned batches and yield their P and Q unit-vector sums (BatchSums.indices are
    the segments' keys), with `keep_states` also each prompt's states (BatchSums), the
    prompt end at `probe_layers`. Out of memory:
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
            out += group(segments, keys, shared, budget, p, lm.device.type)
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
        keep = {"keep_states": True, "probe_layers": tuple(probe_layers)} if keep_states else {}
        try:
            with _timed(stats):
                result = (
                    _run_shared(
                        lm, prefix, segments, batch, pad_id, kernel, stats, on_batch, **keep
                    )
                    if batch.shared
                    else _run_alone(lm, segments, batch, pad_id, kernel, stats, on_batch, **keep)
                )
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


def _run_shared(
    lm: LoadedModel,
    prefix: PrefixState,
    segments: Mapping[int, Segments],
    batch: Batch,
    pad_id: int,
    kernel: str,
    stats: PrefillStats,
    on_batch: Callable[[int, int], None] | None,
    *,
    keep_states: bool = False,
    probe_layers: tuple[int, ...] = (),
) -> BatchSums:
    p = len(prefix.ids)
    qs = [segments[k].input_ids[p:] for k in batch.rows]
    lengths = [len(q) for q in qs]
    tails = [segments[k].tail for k in batch.rows]
    cache = new_cache(lm) if probe_layers else None  # kept for the prompt-end pass
    kept = {"cache": cache} if cache is not None else {}  # without states: the same call
    with question_ends(lm, probe_layers, tails, lengths) as at_q:
        h = question_batch(lm, prefix, qs, pad_id, **kept)
    offsets = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    s_q = reduce_rows(packed(h, lengths), offsets, kernel).cpu()
    _count(stats, len(qs), sum(lengths), h.shape[0] * h.shape[1], on_batch)
    stats.prompts_sharing_prefix += len(qs)
    states = None
    if keep_states:
        stats.prompt_end_tokens += sum(len(t) for t in tails) if cache is not None else 0
        states = pooled_states(h, [0] * len(qs), lengths)
        del h  # the tail pass's activations need the room more
        ctx = [p + n for n in lengths]
        states = with_prompt_end(lm, states, cache, ctx, tails, pad_id, probe_layers, at_q)
    return BatchSums(list(batch.rows), prefix.s_p.expand(len(qs), -1), s_q, states)


def _run_alone(
    lm: LoadedModel,
    segments: Mapping[int, Segments],
    batch: Batch,
    pad_id: int,
    kernel: str,
    stats: PrefillStats,
    on_batch: Callable[[int, int], None] | None,
    *,
    keep_states: bool = False,
    probe_layers: tuple[int, ...] = (),
) -> BatchSums:
    segs = [segments[k] for k in batch.rows]
    lengths = [len(s.input_ids) for s in segs]
    tails = [s.tail for s in segs]
    cache = new_cache(lm) if probe_layers else None
    kept = {"cache": cache} if cache is not None else {}
    with question_ends(lm, probe_layers, tails, lengths) as at_q:
        h = full_batch(lm, [s.input_ids for s in segs], pad_id, **kept)
    bounds = [0]
    for s in segs:  # P then Q of each prompt, consecutive in the packed rows
        bounds += [bounds[-1] + s.p, bounds[-1] + len(s.input_ids)]
    sums = (
        reduce_rows(packed(h, lengths), torch.tensor(bounds), kernel).cpu().view(len(segs), 2, -1)
    )
    _count(stats, len(segs), sum(lengths), h.shape[0] * h.shape[1], on_batch)
    states = None
    if keep_states:
        stats.prompt_end_tokens += sum(len(t) for t in tails) if cache is not None else 0
        states = pooled_states(h, [s.p for s in segs], lengths)
        del h
        states = with_prompt_end(lm, states, cache, lengths, tails, pad_id, probe_layers, at_q)
    return BatchSums(list(batch.rows), sums[:, 0], sums[:, 1], states)


def pooled_states(h: torch.Tensor, starts: list[int], ends: list[int]) -> torch.Tensor:
    """(B, T, d) MLP inputs, question tokens of row i at [starts[i], ends[i]) -> (B, 2, d)
    float16 on CPU: the fp32 mean of those rows, and the row at ends[i] - 1 (the last token
    that ran: the question's last). float16 halves the file; a probe needs no more."""
    pooled = [
        torch.stack([h[i, a:b].float().mean(0), h[i, b - 1].float()])
        for i, (a, b) in enumerate(zip(starts, ends))
    ]
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
    probe_layers: Sequence[int] = (),
) -> Iterator[BatchSums]:
    """Plan and run: the P and Q unit-vector sums of every segment, a batch at a time
    (indices into `segments`); with `keep_states` also the states (BatchSums)."""
    keyed = dict(enumerate(segments))
    plan = plan_batches(
        keyed, token_budget=token_budget, share_prefix=share_prefix, device_type=lm.device.type
    )
    yield from run_plan(
        lm,
        keyed,
        plan.prefix_ids,
        plan.batches,
        token_budget=token_budget,
        pad_id=pad_id,
        kernel=kernel,
        on_batch=on_batch,
        stats=stats,
        keep_states=keep_states,
        probe_layers=probe_layers,
    )


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
