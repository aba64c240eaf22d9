"""`validate --rollouts K`: what a GRPO trainer would see for each sampled prompt.

For every prompt: K completions sampled from the model (the prompt is the chat the trainer
gets: the output's `prompt` column, one user turn holding the question and any
--instruction), a reward for each, and from them
- the pass rate p (mean reward), the learnability p (1 - p), whether the group has zero
  variance (every reward equal: GRPO's advantages are all 0 and the prompt teaches nothing),
  the mean completion length;
- the norm of the GRPO policy gradient with respect to the hooked layer's `mlp.up_proj`
  weight: advantages A_k = (r_k - mean r) / (std r + 1e-6) (std with Bessel's correction,
  as verl's GRPO), and the on-policy loss L = -sum_k A_k sum_t log pi(o_kt) / sum_k |o_k|
  (token mean over the group, verl's default; at the sampling policy the PPO ratio is 1,
  nothing is clipped, and no KL term is used), log-probs at the sampling temperature.

Per-prompt gradients come from batched passes exactly as in validate: for y = x W^T the
gradient of row b is sum_t g_bt x_bt^T, rows never interact, and a prompt's gradient is the
sum over its K rows. A zero-variance group's gradient is exactly 0 and is not run.

Generation is Hugging Face `generate` (batched, left-padded, sampling from the full
distribution: top_k=0, top_p=1), seeded per batch, each batch saved under OUT/rollouts/, so
an interrupted run resumes and draws exactly what an uninterrupted one would.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gain_curate.errors import InputError


@dataclass(frozen=True)
class RolloutSettings:
    k: int = 8
    max_new_tokens: int = 512
    temperature: float = 1.0
    seed: int = 0
    batch_rows: int = 64  # sequences generated at once (prompts per batch = batch_rows // k)
    engine: str = "hf"  # "hf": transformers generate; "vllm": vLLM on a GPU (optional)


def group_advantages(rewards: np.ndarray) -> np.ndarray:
    """GRPO's group-normalised advantages (verl: unbiased std, eps 1e-6); 0 for K = 1."""
    r = np.asarray(rewards, dtype=np.float64)
    if len(r) < 2:
        return np.zeros_like(r)
    return (r - r.mean()) / (r.std(ddof=1) + 1e-6)


def generate(
    model: Any, prompts: list[list[int]], s: RolloutSettings, *, pad_id: int, eos_ids: list[int],
    folder: Path | None = None, key: str = "", on_batch: Callable[[int], None] | None = None,
) -> list[list[list[int]]]:  # fmt: skip
    """K completions per prompt, as token ids through the first end-of-sequence token.
    `model` is a transformers model, or for engine "vllm" a `vllm.LLM`."""
    import torch

    per = max(1, s.batch_rows // s.k)
    batches = [list(range(a, min(a + per, len(prompts)))) for a in range(0, len(prompts), per)]
    out: list[list[list[int]]] = [[] for _ in prompts]
    device = next(model.parameters()).device if s.engine == "hf" else None
    for b, rows in enumerate(batches):
        saved = _load_batch(folder, b, key)
        if saved is None and s.engine == "vllm":
            saved = _vllm_batch(
                model, [prompts[i] for i in rows], s, s.seed * 1_000_003 + b, eos_ids
            )
            _save_batch(folder, b, key, saved)
        if saved is None:
            torch.manual_seed(s.seed * 1_000_003 + b)
            width = max(len(prompts[i]) for i in rows)
            ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for r, i in enumerate(rows):  # left padding: every prompt ends where generation starts
                ids[r, width - len(prompts[i]) :] = torch.tensor(prompts[i])
                mask[r, width - len(prompts[i]) :] = 1
            with torch.no_grad():
                seqs = model.generate(
                    input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=True,
                    temperature=s.temperature, top_k=0, top_p=1.0, max_new_tokens=s.max_new_tokens,
                    num_return_sequences=s.k, pad_token_id=pad_id, eos_token_id=eos_ids,
                )  # fmt: skip
            saved = [_until_eos(row.tolist(), eos_ids) for row in seqs[:, width:].cpu()]
            _save_batch(folder, b, key, saved)
        for r, i in enumerate(rows):  # generate returns each prompt's K samples together
            out[i] = saved[r * s.k : (r + 1) * s.k]
        if on_batch is not None:
            on_batch(len(rows))
    return out


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


def _load_batch(folder: Path | None, b: int, key: str) -> list[list[int]] | None:
    if folder is None or not _batch_file(folder, b).is_file():
        return None
    try:
        saved = json.loads(_batch_file(folder, b).read_text())
    except (OSError, ValueError):
        return None
    return saved["completions"] if saved.get("key") == key else None


def _save_batch(folder: Path | None, b: int, key: str, completions: list[list[int]]) -> None:
    from gain_curate.store import write_bytes_atomic

    if folder is not None:  # a batch is saved whole or not at all
        write_bytes_atomic(_batch_file(folder, b), json.dumps({"key": key, "completions": completions}).encode())  # fmt: skip


def rollout_key(s: RolloutSettings, model_revision: str | None, prompts: list[list[int]]) -> str:
    """What the saved batches depend on: settings, model, every prompt's tokens."""
    blob = json.dumps([asdict(s), model_revision, prompts]).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def grpo_grad_norms(
    model: Any, prompts: list[list[int]], completions: list[list[list[int]]],
    advantages: list[np.ndarray], layer: int, *, temperature: float = 1.0,
    token_budget: int = 8192, pad_id: int = 0, on_group: Callable[[int], None] | None = None,
) -> np.ndarray:  # fmt: skip
    """Per prompt, ||dL/dW_up||_F of its group's GRPO loss (module docstring). Whole groups
    go into a batch together, up to `token_budget` padded tokens (at least one group)."""
    import torch

    from gain_curate.gradients import up_proj_row_grads
    from gain_curate.prefill import right_pad

    norms = np.zeros(len(prompts))
    todo = [i for i in range(len(prompts)) if np.any(advantages[i] != 0) and completions[i]]
    if on_group is not None:
        on_group(len(prompts) - len(todo))  # zero-variance groups: gradient exactly 0
    device = next(model.parameters()).device
    base, head = model.base_model, model.get_output_embeddings()
    with up_proj_row_grads(model, layer) as row_grads:
        for batch in _group_batches(prompts, completions, todo, token_budget):
            rows = [(i, k) for i in batch for k in range(len(completions[i]))]
            ids, mask = right_pad([prompts[i] + completions[i][k] for i, k in rows], pad_id)
            hidden = base(
                input_ids=ids.to(device), attention_mask=mask.to(device)
            ).last_hidden_state
            # row r's completion tokens sit at [n_p, n_p + n_c); position t - 1 predicts t
            pos = [(r, t) for r, (i, k) in enumerate(rows) for t in range(len(prompts[i]), len(prompts[i]) + len(completions[i][k]))]  # fmt: skip
            rr = torch.tensor([r for r, _ in pos], device=device)
            tt = torch.tensor([t for _, t in pos], device=device)
            logits = head(hidden[rr, tt - 1]).float() / temperature
            logp = torch.log_softmax(logits, dim=-1).gather(1, ids.to(device)[rr, tt][:, None])[:, 0]  # fmt: skip
            # GRPO's token mean over the group: each token weighs -A_k / (the group's tokens)
            group_tokens = {i: sum(len(c) for c in completions[i]) for i in batch}
            weight = [
                -advantages[rows[r][0]][rows[r][1]] / group_tokens[rows[r][0]] for r, _ in pos
            ]
            (torch.tensor(weight, dtype=torch.float32, device=device) * logp).sum().backward()
            per_row = row_grads()
            for i in batch:
                norms[i] = per_row[[r for r, (j, _) in enumerate(rows) if j == i]].sum(0).norm().item()  # fmt: skip
            if on_group is not None:
                on_group(len(batch))
    return norms


def _group_batches(prompts: list[list[int]], completions: list[list[list[int]]],
                   todo: list[int], token_budget: int) -> list[list[int]]:  # fmt: skip
    """Groups (all K rows of a prompt) packed, longest first, into batches of padded size
    (rows x longest row) within the budget; a group larger than the budget goes alone."""
    longest = {i: len(prompts[i]) + max(len(c) for c in completions[i]) for i in todo}
    batches: list[list[int]] = []
    current: list[int] = []
    for i in sorted(todo, key=lambda i: (-longest[i], i)):
        rows = sum(len(completions[j]) for j in [*current, i])
        if current and rows * max(longest[j] for j in [*current, i]) > token_budget:
            batches.append(current)
            current = []
        current.append(i)
    return batches + ([current] if current else [])


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
    engine = model
    if settings.engine == "vllm":
        import torch

        dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
        engine = load_vllm(model.name_or_path, dtype, settings.seed) if torch.cuda.is_available() else None  # fmt: skip
        if engine is None:
            raise InputError("--engine vllm needs a CUDA GPU; use --engine hf on this machine")
    completions = generate(engine, prompts, settings, pad_id=pad, eos_ids=eos, folder=folder, key=key, on_batch=gen_done)  # fmt: skip
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
    grad_done = hooks.add("GRPO gradients", len(prompts)) if hooks else None
    norms = grpo_grad_norms(model, prompts, completions, advantages, layer, temperature=settings.temperature,
                            pad_id=pad, on_group=grad_done)  # fmt: skip
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
    }


def _eos_ids(model: Any, tok: Any) -> list[int]:
    """The ids that end a turn: the generation config's, else the tokenizer's EOS."""
    ids = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    if tok.eos_token_id is not None and tok.eos_token_id not in ids:
        ids.append(tok.eos_token_id)
    if not ids:
        raise InputError("the model names no end-of-sequence token: generation would never stop")
    return ids


def rollout_statistics(signals: dict[str, np.ndarray], rl: dict[str, Any]) -> dict[str, Any]:
    """Spearman and length-controlled partial Spearman of every signal with every RL
    target; the zero-variance filter at 25/50/75 % kept; the score's AUROC."""
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
    }


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
