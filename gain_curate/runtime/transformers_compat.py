"""Transformers helpers that hide version and architecture differences: quiet loading,
the dtype keyword of `from_pretrained`, the KV-cache keyword of `forward`, and where a
model keeps its decoder layers.

torch and transformers are imported inside the functions that need them.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, TypedDict

from gain_curate.errors import ModelError

if TYPE_CHECKING:
    import torch


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


class FromPretrainedKwargs(TypedDict, total=False):
    """`from_pretrained`'s dtype (one of the two spellings) and revision."""

    dtype: torch.dtype  # Transformers 5
    torch_dtype: torch.dtype  # Transformers 4.x
    revision: str


class CacheKwargs(TypedDict, total=False):
    """`forward`'s KV cache (one of the two spellings) and use_cache=True."""

    cache: Any  # transformers.Cache, Transformers >= 5.24
    past_key_values: Any  # the same, earlier
    use_cache: bool


def from_pretrained_kwargs(dtype: torch.dtype, revision: str | None) -> FromPretrainedKwargs:
    """`from_pretrained` kwargs: Transformers 5 spells the dtype `dtype=`, 4.x `torch_dtype=`."""
    import transformers

    major = int(transformers.__version__.split(".")[0])
    kwargs = (
        FromPretrainedKwargs(dtype=dtype) if major >= 5 else FromPretrainedKwargs(torch_dtype=dtype)
    )
    if revision is not None:
        kwargs["revision"] = revision
    return kwargs


def cache_kwargs(model: Any, cache: Any) -> CacheKwargs:
    """The KV-cache argument of `model.forward`: transformers 5.x is renaming
    `past_key_values` to `cache` (5.24 warns on the old name, 5.17 knows only it)."""
    import inspect

    if "cache" in inspect.signature(model.forward).parameters:
        return CacheKwargs(cache=cache, use_cache=True)
    return CacheKwargs(past_key_values=cache, use_cache=True)


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
