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

Generation and its saved batches: generation.py; the statistics: rollout_stats.py.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from gain_curate.checks.generation import RolloutSettings, generate, load_vllm, rollout_key
from gain_curate.checks.grpo import grpo_grad_norms, reusable_state_module
from gain_curate.errors import InputError


def group_advantages(rewards: np.ndarray) -> np.ndarray:
    """GRPO's group-normalised advantages (verl: unbiased std, eps 1e-6); 0 for K = 1."""
    r = np.asarray(rewards, dtype=np.float64)
    if len(r) < 2:
        return np.zeros_like(r)
    return (r - r.mean()) / (r.std(ddof=1) + 1e-6)


def check_settings(s: RolloutSettings) -> None:
    if s.k < 2:
        raise InputError(f"`rollouts` {s.k}: GRPO needs at least 2 completions per prompt")
    if not s.temperature > 0:
        raise InputError(f"`temperature` {s.temperature}: sampling needs a temperature above 0")


def run_rollouts(
    model: Any,
    tok: Any,
    chats: list[list[dict[str, Any]]],
    answers: list[str],
    *,
    settings: RolloutSettings,
    reward: str | None,
    layer: int,
    folder: Path,
    model_revision: str | None,
    hooks: Any = None,
    rows: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Sample, reward and take the GRPO gradient for every prompt; per-prompt arrays plus
    the completions (text, reward, cut off or not) for OUT/rollouts/completions.jsonl.
    `rows`: what a trainer's reward sees of each prompt's row (rewards.Group.row)."""
    from gain_curate.checks.rewards import Group, load_reward, score_group

    check_settings(settings)
    rw = load_reward(reward)
    prompts = [
        tok(
            tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True),
            add_special_tokens=False,
        )["input_ids"]
        for c in chats
    ]
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    eos = _eos_ids(model, tok)
    key = rollout_key(settings, model_revision, prompts)
    gen_done = hooks.add("generating", len(prompts)) if hooks else None
    clock = [time.perf_counter()]
    engine = model
    if settings.engine == "vllm":
        import torch

        dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
        engine = (
            load_vllm(model.name_or_path, dtype, settings.seed)
            if torch.cuda.is_available()
            else None
        )
        if engine is None:
            raise InputError("`engine` vllm needs a CUDA GPU; use `engine` hf on this machine")
    # the GRPO pass reuses the states the sampler kept, where the model allows (grpo.py)
    keep = reusable_state_module(model, layer) if settings.engine == "hf" else None
    states: dict[int, list[Any]] = {}
    completions = generate(
        engine,
        prompts,
        settings,
        pad_id=pad,
        eos_ids=eos,
        folder=folder,
        key=key,
        on_batch=gen_done,
        keep_input_of=keep,
        states=states,
    )
    seconds = {"generation": _lap(clock)}  # where the time went (resumed batches: ~0)
    texts = [[tok.decode(c, skip_special_tokens=True) for c in group] for group in completions]
    # cut off: ran the whole --max-new-tokens without ending its turn
    cut = [
        [len(c) >= settings.max_new_tokens and c[-1] not in eos for c in group]
        for group in completions
    ]
    rows = rows or [{"reward_model": {"ground_truth": a}} for a in answers]
    rewards, nones = [], 0
    for chat, group, ids, a, row in zip(chats, texts, completions, answers, rows):
        values, n = score_group(rw, Group(chat, group, ids, a, row))
        rewards.append(np.array(values))
        nones += n
    advantages = [group_advantages(r) for r in rewards]
    seconds["rewards"] = _lap(clock)
    grad_done = hooks.add("GRPO gradients", len(prompts)) if hooks else None
    norms = grpo_grad_norms(
        model,
        prompts,
        completions,
        advantages,
        layer,
        temperature=settings.temperature,
        pad_id=pad,
        on_group=grad_done,
        states=states,
    )
    seconds["grpo_gradients"] = _lap(clock)
    p = np.array([r.mean() for r in rewards])
    records = [
        {"prompt": c, "answer": a, "completions": t, "rewards": r.tolist(), "truncated": x}
        for c, a, t, r, x in zip(chats, answers, texts, rewards, cut)
    ]
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
