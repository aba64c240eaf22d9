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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gain_curate.checks.generation import RolloutSettings, generate, load_vllm, rollout_key
from gain_curate.checks.grpo import grpo_grad_norms, reusable_state_module
from gain_curate.checks.rankings import Targets
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


@dataclass(frozen=True)
class Rollouts:
    """Per prompt (n,): what its K rollouts measured; `records` are the completions (text,
    reward, cut off or not) for OUT/rollouts/completions.jsonl."""

    reward: str  # the reward's name
    pass_rate: np.ndarray
    learnability: np.ndarray  # p (1 - p)
    zero_variance: np.ndarray  # bool: every reward of the group equal
    mean_length: np.ndarray  # completion tokens
    truncated: np.ndarray  # the share of the group cut off
    none_rewards: int  # completions the reward returned None for (scored 0)
    max_new_tokens: int
    grpo_grad_norm: np.ndarray
    records: list[dict[str, Any]]
    seconds: dict[str, float]  # generation, rewards, grpo_gradients

    def targets(self) -> Targets:
        return Targets(self.pass_rate, self.zero_variance, self.learnability, self.grpo_grad_norm)


@dataclass(frozen=True)
class Rewarded:
    """Each group's rewards (K,), GRPO advantages (K,), and how many rewards were None."""

    rewards: list[np.ndarray]
    advantages: list[np.ndarray]
    nones: int


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
    rows: list[dict[str, Any]] | None = None,
) -> Rollouts:
    """Sample, reward and take the GRPO gradient for every prompt (module docstring).
    `rows`: what a trainer's reward sees of each prompt's row (rewards.Group.row)."""
    from gain_curate import progress
    from gain_curate.checks.rewards import load_reward

    check_settings(settings)
    rw = load_reward(reward)
    prompts = [_prompt_ids(tok, c) for c in chats]
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    eos = _eos_ids(model, tok)
    key = rollout_key(settings, model_revision, prompts)
    gen_done = progress.step("generating", len(prompts))
    clock = [time.perf_counter()]
    # the GRPO pass reuses the states the sampler kept, where the model allows (grpo.py)
    keep = reusable_state_module(model, layer) if settings.engine == "hf" else None
    states: dict[int, list[Any]] = {}
    completions = generate(
        _engine(model, settings), prompts, settings, pad_id=pad, eos_ids=eos, folder=folder,
        key=key, on_batch=gen_done, keep_input_of=keep, states=states,
    )  # fmt: skip
    seconds = {"generation": _lap(clock)}  # where the time went (resumed batches: ~0)
    texts = [[tok.decode(c, skip_special_tokens=True) for c in group] for group in completions]
    # cut off: ran the whole max_new_tokens without ending its turn
    cut = [[len(c) >= settings.max_new_tokens and c[-1] not in eos for c in g] for g in completions]
    rows = rows or [{"reward_model": {"ground_truth": a}} for a in answers]
    got = reward_groups(rw, chats, texts, completions, answers, rows)
    seconds["rewards"] = _lap(clock)
    norms = grpo_grad_norms(
        model,
        prompts,
        completions,
        got.advantages,
        layer,
        temperature=settings.temperature,
        pad_id=pad,
        on_group=progress.step("GRPO gradients", len(prompts)),
        states=states,
    )
    seconds["grpo_gradients"] = _lap(clock)
    p = np.array([r.mean() for r in got.rewards])
    records = [
        {"prompt": c, "answer": a, "completions": t, "rewards": r.tolist(), "truncated": x}
        for c, a, t, r, x in zip(chats, answers, texts, got.rewards, cut)
    ]
    return Rollouts(
        reward=rw.name,
        pass_rate=p,
        learnability=p * (1 - p),
        zero_variance=np.array([bool(np.all(r == r[0])) for r in got.rewards]),
        mean_length=np.array([np.mean([len(c) for c in group]) for group in completions]),
        truncated=np.array([np.mean(x) for x in cut]),
        none_rewards=got.nones,
        max_new_tokens=settings.max_new_tokens,
        grpo_grad_norm=norms,
        records=records,
        seconds=seconds,
    )


def _prompt_ids(tok: Any, chat: list[dict[str, Any]]) -> list[int]:
    """The chat as the trainer renders it for generation: its template, then the ids."""
    text = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    return tok(text, add_special_tokens=False)["input_ids"]


def _engine(model: Any, settings: RolloutSettings) -> Any:
    """What generates: the model itself (hf), or vLLM over the same weights on a GPU."""
    if settings.engine != "vllm":
        return model
    import torch

    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    engine = (
        load_vllm(model.name_or_path, dtype, settings.seed) if torch.cuda.is_available() else None
    )
    if engine is None:
        raise InputError("`engine` vllm needs a CUDA GPU; use `engine` hf on this machine")
    return engine


def reward_groups(
    rw: Any,
    chats: list[list[dict[str, Any]]],
    texts: list[list[str]],
    completions: list[list[list[int]]],
    answers: list[str],
    rows: list[dict[str, Any]],
) -> Rewarded:
    """Every group's rewards (rewards.score_group) and its GRPO advantages."""
    from gain_curate.checks.rewards import Group, score_group

    rewards, nones = [], 0
    for chat, group, ids, a, row in zip(chats, texts, completions, answers, rows):
        values, n = score_group(rw, Group(chat, group, ids, a, row))
        rewards.append(np.array(values))
        nones += n
    return Rewarded(rewards, [group_advantages(r) for r in rewards], nones)


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
