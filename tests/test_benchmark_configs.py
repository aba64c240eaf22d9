"""The GPU benchmark's random Qwen2.5 models have the published sizes."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from qwen25 import layer_params, qwen25_config  # noqa: E402


@pytest.mark.parametrize("arch,total", [("0.5b", 494_032_768), ("7b", 7_615_616_512)])
def test_parameter_counts_match_the_published_models(arch: str, total: int) -> None:
    c = qwen25_config(arch)
    embed = c.vocab_size * c.hidden_size * (1 if c.tie_word_embeddings else 2)
    assert embed + c.num_hidden_layers * layer_params(c) + c.hidden_size == total
