"""Model loading and the truncated prefill that yields per-prompt segment sums.

Only what the signal needs runs: the base decoder (no lm_head, no logits) truncated to the
chosen layer, stopped by a pre-hook on that layer's MLP, whose input is the output of the
post-attention RMSNorm (what mlp.up_proj multiplies). Later layers are never loaded.
Tokens after the question are never run either: attention is causal, they cannot change
P or Q.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from gain_curate.errors import ModelError
from gain_curate.kernels.naive import naive_segment_unit_sums
from gain_curate.models import ModelRef, from_pretrained_kwargs, quiet_transformers
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


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    for path in ("layers", "model.layers", "language_model.layers", "decoder.layers"):
        obj: Any = model
        for part in path.split("."):
            obj = getattr(obj, part, None)
        if isinstance(obj, torch.nn.ModuleList):
            return obj
    raise ModelError(f"cannot find the decoder layers of {type(model).__name__}")


def load_model(
    ref: ModelRef, *, dtype: torch.dtype, device: torch.device, layer: int | None
) -> LoadedModel:
    from transformers import AutoConfig, AutoModel

    try:
        config = AutoConfig.from_pretrained(ref.path, revision=ref.revision)
    except (OSError, ValueError) as e:
        raise ModelError(
            f"cannot read the model config of {ref.name}: {str(e).splitlines()[0]}"
        ) from None
    text_config = getattr(config, "text_config", None) or config
    num_layers = text_config.num_hidden_layers
    idx = resolve_layer(layer, num_layers)
    text_config.num_hidden_layers = idx + 1  # layers past the hooked one are never loaded
    if isinstance(getattr(text_config, "layer_types", None), list):
        text_config.layer_types = text_config.layer_types[: idx + 1]
    with quiet_transformers():
        try:
            model = AutoModel.from_pretrained(
                ref.path, config=config, **from_pretrained_kwargs(dtype, ref.revision)
            )
        except (OSError, ValueError) as e:
            raise ModelError(f"cannot load model {ref.name}: {str(e).splitlines()[0]}") from None
    model.to(device).eval().requires_grad_(False)
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
def mlp_inputs(
    lm: LoadedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """(B, T) ids -> (B, T, d) input of the hooked layer's MLP; nothing after it runs."""
    lm.captured.clear()
    with contextlib.suppress(_StopForward):
        lm.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    if not lm.captured:
        raise ModelError("the model finished without reaching the hooked MLP")
    return lm.captured.pop()


def length_sorted_batches(lengths: list[int], token_budget: int) -> list[list[int]]:
    """Indices grouped into batches whose padded size (B x longest) fits the token budget.

    Longest first, so an out-of-memory failure shows up in the first batch, not the last.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    for i in order:
        if batches and (len(batches[-1]) + 1) * lengths[batches[-1][0]] <= token_budget:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


@dataclass(frozen=True)
class BatchSums:
    """Segment sums of one batch: indices into the caller's list, (B, d) fp32 sums."""

    indices: list[int]
    s_p: torch.Tensor
    s_q: torch.Tensor


def segment_sums(
    lm: LoadedModel,
    segments: list[Segments],
    *,
    token_budget: int,
    pad_id: int = 0,
    on_batch: Callable[[int, int], None] | None = None,
) -> Iterator[BatchSums]:
    """Run every conversation up to the end of its question; yield P and Q unit-vector sums.

    Right padding: real tokens never attend to pads under a causal mask, and their
    positions are 0..n-1 exactly as unpadded, so the result equals a per-prompt run.
    """
    for batch in length_sorted_batches([len(s.input_ids) for s in segments], token_budget):
        segs = [segments[i] for i in batch]
        width = max(len(s.input_ids) for s in segs)
        ids = torch.full((len(segs), width), pad_id, dtype=torch.long)
        seg_id = torch.full((len(segs), width), -1, dtype=torch.long)
        for b, s in enumerate(segs):
            n = len(s.input_ids)
            ids[b, :n] = torch.tensor(s.input_ids)
            seg_id[b, : s.p] = 2 * b  # P of prompt b
            seg_id[b, s.p : n] = 2 * b + 1  # Q of prompt b
        valid = seg_id >= 0
        h = mlp_inputs(lm, ids.to(lm.device), valid.to(lm.device).long())
        valid = valid.to(lm.device)
        sums = naive_segment_unit_sums(h[valid], seg_id.to(lm.device)[valid], 2 * len(segs))
        sums = sums.view(len(segs), 2, -1).cpu()
        if on_batch is not None:
            on_batch(len(segs), int(valid.sum()))
        yield BatchSums(batch, sums[:, 0], sums[:, 1])
