"""Generation for `validate --rollouts`: K completions per prompt, in batches saved as they
are drawn.

Generation (sampling.py) prefills each prompt once and draws its K samples from the shared
prefix (the KV cache repeated K times), from the full distribution (top_k=0, top_p=1),
each prompt from its own seeded generator; batches hold whole groups, longest prompts first,
at most `batch_rows` rows and `batch_tokens` KV tokens (rows x (longest prompt +
max_new_tokens)). Each batch is saved under OUT/rollouts/, so an interrupted run resumes and
draws exactly what an uninterrupted one would. `engine="vllm"` hands each batch to vLLM.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from gain_curate.errors import InputError


@dataclass(frozen=True)
class RolloutSettings:
    k: int = 8
    max_new_tokens: int = 512
    temperature: float = 1.0
    seed: int = 0
    batch_rows: int = 128  # most sequences generated at once (whole groups: >= k)
    batch_tokens: int = 131072  # most KV-cache tokens a batch holds: rows x (prompt + new)
    engine: str = "hf"  # "hf": the shared-prefix sampler; "vllm": vLLM on a GPU (optional)


def generate(
    model: Any,
    prompts: list[list[int]],
    s: RolloutSettings,
    *,
    pad_id: int,
    eos_ids: list[int],
    folder: Path | None = None,
    key: str = "",
    on_batch: Callable[[int], None] | None = None,
    keep_input_of: Any = None,
    states: dict[int, list[Any]] | None = None,
) -> list[list[list[int]]]:
    """K completions per prompt, as token ids through the first end-of-sequence token.
    `model` is a transformers model, or for engine "vllm" a `vllm.LLM`. With `keep_input_of`
    (engine hf), `states[i]` gets prompt i's kept states (sample_groups) for the batches
    generated here; batches read back from `folder` have none."""
    out: list[list[list[int]]] = [[] for _ in prompts]
    for b, rows in enumerate(batch_layout([len(p) for p in prompts], s)):
        saved = _load_batch(folder, b, key, rows)
        if saved is None:
            batch = [prompts[i] for i in rows]
            if s.engine == "vllm":
                saved = _vllm_batch(model, batch, s, s.seed * 1_000_003 + b, eos_ids)
            else:
                saved = _sample_batch(model, batch, rows, s, pad_id, eos_ids, keep_input_of, states)
            _save_batch(folder, b, key, rows, saved)
        for r, i in enumerate(rows):  # each prompt's K samples together
            out[i] = saved[r * s.k : (r + 1) * s.k]
        if on_batch is not None:
            on_batch(len(rows))
    return out


def _sample_batch(
    model: Any,
    prompts: list[list[int]],
    rows: list[int],
    s: RolloutSettings,
    pad_id: int,
    eos_ids: list[int],
    keep_input_of: Any,
    states: dict[int, list[Any]] | None,
) -> list[list[int]]:
    """One batch through the shared-prefix sampler, prompt after prompt, each prompt's K
    together; each prompt seeded on its own (seed, index), not per batch."""
    from gain_curate.checks.sampling import sample_groups

    seeds = [s.seed * 1_000_003 + i for i in rows]
    groups = sample_groups(
        model,
        prompts,
        s.k,
        max_new_tokens=s.max_new_tokens,
        temperature=s.temperature,
        eos_ids=eos_ids,
        pad_id=pad_id,
        seeds=seeds,
        keep_input_of=keep_input_of if states is not None else None,
    )
    if keep_input_of is not None and states is not None:
        groups, kept = groups
        states.update(zip(rows, kept))
    return [c for group in groups for c in group]


def batch_layout(lengths: list[int], s: RolloutSettings) -> list[list[int]]:
    """Prompt indices per generation batch, a function of the prompts and settings alone (so
    a resumed run's batches are the first run's). hf: longest first, whole groups, at most
    `batch_rows` rows and rows x (longest prompt + max_new_tokens) <= `batch_tokens`, at
    least one prompt. vllm: consecutive prompts, batch_rows // k of them (vLLM sizes itself)."""
    if s.engine == "vllm":
        per = max(1, s.batch_rows // s.k)
        return [list(range(a, min(a + per, len(lengths)))) for a in range(0, len(lengths), per)]
    batches: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        if batches:
            rows = s.k * (len(batches[-1]) + 1)
            longest = lengths[batches[-1][0]]  # sorted: the batch's first is its longest
            if rows <= s.batch_rows and rows * (longest + s.max_new_tokens) <= s.batch_tokens:
                batches[-1].append(i)
                continue
        batches.append([i])
    return batches


def _vllm_batch(
    llm: Any, prompts: list[list[int]], s: RolloutSettings, seed: int, eos_ids: list[int]
) -> list[list[int]]:
    """One batch through vLLM: K samples per prompt from the full distribution (vLLM's
    default top_k and top_p), seeded per batch, in the order HF generate returns them."""
    from vllm import SamplingParams

    params = SamplingParams(
        n=s.k, temperature=s.temperature, max_tokens=s.max_new_tokens, seed=seed
    )
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    return [_until_eos(list(o.token_ids), eos_ids) for request in outputs for o in request.outputs]


def load_vllm(path: str, dtype: str, seed: int) -> Any:
    """A vLLM engine for generation beside the transformers model that takes the
    gradients: it gets half of the GPU's memory."""
    try:
        from vllm import LLM
    except ImportError:
        raise InputError("`engine` vllm needs vLLM on a CUDA machine: pip install vllm") from None
    return LLM(model=path, dtype=dtype, seed=seed, gpu_memory_utilization=0.5)


def _until_eos(tokens: list[int], eos_ids: list[int]) -> list[int]:
    for t, token in enumerate(tokens):
        if token in eos_ids:
            return tokens[: t + 1]
    return tokens


def _batch_file(folder: Path, b: int) -> Path:
    return folder / f"batch-{b:05d}.json"


def _load_batch(folder: Path | None, b: int, key: str, rows: list[int]) -> list[list[int]] | None:
    if folder is None or not _batch_file(folder, b).is_file():
        return None
    try:
        saved = json.loads(_batch_file(folder, b).read_text())
    except (OSError, ValueError):
        return None
    return saved["completions"] if saved.get("key") == key and saved.get("rows") == rows else None


def _save_batch(
    folder: Path | None, b: int, key: str, rows: list[int], completions: list[list[int]]
) -> None:
    from gain_curate.runfolder.store import write_bytes_atomic

    if folder is not None:  # a batch is saved whole or not at all
        blob = {"key": key, "rows": rows, "completions": completions}
        write_bytes_atomic(_batch_file(folder, b), json.dumps(blob).encode())


SAMPLER = "shared-prefix-1"  # in the key: batches drawn by an older sampler are not reused


def rollout_key(s: RolloutSettings, model_revision: str | None, prompts: list[list[int]]) -> str:
    """What the saved batches depend on: sampler, settings, model, every prompt's tokens."""
    blob = json.dumps([SAMPLER, asdict(s), model_revision, prompts]).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
