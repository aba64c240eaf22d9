"""The default reward (`math_reward`) on issue 26's table and its edge cases: every row's
exact reward. The table is tests/reward_cases.py, which the verl integration test runs
through verl's own GSM8K reward too.

For the row with two `####` answers (`... = 20. #### 20 ... #### 7`), verl decides by the
LAST one (`solutions[-1]` in gsm8k.extract_solution): 0 for 20, 1 for 7; so do we."""

from __future__ import annotations

import pytest
from reward_cases import CASES, Case

from gain_curate.checks.rewards import marked_answer, math_reward
from gain_curate.inputs.answers import _last_boxed

pytest.importorskip("math_verify", reason="the default reward needs math-verify")


@pytest.mark.parametrize("case", CASES, ids=[c.why for c in CASES])
def test_default_reward_on_the_table(case: Case) -> None:
    assert math_reward(case.completion, case.gold) == case.ours


def test_the_table_covers_every_marker() -> None:
    markers = {(marked_answer(c.completion) or ("none",))[0] for c in CASES}
    assert markers == {"answer", "verl", "####", "boxed", "none"}
    assert len({c.why for c in CASES}) == len(CASES)  # ids are unique


def test_a_box_left_open_gives_way_to_the_one_before() -> None:
    assert _last_boxed("First \\boxed{18}. Double-checking: \\boxed{1") == "18"
    assert _last_boxed("\\boxed{a} then \\boxed{\\frac{b}{c") == "a"
    assert _last_boxed("\\boxed{a} then \\boxed") == "a"
    assert _last_boxed("only \\boxed{1") is None
    assert _last_boxed("\\boxed{x + \\boxed{2}") == "2"  # the inner box is complete
    assert _last_boxed(r"so \boxed{1} then \boxed{\frac{a}{b}}.") == r"\frac{a}{b}"
