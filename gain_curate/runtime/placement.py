"""A model too large for one GPU (a 72B model in bf16 is ~145 GB) is split across the node's
GPUs by accelerate's device map: one replica per node, its decoder layers in order over the
GPUs, whole layers only. Only the layers up to the hooked one are placed (the rest never
load), and the hooked layer sits on one device, so its MLP input, the hidden states the
reduction reads, never straddles two GPUs.

    device_map = split_across_gpus(config, layer=27, dtype=torch.bfloat16,
                                   max_memory={0: "70GiB", 1: "70GiB"})
"""

from __future__ import annotations

from typing import Any

import torch


def truncated_meta_model(config: Any, layer: int) -> torch.nn.Module:
    """The base model up to the hooked layer, on the meta device (no memory, no weights)."""
    import copy

    from transformers import AutoModel

    config = copy.deepcopy(config)
    text = getattr(config, "text_config", None) or config
    text.num_hidden_layers = layer + 1
    if isinstance(getattr(text, "layer_types", None), list):
        text.layer_types = text.layer_types[: layer + 1]
    with torch.device("meta"):
        return AutoModel.from_config(config)


DeviceMap = dict[str, int | str]  # module name -> GPU index (or "cpu", "disk": no fit)


def split_across_gpus(
    config: Any, *, layer: int, dtype: torch.dtype, max_memory: dict[int, int | str]
) -> DeviceMap:
    """accelerate's device map for the truncated model under `max_memory` (GPU index ->
    bytes or "70GiB"): whole decoder layers, in order. Raises if it does not fit."""
    from accelerate import infer_auto_device_map

    from gain_curate.errors import ModelError
    from gain_curate.runtime.transformers_compat import decoder_layers

    model = truncated_meta_model(config, layer)
    layer_cls = type(decoder_layers(model)[0]).__name__
    device_map = infer_auto_device_map(
        model, max_memory=max_memory, dtype=dtype, no_split_module_classes=[layer_cls]
    )
    if any(d in ("cpu", "disk") for d in device_map.values()):
        raise ModelError(
            f"layers 0..{layer} of the model do not fit the GPUs' memory ({max_memory}): "
            "score an earlier `layer`, or run on GPUs with more memory"
        )
    return device_map


def layer_devices(device_map: DeviceMap, num_layers: int) -> list[int | str]:
    """The device of each decoder layer under a device map (keys like 'layers.12')."""

    def find(i: int) -> Any:
        for key in (f"layers.{i}", "layers", ""):
            if key in device_map:
                return device_map[key]
        raise KeyError(f"layer {i} is not in the device map")

    return [find(i) for i in range(num_layers)]


def truncated_bytes(config: Any, layer: int, dtype: torch.dtype) -> int:
    """Bytes of the weights that load: the base model up to the hooked layer."""
    model = truncated_meta_model(config, layer)
    return sum(p.numel() for p in model.parameters()) * torch.tensor([], dtype=dtype).element_size()


def fits_one_gpu(config: Any, layer: int, dtype: torch.dtype, headroom: float = 0.8) -> bool:
    """Whether the truncated model fits GPU 0's free memory with room for activations."""
    free, _ = torch.cuda.mem_get_info(0)
    return truncated_bytes(config, layer, dtype) <= headroom * free


def node_max_memory(headroom: float = 0.8) -> dict[int, int]:
    """Every visible GPU's free memory, less room for activations and the prefix KV."""
    return {
        i: int(headroom * torch.cuda.mem_get_info(i)[0]) for i in range(torch.cuda.device_count())
    }
