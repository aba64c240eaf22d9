"""The runtime: resolved once from the flags, the model's shapes and the device; the token
budget follows the model and the free memory. GPUs are mocked: these run on CPU."""

from __future__ import annotations

import pytest
import torch
from transformers import Qwen2Config

from gain_curate.runtime import kernel
from gain_curate.runtime import resolve as runtime
from gain_curate.runtime.resolve import Runtime, activation_bytes_per_token, auto_token_budget
from gain_curate.scoring.config import ScoreConfig

GIB = 1 << 30
QWEN25_7B = Qwen2Config(
    hidden_size=3584,
    intermediate_size=18944,
    num_hidden_layers=28,
    num_attention_heads=28,
    num_key_value_heads=4,
    vocab_size=152064,
)


def gpu(monkeypatch, free_gib: float, total_gib: float = 141, count: int = 1) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: "NVIDIA H200")
    monkeypatch.setattr(
        torch.cuda, "mem_get_info", lambda d=None: (int(free_gib * GIB), int(total_gib * GIB))
    )
    monkeypatch.setattr(kernel, "triton_problem", lambda device: None)


def test_activation_bytes_follow_the_shapes() -> None:
    per = activation_bytes_per_token(QWEN25_7B, 27, torch.bfloat16)
    # widest layer: 4d + q + 2 kv + 3 intermediate; KV of 28 layers; bf16; x2 headroom
    want = 2 * 2 * (4 * 3584 + 3584 + 2 * 512 + 3 * 18944 + 2 * 512 * 28)
    assert per == want
    assert activation_bytes_per_token(QWEN25_7B, 3, torch.float32) < 2 * per  # fewer layers' KV


def test_budget_from_free_memory(monkeypatch) -> None:
    gpu(monkeypatch, free_gib=139)
    big, why = auto_token_budget(QWEN25_7B, 27, torch.bfloat16, "cuda:0")
    assert big == runtime.MAX_TOKEN_BUDGET and "139.0 GiB free" in why
    gpu(monkeypatch, free_gib=20)  # the 7B's ~14 GiB of truncated weights leave ~3 GiB
    small, _ = auto_token_budget(QWEN25_7B, 27, torch.bfloat16, "cuda:0")
    assert runtime.MIN_TOKEN_BUDGET <= small < big and small & (small - 1) == 0  # a power of two
    gpu(monkeypatch, free_gib=20.3)  # a little more free memory: the same budget
    assert auto_token_budget(QWEN25_7B, 27, torch.bfloat16, "cuda:0")[0] == small
    assert auto_token_budget(QWEN25_7B, 27, torch.bfloat16, "cpu")[0] == runtime.CPU_TOKEN_BUDGET


def test_resolved_once_on_a_gpu(monkeypatch) -> None:
    gpu(monkeypatch, free_gib=139)
    rt = runtime.resolve_runtime(ScoreConfig(data="d", model="m", out="o"), QWEN25_7B, 27)
    assert (rt.device, rt.dtype, rt.kernel, rt.placement, rt.hardware) == (
        "cuda",
        "bfloat16",
        "triton",
        "replica",
        "NVIDIA H200",
    )
    assert Runtime.from_dict(rt.to_dict()) == rt
    pinned = runtime.resolve_runtime(
        ScoreConfig(data="d", model="m", out="o", token_budget=4096, dtype="float16"), QWEN25_7B, 27
    )
    assert (pinned.token_budget, pinned.budget_from, pinned.dtype) == (
        4096,
        "--token-budget",
        "float16",
    )


def test_a_model_larger_than_one_gpu_is_split_over_the_node(monkeypatch) -> None:
    gpu(monkeypatch, free_gib=10, count=4)  # 14 GiB of weights, 10 GiB free per GPU
    rt = runtime.resolve_runtime(ScoreConfig(data="d", model="m", out="o"), QWEN25_7B, 27)
    assert rt.placement == "split"


@pytest.mark.parametrize(
    ("kind", "env", "gpus", "shard", "explicit", "want"),
    [
        ("cpu", {}, 0, None, None, "cpu"),
        ("cuda", {}, 1, (3, 4), None, "cuda:0"),
        ("cuda", {"LOCAL_RANK": "2"}, 4, None, None, "cuda:2"),
        ("cuda", {}, 4, (6, 8), None, "cuda:2"),
        ("cuda", {"LOCAL_RANK": "1"}, 4, (6, 8), "cuda:3", "cuda:3"),
    ],
)
def test_worker_device(kind, env, gpus, shard, explicit, want) -> None:
    assert runtime.worker_device(kind, env, gpus, shard, explicit)[0] == want
