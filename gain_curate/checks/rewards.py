"""Rewards for `validate --rollouts`: did a completion reach the reference answer?

Every reward scores one prompt's group of K completions at once (a `Group`), so a trainer's
batched reward function is called the way its trainer calls it.

- Default, `math_reward`: the completion's FINAL answer, the first it marks of: the last
  complete `<answer>...</answer>` (the default scoring prompt asks for it); `####` as verl's
  GSM8K reward reads it (strict, verl 0.7.1 and 0.9.1): the LAST `#### (-?[0-9.,]+)` in the
  last 300 characters, commas dropped, EQUAL to the reference as text, verl's verdict
  (`#### 18 dollars`, `#### 1,000` pass; `#### 18.0`, `#### 18.` fail for 18; of `#### 20
  ... #### 7` only 7 counts); a `####` verl cannot read (`#### $18`, `####18`, too far from
  the end): the rest of its line; the last complete `\\boxed{}` (one left open, cut off,
  gives way to the one before). All but verl's reading are compared by math-verify (Hugging
  Face's answer checker, the one open-r1 and TRL's math rewards use), symbolically: `0.5`,
  `\\frac{1}{2}` and `\\dfrac12` agree. A completion that marks none earns 0: one cut off at
  --max-new-tokens in mid-reasoning (`...he ate 10 x 2 = 20 pies.\\nSanjay at the`) has not
  answered, and its last number is not an answer.
- `--reward verl`: verl's own `default_compute_score(data_source, solution_str,
  ground_truth, extra_info)` (verl 0.7 and 0.9 alike), called as verl's reward manager calls
  it: each row's `data_source`, its `reward_model.ground_truth`, a copy of its `extra_info`.
- `--reward trl:module:function`: a TRL reward function, called as GRPOTrainer's
  `_calculate_rewards` calls it: `prompts`, `completions` (conversational: one
  `{"role": "assistant", "content": text}` message each), `completion_ids`, every other
  column of the row as a list (`data_source`, `reward_model`, `extra_info`, ...), and
  `trainer_state=None` (nothing trains here), `log_extra`, `log_metric` (ignored). A None
  reward (TRL: "not mine") counts as 0 and is counted.
- `--reward module:function`: any task, `(completion: str, answer: str) -> float`.
Functions are imported from the working directory, e.g. `--reward my_rewards:exact_match`.
"""

from __future__ import annotations

import asyncio
import copy
import importlib
import inspect
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gain_curate.errors import InputError


@dataclass(frozen=True)
class Group:
    """One prompt's K completions and what a trainer's reward sees of its row."""

    prompt: list[dict[str, Any]]  # the chat the trainer renders
    completions: list[str]  # decoded without special tokens (as verl and TRL decode)
    completion_ids: list[list[int]]  # through the end-of-sequence token when there is one
    answer: str  # the reference answer, extracted (`72`, `\\frac{1}{2}`)
    row: dict[str, Any]  # the row's other columns: data_source, reward_model, extra_info, ...


@dataclass(frozen=True)
class Reward:
    name: str  # as validate.json records it
    scorer: Callable[[Group], list[Any]]  # K rewards for a group
    none_is_zero: bool = False  # TRL's contract: None is "no reward", scored as 0


# --- the default: the marked final answer, as verl reads `####`, else by math-verify ---

_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_VERL_GSM8K = re.compile(r"#### (\-?[0-9\.\,]+)")  # verl's strict pattern, verbatim
_VERL_CLIP = 300  # verl reads only the completion's last 300 characters
_HASHES_LINE = re.compile(r"####[ \t]*([^\n]*)")  # a `####` and the rest of its line
_DOLLAR = re.compile(r"(?<!\\)\$")  # a math delimiter; `\$` is a dollar sign


def marked_answer(completion: str) -> tuple[str, str] | None:
    """(marker, text) of the final answer, markers in turn: `answer` (tag), `verl` (verl's
    `####`), `####` (the last `####` line's rest), `boxed`; None when it marks none."""
    from gain_curate.inputs.answers import _last_boxed  # the extraction MATH's references get

    if tags := _ANSWER_TAG.findall(completion):
        return "answer", tags[-1].strip()
    if (verl := verl_gsm8k_answer(completion)) is not None:
        return "verl", verl
    if (lines := _HASHES_LINE.findall(completion)) and lines[-1].strip():
        return "####", lines[-1].strip()
    boxed = _last_boxed(completion) if "\\boxed" in completion else None
    return None if boxed is None else ("boxed", f"$\\boxed{{{boxed}}}$")


def verl_gsm8k_answer(completion: str) -> str | None:
    """What verl's `gsm8k.extract_solution(method="strict")` reads: the last `#### <number>`
    in the last 300 characters, `,` and `$` dropped; None when there is none."""
    found = _VERL_GSM8K.findall(completion[-_VERL_CLIP:])
    return found[-1].replace(",", "").replace("$", "") if found else None


def final_answer(completion: str) -> str | None:
    """The text of the completion's marked final answer, or None."""
    return (marked_answer(completion) or (None, None))[1]


def math_reward(completion: str, answer: str) -> float:
    """1.0 when the marked final answer equals the reference (as text where verl reads it,
    else by math-verify); 0.0 when it differs or the completion marks none."""
    marked = marked_answer(completion)
    if marked is None or marked[0] == "verl":  # verl's `answer == ground_truth`, as is
        return float(marked is not None and marked[1] == answer)
    from math_verify import parse, verify

    said = marked[1]
    gold = parse(answer if _is_delimited(answer) else f"${answer}$") or parse(answer)
    if not gold:
        return 0.0
    if not _is_delimited(said):  # an answer as bare math: x^4-16, (3, -1)
        said = f"${said}$"
    return 1.0 if verify(gold, parse(said)) else 0.0


def _is_delimited(text: str) -> bool:
    return bool(_DOLLAR.search(text)) or "\\boxed" in text


# --- verl and TRL: the trainer's own reward ------------------------------------------------


def _verl_scorer() -> Callable[[Group], list[Any]]:
    try:
        from verl.utils.reward_score import default_compute_score
    except ImportError as e:
        raise InputError(
            f"`reward` verl needs verl importable here ({e}); "
            "pip install verl, or use the default reward"
        ) from None

    def score(g: Group) -> list[Any]:
        data_source, truth = verl_fields(g.row, g.answer)
        out = []
        for text in g.completions:
            try:  # verl's NaiveRewardManager: keyword arguments, extra_info a dict
                res = default_compute_score(
                    data_source=data_source,
                    solution_str=text,
                    ground_truth=truth,
                    extra_info=copy.deepcopy(g.row.get("extra_info") or {}),
                )
            except NotImplementedError:
                raise InputError(no_verl_reward(data_source)) from None
            out.append(res["score"] if isinstance(res, dict) else res)
        return out

    return score


def verl_fields(row: Mapping[str, Any], answer: str) -> tuple[str, Any]:
    """The row's data_source and ground truth, as verl's reward manager reads them."""
    data_source = row.get("data_source")
    if not isinstance(data_source, str):
        raise InputError(
            "`reward` verl: a row has no data_source; validate a scored run (`run` OUT) "
            "or data with a data_source column"
        )
    truth = (row.get("reward_model") or {}).get("ground_truth", answer)
    return data_source, truth


def no_verl_reward(data_source: str) -> str:
    return (
        "`reward` verl: verl's default_compute_score has no reward for "
        f"data_source '{data_source}' "
        "(it knows openai/gsm8k, lighteval/MATH, DigitalLearningGmbH/MATH-lighteval, "
        "HuggingFaceH4/MATH-500, math_dapo, aime*, ...); score the data under the name your "
        "verl run uses (score --data-source openai/gsm8k), or use the default reward"
    )


def check_verl_sources(rows: Sequence[Mapping[str, Any]], answers: list[str]) -> None:
    """Fail before any model runs when verl has no reward for a row's data_source: one
    probe call per distinct data_source, on an empty completion."""
    from verl.utils.reward_score import default_compute_score

    seen: set[str] = set()
    for row, answer in zip(rows, answers):
        data_source, truth = verl_fields(row, answer)
        if data_source in seen:
            continue
        seen.add(data_source)
        try:
            default_compute_score(data_source, "", truth, {})
        except NotImplementedError:
            raise InputError(no_verl_reward(data_source)) from None
        except Exception:  # any other failure shows on the real completions, in one line
            pass


def _trl_scorer(fn: Callable[..., Any]) -> Callable[[Group], list[Any]]:
    def ignore(*args: Any, **kwargs: Any) -> None:
        return None

    def score(g: Group) -> list[Any]:
        k = len(g.completions)
        # GRPOTrainer repeats every input column but prompt/completion/completion_ids, one
        # value per completion (each its own copy, as the dataset hands out rows)
        columns = {
            key: [copy.deepcopy(v) for _ in range(k)]
            for key, v in g.row.items()
            if key not in ("prompt", "completion", "completion_ids")
        }
        out = fn(
            prompts=[copy.deepcopy(g.prompt) for _ in range(k)],
            completions=[[{"role": "assistant", "content": t}] for t in g.completions],
            completion_ids=[list(c) for c in g.completion_ids],
            **columns,
            trainer_state=None,
            log_extra=ignore,
            log_metric=ignore,
        )
        return list(asyncio.run(out) if inspect.isawaitable(out) else out)

    return score


# --- loading and calling -------------------------------------------------------------------


def load_reward(spec: str | None) -> Reward:
    """`None` -> math_reward; `verl`; `trl:module:function`; `module:function` (one line
    when it cannot be had)."""
    if spec is None:
        try:
            importlib.import_module("math_verify")
        except ImportError:
            raise InputError(
                "the default reward needs math-verify: pip install math-verify"
            ) from None
        return Reward("math_verify", lambda g: [math_reward(t, g.answer) for t in g.completions])
    if spec == "verl":
        return Reward("verl", _verl_scorer())
    if spec.startswith("trl:"):
        fn = _import_function(spec, spec[4:], "trl:module:function, e.g. trl:my_rewards:accuracy")
        return Reward(spec, _trl_scorer(fn), none_is_zero=True)
    fn = _import_function(spec, spec, "module:function, e.g. my_rewards:exact_match")
    return Reward(spec, lambda g: [fn(t, g.answer) for t in g.completions])


def check_reward(spec: str | None, rows: Sequence[Mapping[str, Any]], answers: list[str]) -> Reward:
    """load_reward, and for verl a probe of every row's data_source: both before any model
    runs, so a reward that cannot score these rows fails in seconds, not after generation."""
    reward = load_reward(spec)
    if spec == "verl":
        check_verl_sources(rows, answers)
    return reward


def _import_function(spec: str, target: str, expected: str) -> Callable[..., Any]:
    module_name, _, func_name = target.partition(":")
    if not module_name or not func_name or ":" in func_name:
        raise InputError(f"`reward` {spec}: expected {expected}, or verl")
    cwd = str(Path.cwd())
    if cwd not in sys.path:
        sys.path.insert(0, cwd)  # as `python -m` would: a module next to you is found
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise InputError(
            f"`reward` {spec}: cannot import {module_name} ({e}); run from its folder or install it"
        ) from None
    fn = getattr(module, func_name, None)
    if not callable(fn):
        raise InputError(f"`reward` {spec}: {module_name} has no function {func_name}")
    return fn


def score_group(reward: Reward, group: Group) -> tuple[list[float], int]:
    """The group's K rewards as floats, and how many were None (scored 0; TRL's contract
    only). A reward that fails, miscounts or returns a non-number is one line."""
    try:
        values = list(reward.scorer(group))
    except InputError:
        raise
    except Exception as e:
        raise InputError(
            f"`reward` {reward.name} failed on a completion: {type(e).__name__}: {e}"
        ) from None
    if len(values) != len(group.completions):
        raise InputError(
            f"`reward` {reward.name} returned {len(values)} rewards for "
            f"{len(group.completions)} completions; return one per completion"
        )
    out, nones = [], 0
    for v in values:
        if v is None and reward.none_is_zero:
            nones += 1
            v = 0.0
        try:
            value = float(v)
        except (TypeError, ValueError):
            raise InputError(f"`reward` {reward.name} returned {v!r}; return a number") from None
        if value != value:  # NaN
            raise InputError(f"`reward` {reward.name} returned NaN; return a number")
        out.append(value)
    return out, nones
