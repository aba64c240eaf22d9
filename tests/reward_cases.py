"""The default reward's table: completion, reference, the reward `math_reward` must give,
and what verl's GSM8K reward (`verl.utils.reward_score.gsm8k.compute_score`, strict) gives,
None where verl's strict extraction reads no `####` answer at all.

One table for both sides: tests/test_rewards_table.py asserts our column under `make test`,
tests/integrations/test_verl_rewards.py asserts verl's column against verl 0.7.1 and 0.9.1
and that the two agree wherever both read the `####` answer."""

from __future__ import annotations

from typing import NamedTuple


class Case(NamedTuple):
    why: str  # the test id
    completion: str
    gold: str  # the reference as verl's GSM8K ground truth is written: no commas
    ours: float  # math_reward(completion, gold)
    verl: float | None  # gsm8k.compute_score(completion, gold); None: verl reads no ####


NOTE = "#### 18\n\n(Note: 1 dozen = 12.)"
TWO_ANSWERS = (  # a model that answers, then writes itself the next few-shot question
    "She buys 4 boxes of 5, so 4 * 5 = 20. #### 20\n\n"
    "Question: Tom has 3 apples and buys 4 more. How many does he have?\n"
    "Answer: 3 + 4 = 7. #### 7"
)
CUT_BOX = "First \\boxed{18}. Double-checking: \\boxed{1"  # cut off inside the last box
CHATTER = " And that is how the shop owner kept count of her stock all year long." * 5
CUT_OFF = (  # issue 18's completion, cut off at --max-new-tokens: its last number is 20
    "Sanjay ate 10 pies on Monday. On Tuesday he ate twice as many, so he ate 10 x 2 = 20 "
    "pies.\nSanjay at the"
)

CASES = [
    # issue 26's rows: the answer is what follows `####`, not every number after it
    Case("note-after-answer", NOTE, "18", 1.0, 1.0),
    Case("note-number-is-not-answer", NOTE, "12", 0.0, 0.0),
    Case("units-after-answer", "#### 18 dollars", "18", 1.0, 1.0),
    # several `####`: verl takes the LAST match (`solutions[-1]`), so the 7 decides, and the
    # right 20 earns 0, as verl trains; we give the same
    Case("two-answers-last-wins", TWO_ANSWERS, "20", 0.0, 0.0),
    Case("two-answers-last-is-7", TWO_ANSWERS, "7", 1.0, 1.0),
    Case("cut-off-box-falls-back", CUT_BOX, "18", 1.0, None),
    Case("cut-off-box-not-the-stub", CUT_BOX, "1", 0.0, None),
    # signs, commas, decimals: verl compares the number's text with the ground truth's
    Case("negative", "So he owes\n#### -5", "-5", 1.0, 1.0),
    Case("negative-not-positive", "So he owes\n#### -5", "5", 0.0, 0.0),
    Case("thousands-comma", "#### 1,000", "1000", 1.0, 1.0),
    Case("comma-after-answer", "#### 18, the cost of the toys", "18", 1.0, 1.0),
    Case("decimal-zero-is-other-text", "#### 18.0", "18", 0.0, 0.0),
    Case("decimal-as-written", "#### 18.0", "18.0", 1.0, 1.0),
    Case("full-stop-is-read", "The answer is\n#### 18.", "18", 0.0, 0.0),
    Case("decimal", "#### 0.5", "0.5", 1.0, 1.0),
    Case("leading-point", "#### .5", "0.5", 0.0, 0.0),
    Case("five-hashes", "##### 18", "18", 1.0, 1.0),
    Case("newline-then-prose", "#### 18\nThat is all.", "18", 1.0, 1.0),
    Case("wrong-answer", "He ate 10 x 2 = 20 pies.\n#### 25", "20", 0.0, 0.0),
    # verl reads the last `#### <number>`, even where a later `####` holds something else
    Case("verl-skips-unreadable-last", "#### 20 pies\nor rather #### $7", "20", 1.0, 1.0),
    # `####` verl cannot read (no space, two spaces, `$`, too far from the end): the rest of
    # the line, by math-verify; verl gives these 0
    Case("dollar-sign", "#### $18", "18", 1.0, None),
    Case("dollar-and-units", "#### $18 dollars", "18", 1.0, None),
    Case("dollar-wrong", "#### $18", "12", 0.0, None),
    Case("no-space", "####18", "18", 1.0, None),
    Case("two-spaces", "####  18", "18", 1.0, None),
    Case("over-300-chars-from-end", "#### 18\n" + CHATTER, "18", 1.0, None),
    Case("empty-hashes-line", "####\n18", "18", 0.0, None),
    # the other markers: the tag comes first, then `####`, then the last complete box
    Case("tag-before-hashes", "<answer>7</answer> and #### 8", "7", 1.0, 0.0),
    Case("tag-before-hashes-not-8", "<answer>7</answer> and #### 8", "8", 0.0, 1.0),
    Case("hashes-before-box", "\\boxed{18} so #### 12", "18", 0.0, 0.0),
    Case("last-box", "First \\boxed{3}; no, recounting: $\\boxed{4}$.", "4", 1.0, None),
    Case("box-symbolic", "x = \\boxed{\\frac{1}{2}} since 2x = 1", "0.5", 1.0, None),
    Case("only-box-left-open", "The answer is \\boxed{\\frac{1}{2}", "0.5", 0.0, None),
    Case("cut-off-unmarked", CUT_OFF, "20", 0.0, None),
    Case("hashes-begun", "20 pies. ###", "20", 0.0, None),
]
