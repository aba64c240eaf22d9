"""`validate --rollouts K`: what a GRPO trainer would see for each sampled prompt.

For every prompt: K completions sampled from the model (the prompt is the chat the trainer
gets: the output's `prompt` column, by default the very conversation scored: system prompt,
few-shot turns, the question and any --instruction), a reward for each, and from them
- the pass rate p (mean reward), the learnability p (1 - p), whether the group has zero
  variance (every reward equal: GRPO's advantages are all 0 and the prompt teaches nothing),
  the mean completion length;
- the norm of the GRPO policy gradient with respect to the hooked layer's `mlp.up_proj`
  weight: advantages A_k = (r_k - mean r) / (std r + 1e-6) (std with Bessel's correction,
  as verl's GRPO), and the on-policy loss L = -sum_k A_k sum_t log pi(o_kt) / sum_k |o_k|
  (token mean over the group, verl's default; at the sampling policy the PPO ratio is 1,
  nothing is clipped, and no KL term is used), log-probs at the sampling temperature.

Per-prompt gradients (grpo.py) are exact: for y = x W^T the gradient of a group is
sum_t g_t x_t^T over its prompt's and its K rows' positions, rows never interact; at the last
layer they come from the states the sampler kept, else from one pass (the prompt once). A
zero-variance group's gradient is exactly 0 and is not run.

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
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gain_curate.errors import InputError
from gain_curate.grpo import grpo_grad_norms, reusable_state_module


@dataclass(frozen=True)
class RolloutSettings:
    k: int = 8
    max_new_tokens: int = 512
    temperature: float = 1.0
    seed: int = 0
    batch_rows: int = 128  # most sequences generated at once (whole groups: >= k)
    batch_tokens: int = 131072  # most KV-cache tokens a batch holds: rows x (prompt + new)
    engine: str = "hf"  # "hf": the shared-prefix sampler; "vllm": vLLM on a GPU (optional)


def group_advantages(rewards: np.ndarray) -> np.ndarray:
    """GRPO's group-normalised advantages (verl: unbiased std, eps 1e-6); 0 for K = 1."""
    r = np.asarray(rewards, dtype=np.float64)
    if len(r) < 2:
        return np.zeros_like(r)
    return (r - r.mean()) / (r.std(ddof=1) + 1e-6)


def generate(
    model: Any, prompts: list[list[int]], s: RolloutSettings, *, pad_id: int, eos_ids: list[int],
    folder: Path | None = None, key: str = "", on_batch: Callable[[int], None] | None = None,
    keep_input_of: Any = None, states: dict[int, list[Any]] | None = None,
) -> list[list[list[int]]]:  # fmt: skip
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
                saved = _sample_batch(model, batch, rows, s, pad_id, eos_ids, keep_input_of, states)  # fmt: skip
            _save_batch(folder, b, key, rows, saved)
        for r, i in enumerate(rows):  # each prompt's K samples together
            out[i] = saved[r * s.k : (r + 1) * s.k]
        if on_batch is not None:
            on_batch(len(rows))
    return out


def _sample_batch(model: Any, prompts: list[list[int]], rows: list[int], s: RolloutSettings,
                  pad_id: int, eos_ids: list[int], keep_input_of: Any,
                  states: dict[int, list[Any]] | None) -> list[list[int]]:  # fmt: skip
    """One batch through the shared-prefix sampler, prompt after prompt, each prompt's K
    together; each prompt seeded on its own (seed, index), not per batch."""
    from gain_curate.sampling import sample_groups

    seeds = [s.seed * 1_000_003 + i for i in rows]
    groups = sample_groups(model, prompts, s.k, max_new_tokens=s.max_new_tokens, temperature=s.temperature,
                           eos_ids=eos_ids, pad_id=pad_id, seeds=seeds,
                           keep_input_of=keep_input_of if states is not None else None)  # fmt: skip
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


def _vllm_batch(llm: Any, prompts: list[list[int]], s: RolloutSettings, seed: int,
                eos_ids: list[int]) -> list[list[int]]:  # fmt: skip
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
        raise InputError("--engine vllm needs vLLM on a CUDA machine: pip install vllm") from None
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


def _save_batch(folder: Path | None, b: int, key: str, rows: list[int], completions: list[list[int]]) -> None:  # fmt: skip
    from gain_curate.store import write_bytes_atomic

    if folder is not None:  # a batch is saved whole or not at all
        blob = {"key": key, "rows": rows, "completions": completions}
        write_bytes_atomic(_batch_file(folder, b), json.dumps(blob).encode())


SAMPLER = "shared-prefix-1"  # in the key: batches drawn by an older sampler are not reused


def rollout_key(s: RolloutSettings, model_revision: str | None, prompts: list[list[int]]) -> str:
    """What the saved batches depend on: sampler, settings, model, every prompt's tokens."""
    blob = json.dumps([SAMPLER, asdict(s), model_revision, prompts]).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def zero_variance_drop(score: np.ndarray, zero_var: np.ndarray, keep: float) -> dict[str, Any]:
    """Keep the top `keep` fraction of prompts by score (ties by position): the fraction of
    zero-variance prompts that falls away, against a random subset of the same size, which
    drops 1 - kept/n of them in expectation."""
    score, zero_var = np.asarray(score, np.float64), np.asarray(zero_var, bool)
    n = len(score)
    kept_n = int(round(keep * n))
    order = sorted(range(n), key=lambda i: (-score[i] if np.isfinite(score[i]) else np.inf, i))
    kept = np.zeros(n, bool)
    kept[order[:kept_n]] = True
    total = int(zero_var.sum())
    dropped = int((zero_var & ~kept).sum())
    return {
        "keep": keep, "kept": kept_n, "zero_variance": total,
        "dropped_by_score": None if total == 0 else dropped / total,
        "dropped_by_random": None if total == 0 else 1 - kept_n / n,
    }  # fmt: skip


def auroc(score: np.ndarray, positive: np.ndarray) -> float | None:
    """P(score of a positive > score of a negative), ties counting one half (Mann-Whitney
    U / (n_pos n_neg)); None when either class is empty."""
    from gain_curate.stats import rankdata

    score, positive = np.asarray(score, np.float64), np.asarray(positive, bool)
    keep = np.isfinite(score)
    score, positive = score[keep], positive[keep]
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = rankdata(score)
    u = ranks[positive].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def check_settings(s: RolloutSettings) -> None:
    if s.k < 2:
        raise InputError(f"--rollouts {s.k}: GRPO needs at least 2 completions per prompt")
    if not s.temperature > 0:
        raise InputError(f"--temperature {s.temperature}: sampling needs a temperature above 0")


SIGNALS = ("gain_score", "c_intra", "c_inter", "question_tokens")
TRUNCATED_WARN = 0.2  # above this share of cut-off completions, the pass rates say little
TARGETS = ("pass_rate", "learnability", "grpo_grad_norm")


def run_rollouts(
    model: Any, tok: Any, chats: list[list[dict[str, Any]]], answers: list[str], *,
    settings: RolloutSettings, reward: str | None, layer: int, folder: Path,
    model_revision: str | None, hooks: Any = None, rows: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Sample, reward and take the GRPO gradient for every prompt; per-prompt arrays plus
    the completions (text, reward, cut off or not) for OUT/rollouts/completions.jsonl.
    `rows`: what a trainer's reward sees of each prompt's row (rewards.Group.row)."""
    from gain_curate.rewards import Group, load_reward, score_group

    check_settings(settings)
    rw = load_reward(reward)
    prompts = [
        tok(tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True), add_special_tokens=False)["input_ids"]
        for c in chats
    ]  # fmt: skip
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    eos = _eos_ids(model, tok)
    key = rollout_key(settings, model_revision, prompts)
    gen_done = hooks.add("generating", len(prompts)) if hooks else None
    clock = [time.perf_counter()]
    engine = model
    if settings.engine == "vllm":
        import torch

        dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
        engine = load_vllm(model.name_or_path, dtype, settings.seed) if torch.cuda.is_available() else None  # fmt: skip
        if engine is None:
            raise InputError("--engine vllm needs a CUDA GPU; use --engine hf on this machine")
    # the GRPO pass reuses the states the sampler kept, where the model allows (grpo.py)
    keep = reusable_state_module(model, layer) if settings.engine == "hf" else None
    states: dict[int, list[Any]] = {}
    completions = generate(engine, prompts, settings, pad_id=pad, eos_ids=eos, folder=folder, key=key,
                           on_batch=gen_done, keep_input_of=keep, states=states)  # fmt: skip
    seconds = {"generation": _lap(clock)}  # where the time went (resumed batches: ~0)
    texts = [[tok.decode(c, skip_special_tokens=True) for c in group] for group in completions]
    # cut off: ran the whole --max-new-tokens without ending its turn
    cut = [[len(c) >= settings.max_new_tokens and c[-1] not in eos for c in group] for group in completions]  # fmt: skip
    rows = rows or [{"reward_model": {"ground_truth": a}} for a in answers]
    rewards, nones = [], 0
    for chat, group, ids, a, row in zip(chats, texts, completions, answers, rows):
        values, n = score_group(rw, Group(chat, group, ids, a, row))
        rewards.append(np.array(values))
        nones += n
    advantages = [group_advantages(r) for r in rewards]
    seconds["rewards"] = _lap(clock)
    grad_done = hooks.add("GRPO gradients", len(prompts)) if hooks else None
    norms = grpo_grad_norms(model, prompts, completions, advantages, layer, temperature=settings.temperature,
                            pad_id=pad, on_group=grad_done, states=states)  # fmt: skip
    seconds["grpo_gradients"] = _lap(clock)
    p = np.array([r.mean() for r in rewards])
    records = [{"prompt": c, "answer": a, "completions": t, "rewards": r.tolist(), "truncated": x}
               for c, a, t, r, x in zip(chats, answers, texts, rewards, cut)]  # fmt: skip
    return {
        "reward": rw.name,
        "pass_rate": p,
        "learnability": p * (1 - p),
        "zero_variance": np.array([bool(np.all(r == r[0])) for r in rewards]),
        "mean_length": np.array([np.mean([len(c) for c in group]) for group in completions]),
        "truncated": np.array([np.mean(x) for x in cut]),  # per prompt: the share cut off
        "none_rewards": nones,
        "max_new_tokens": settings.max_new_tokens,
        "grpo_grad_norm": norms,
        "records": records,
        "seconds": seconds,
    }


def _lap(clock: list[float]) -> float:
    """Seconds since the last lap (clock[0]), which restarts."""
    now = time.perf_counter()
    seconds, clock[0] = round(now - clock[0], 1), now
    return seconds


def _eos_ids(model: Any, tok: Any) -> list[int]:
    """The ids that end a turn: the generation config's, else the tokenizer's EOS."""
    ids = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    if tok.eos_token_id is not None and tok.eos_token_id not in ids:
        ids.append(tok.eos_token_id)
    if not ids:
        raise InputError("the model names no end-of-sequence token: generation would never stop")
    return ids


def rollout_statistics(
    signals: dict[str, np.ndarray], rl: dict[str, Any], *, probes: dict[str, Any] | None = None,
    n_run: int | None = None, seed: int = 0, resamples: int = 2000,
) -> dict[str, Any]:  # fmt: skip
    """Spearman and length-controlled partial Spearman of every signal with every RL
    target; the zero-variance filter at 25/50/75 % kept; the score's AUROC. Then every
    ranking (the signals and the probes' held-out predictions, probe.ProbeFit by feature
    name) with seeded bootstrap intervals, what the default curriculum serves of a run of
    n_run prompts, and the verdict: probe.compare_rankings."""
    from gain_curate.probe import compare_rankings, signal_rankings
    from gain_curate.stats import partial_spearman, spearman

    length = signals["question_tokens"]
    corr = {}
    for s in SIGNALS:
        for t in TARGETS:
            corr[f"spearman_{s}_vs_{t}"] = spearman(signals[s], rl[t])
            if s != "question_tokens":
                corr[f"partial_spearman_{s}_vs_{t}_given_length"] = partial_spearman(signals[s], rl[t], length)  # fmt: skip
    zv = rl["zero_variance"]
    score = signals["gain_score"]
    return {
        "reward": rl["reward"],
        "pass_rate_mean": float(np.mean(rl["pass_rate"])),
        "zero_variance_share": float(np.mean(zv)),
        "all_correct": int(np.sum(rl["pass_rate"] == 1)),
        "all_wrong": int(np.sum(zv & (rl["pass_rate"] != 1))),
        "mean_completion_tokens": float(np.mean(rl["mean_length"])),
        "truncated_share": float(np.mean(rl["truncated"])),
        "none_rewards": int(rl.get("none_rewards", 0)),
        "warnings": rollout_warnings(rl),
        **corr,
        "keep_top_by_score": [zero_variance_drop(score, zv, x) for x in (0.25, 0.5, 0.75)],
        "auroc_score_predicts_zero_variance": auroc(score, zv),
        **compare_rankings(signal_rankings(signals, probes), rl, length=length, n_run=n_run,
                           seed=seed, resamples=resamples, probes=probes),
    }  # fmt: skip


def rollout_warnings(rl: dict[str, Any]) -> list[str]:
    """One line each: too many completions cut off; rewards that were None."""
    out = []
    share = float(np.mean(rl["truncated"]))
    if share > TRUNCATED_WARN:
        out.append(f"{100 * share:.0f}% of the completions were cut off at --max-new-tokens {rl['max_new_tokens']} "
                   "before they ended, so the pass rates measure the length limit as much as the model; "
                   "raise --max-new-tokens")  # fmt: skip
    if rl.get("none_rewards"):
        out.append(f"--reward {rl['reward']} returned None for {rl['none_rewards']} completions; "
                   "they were scored 0 (TRL's weighted nansum counts a None as 0)")  # fmt: skip
    return out
