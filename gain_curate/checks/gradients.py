"""Exact per-row gradients of one layer's `mlp.up_proj` weight, the weight GAIN-RL's theory
is about: shared by `validate` (supervised loss) and `validate --rollouts` (GRPO loss)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any


def up_proj(model: Any, layer: int) -> Any:
    from gain_curate.runtime.transformers_compat import decoder_layers

    return decoder_layers(model)[layer].mlp.up_proj


@contextlib.contextmanager
def up_proj_row_grads(model: Any, layer: int) -> Iterator[Callable[[], Any]]:
    """While open, only layer `layer`'s up_proj weight takes gradients; after a backward,
    the function it yields returns every batch row's exact gradient of that weight, (B, I,
    d): for y = x W^T, G_b = sum_t g_bt x_bt^T, with x the inputs and g the gradients at the
    outputs. Exact per row because rows never interact (causal attention, right padding)."""
    import torch

    model.requires_grad_(False)
    lin = up_proj(model, layer)
    lin.weight.requires_grad_(True)
    grabbed: dict[str, torch.Tensor] = {}

    def fwd(_m: Any, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        grabbed["x"] = args[0].detach()
        output.register_hook(lambda g: grabbed.__setitem__("g", g.detach()))

    def row_grads() -> torch.Tensor:
        lin.weight.grad = None
        return torch.einsum("bti,btd->bid", grabbed["g"].float(), grabbed["x"].float())

    handle = lin.register_forward_hook(fwd)
    try:
        yield row_grads
    finally:
        handle.remove()
        lin.weight.requires_grad_(False)
