"""The truncated model: the base decoder (no lm_head, no logits) loaded only up to the
chosen layer and stopped by a pre-hook on that layer's MLP, whose input is the output of
the post-attention RMSNorm (what mlp.up_proj multiplies). Later layers are never loaded.
Also the hooked layer and the model's size from its config alone.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import torch

from gain_curate.errors import ModelError
from gain_curate.runtime.models import ModelRef, check_hub
from gain_curate.runtime.transformers_compat import (
    decoder_layers,
    from_pretrained_kwargs,
    quiet_transformers,
)


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
            f"`layer` {layer} is out of range: the model has {num_layers} layers "
            f"(0..{num_layers - 1})"
        )
    return idx


@dataclass(frozen=True)
class ModelShape:
    layer: int  # 0-based hooked layer
    num_layers: int
    hidden_size: int


def read_config(ref: ModelRef) -> Any:
    from transformers import AutoConfig

    check_hub(ref)
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
    ref: ModelRef,
    *,
    dtype: torch.dtype,
    device: torch.device,
    layer: int | None,
    split: bool = False,
) -> LoadedModel:
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
        from gain_curate.runtime.placement import node_max_memory, split_across_gpus

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
