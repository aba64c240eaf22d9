"""Splitting a model that does not fit one GPU over the node's GPUs (computed on CPU: the
map comes from the meta-device model and max_memory, no GPU needed)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from qwen25 import qwen25_config  # noqa: E402

from gain_curate.errors import ModelError  # noqa: E402
from gain_curate.runtime.placement import layer_devices, split_across_gpus  # noqa: E402

GIB = 1 << 30


def test_7b_truncated_at_the_last_layer_spreads_over_four_small_gpus() -> None:
    """Qwen2.5-7B in bf16 (~13.2 GiB up to the last layer, no lm_head) over 4 GPUs of 4 GiB."""
    config = qwen25_config("7b")
    dm = split_across_gpus(
        config, layer=27, dtype=torch.bfloat16, max_memory={i: 4 * GIB for i in range(4)}
    )
    devices = layer_devices(dm, 28)
    assert set(devices) == {0, 1, 2, 3}  # all four GPUs hold layers
    assert devices == sorted(devices)  # in order: the hidden states move forward only
    assert all(isinstance(d, int) for d in dm.values())  # nothing offloaded to cpu or disk
    # layers past the hooked one are never placed: 10 GiB holds Qwen2.5-7B up to layer 13
    # (~7.1 GiB in bf16) but not up to its last layer (~13.2 GiB)
    small = {0: 5 * GIB, 1: 5 * GIB}
    early = split_across_gpus(config, layer=13, dtype=torch.bfloat16, max_memory=small)
    assert set(layer_devices(early, 14)) <= {0, 1}
    with pytest.raises(ModelError, match="do not fit"):
        split_across_gpus(config, layer=27, dtype=torch.bfloat16, max_memory=small)


def test_the_hooked_layer_is_never_split() -> None:
    config = qwen25_config("7b")
    dm = split_across_gpus(
        config, layer=13, dtype=torch.bfloat16, max_memory={0: 4 * GIB, 1: 4 * GIB, 2: 4 * GIB}
    )
    assert "layers.13" in dm or "layers" in dm  # whole layers: its MLP input lives on one device
    assert not any(k.startswith("layers.13.") for k in dm)
    assert len(layer_devices(dm, 14)) == 14


def test_too_little_memory_is_one_clear_line() -> None:
    with pytest.raises(ModelError, match="do not fit the GPUs' memory"):
        split_across_gpus(
            qwen25_config("7b"), layer=27, dtype=torch.bfloat16, max_memory={0: 2 * GIB, 1: 2 * GIB}
        )
