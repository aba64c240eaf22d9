"""How Transformers reads a GGUF file, made fast for the one-time conversion (gguf.py), with
the dequantisation reported as a progress step.

Converting Qwen2.5-Coder-0.5B's GGUF took 75 s here (AMD EPYC, 2 cores), mostly not the
weights: Transformers parses the file's metadata three times (tokenizer, config, weights)
with gguf's pure-Python GGUFReader, ~15 s each for a 151k-token vocabulary, and builds
gguf's tensor-name map once per module it maps (397 times for SmolLM2). While `fast_reads`
is active:
- each file is parsed once, by a GGUFReader that slices a plain ndarray view of its memory
  map (a np.memmap slice costs ~3 us in __array_finalize__, times ~6M slices: 15 s -> 6 s);
- the metadata-only read (`load_gguf_checkpoint(path, return_tensors=False)`, which the
  tokenizer and the config each make) is made once and handed out as deep copies;
- gguf's tensor-name map is built once per (architecture, layers).
Each is a pure function of its arguments, the folder written is byte-for-byte the one
written without them (tests/test_gguf_reads.py), and everything is restored on exit.
Transformers imports these names at call time (`from gguf import GGUFReader` inside its
functions), so swapping them on their modules reaches every use."""

from __future__ import annotations

import contextlib
import copy
import functools
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from gain_curate import progress


@contextlib.contextmanager
def fast_reads(name: str) -> Iterator[None]:
    """Inside: GGUF reads parsed once (module docstring), and Transformers' per-tensor loop
    shown as the progress step `converting <name>: dequantizing N tensors`."""
    import gguf

    gguf_utils = sys.modules.get("transformers.modeling_gguf_pytorch_utils")
    if gguf_utils is None:
        import transformers.modeling_gguf_pytorch_utils as gguf_utils
    saved = {
        (gguf, "GGUFReader"): gguf.GGUFReader,
        (gguf, "get_tensor_name_map"): gguf.get_tensor_name_map,
        (gguf_utils, "load_gguf_checkpoint"): gguf_utils.load_gguf_checkpoint,
        (gguf_utils, "tqdm"): getattr(gguf_utils, "tqdm", None),
    }
    gguf.GGUFReader = _once(_plain_reader(gguf.GGUFReader))
    gguf.get_tensor_name_map = functools.cache(gguf.get_tensor_name_map)
    gguf_utils.load_gguf_checkpoint = _metadata_once(gguf_utils.load_gguf_checkpoint)
    gguf_utils.tqdm = lambda tensors, **_: _counted(tensors, f"converting {name}")
    try:
        yield
    finally:
        for (module, attr), value in saved.items():
            if value is not None:
                setattr(module, attr, value)


def _plain_reader(reader_cls: type) -> type:
    """GGUFReader, reading through a plain ndarray view of its np.memmap (`self.data`)."""

    class PlainReader(reader_cls):  # type: ignore[misc, valid-type]
        @property
        def data(self) -> np.ndarray:
            return self._plain

        @data.setter
        def data(self, mapped: np.ndarray) -> None:
            self._plain = mapped.view(np.ndarray)  # its base keeps the map open

    return PlainReader


def _once(reader_cls: type) -> Callable[..., Any]:
    readers: dict[tuple[str, str], Any] = {}

    def reader(path: Any, mode: str = "r") -> Any:
        key = (os.path.realpath(path), mode)
        if key not in readers:
            readers[key] = reader_cls(path, mode)
        return readers[key]

    return reader


def _metadata_once(load: Callable[..., Any]) -> Callable[..., Any]:
    read: dict[str, Any] = {}

    def load_gguf_checkpoint(path: Any, return_tensors: bool = False, **kw: Any) -> Any:
        if return_tensors or kw:
            return load(path, return_tensors=return_tensors, **kw)
        key = os.path.realpath(path)
        if key not in read:
            read[key] = load(path, return_tensors=False)
        return copy.deepcopy(read[key])  # each caller may change its own copy

    return load_gguf_checkpoint


def _counted(tensors: Any, what: str) -> Iterator[Any]:
    items = list(tensors)
    advance = progress.step(f"{what}: dequantizing {len(items)} tensors", len(items))
    for item in items:
        yield item
        advance(1)
