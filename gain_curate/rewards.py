"""Rewards for `validate --rollouts`: did a completion reach the reference answer?

The default is `math_reward`, a verifier made for this field: math-verify (Hugging Face's
answer checker, the one open-r1 and TRL's math rewards use) compares the completion's final
answer with the reference symbolically, so `0.5`, `\\frac{1}{2}` and `\\dfrac12` agree. The
final answer is the last `<answer>...</answer>` (the default scoring prompt asks for it),
else the text after GSM8K's `####`, else the whole completion (math-verify then takes the
last `\\boxed{}`, or the last expression).

Any other task: `--reward module:function`, a function `(completion: str, answer: str) ->
float` importable from the working directory, e.g. `--reward my_rewards:exact_match`.
"""

from __future__ import annotations

import importlib
import re
import sys
from collections.abc import Callable
from pathlib import Path

from gain_curate.errors import InputError

Reward = Callable[[str, str], float]

_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_HASHES = re.compile(r"####\s*(.+?)\s*$", re.DOTALL)


def final_answer(completion: str) -> tuple[str, bool]:
    """The part of a completion that states its answer, and whether it is ONLY the answer
    (from `<answer>` or `####`: read as one expression) or the whole text."""
    tags = _ANSWER_TAG.findall(completion)
    if tags:
        return tags[-1].strip(), True
    hashes = _HASHES.search(completion)
    return (hashes.group(1), True) if hashes else (completion, False)


def math_reward(completion: str, answer: str) -> float:
    """1.0 when the completion's final answer equals the reference (math-verify), else 0.0."""
    from math_verify import parse, verify

    gold = parse(answer if _is_delimited(answer) else f"${answer}$") or parse(answer)
    if not gold:
        return 0.0
    said, only = final_answer(completion)
    if not _is_delimited(said) and (only or "\\" in said):  # an answer as bare math: x^4-16
        said = f"${said}$"
    return 1.0 if verify(gold, parse(said)) else 0.0


_DOLLAR = re.compile(r"(?<!\\)\$")  # a math delimiter; `\$` is a dollar sign


def _is_delimited(text: str) -> bool:
    return bool(_DOLLAR.search(text)) or "\\boxed" in text


def load_reward(spec: str | None) -> tuple[str, Reward]:
    """`None` -> math_reward; `module:function` -> that function (one line if it is not)."""
    if spec is None:
        try:
            importlib.import_module("math_verify")
        except ImportError:
            raise InputError("the default reward needs math-verify: pip install math-verify") from None  # fmt: skip
        return "math_verify", math_reward
    module_name, _, func_name = spec.partition(":")
    if not module_name or not func_name:
        raise InputError(f"--reward {spec}: expected module:function, e.g. my_rewards:exact_match")  # fmt: skip
    cwd = str(Path.cwd())
    if cwd not in sys.path:
        sys.path.insert(0, cwd)  # as `python -m` would: a module next to you is found
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise InputError(f"--reward {spec}: cannot import {module_name} ({e}); run from its folder or install it") from None  # fmt: skip
    fn = getattr(module, func_name, None)
    if not callable(fn):
        raise InputError(f"--reward {spec}: {module_name} has no function {func_name}")
    return spec, fn


def score_completion(reward: Reward, name: str, completion: str, answer: str) -> float:
    """One reward as a float; a reward function that fails or returns a non-number is one line."""
    try:
        value = float(reward(completion, answer))
    except Exception as e:
        raise InputError(f"--reward {name} failed on a completion: {type(e).__name__}: {e}") from None  # fmt: skip
    if value != value:  # NaN
        raise InputError(f"--reward {name} returned NaN; return a number")
    return value
