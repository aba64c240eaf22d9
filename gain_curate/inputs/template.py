"""The scoring template: what surrounds each question in the scoring pass
(docs/design.md, "The signal"), per data source by default, from the command-line flags when given.

Conversation = optional system prompt, optional few-shot turns, one user turn holding the
question (optionally followed by an instruction suffix). How each row's conversation is
rendered and cut into token segments is in conversation.py.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypedDict

from gain_curate.errors import InputError

# R1-style reasoning prompt, worded by this project.
DEFAULT_SYSTEM_PROMPT = (
    "You are a helpful assistant that solves problems by reasoning carefully. "
    "First think through the problem step by step inside <think> </think> tags, "
    "then state only the final result inside <answer> </answer> tags."
)

# One worked example in the same format (the GAIN-RL scoring context has one).
GAINRL_FEW_SHOT: tuple[tuple[str, str], ...] = (
    (
        "A baker fills 12 boxes with 8 muffins each and has 5 muffins left over. "
        "How many muffins did the baker make?",
        "<think> 12 boxes of 8 muffins is 12 * 8 = 96 muffins. "
        "With the 5 left over, the baker made 96 + 5 = 101 muffins. </think> "
        "<answer> 101 </answer>",
    ),
)


# verl's own preprocessing (examples/data_preprocess/gsm8k.py, math_dataset.py): one user
# turn, the question, ONE SPACE, then this instruction. verl's default rewards read exactly
# these formats: gsm8k.compute_score the last `#### <number>` (strict), math_reward the
# last \boxed{...}.
GSM8K_INSTRUCTION = 'Let\'s think step by step and output the final answer after "####".'
BOXED_INSTRUCTION = "Let's think step by step and output the final answer within \\boxed{}."
VERL_SEPARATOR = " "
# verl's default_compute_score (0.7.1 and 0.9.1) dispatches on these exact data_source names.
REWARD_INSTRUCTIONS = {
    "openai/gsm8k": GSM8K_INSTRUCTION,
    "lighteval/MATH": BOXED_INSTRUCTION,
    "DigitalLearningGmbH/MATH-lighteval": BOXED_INSTRUCTION,
    "HuggingFaceH4/MATH-500": BOXED_INSTRUCTION,
}
TEMPLATE_FIELDS = ("system_prompt", "few_shot", "instruction")


class TemplateJSON(TypedDict):
    """A ScoringTemplate as JSON (signal.template, run.json's config): its fields, in order."""

    system_prompt: str | None
    few_shot: list[list[str]]  # [user, assistant] pairs
    instruction: str | None
    few_shot_name: str
    separator: str


@dataclass(frozen=True)
class ScoringTemplate:
    """What surrounds each question in the scoring pass; recorded in the manifest."""

    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT
    few_shot: tuple[tuple[str, str], ...] = GAINRL_FEW_SHOT
    instruction: str | None = None
    few_shot_name: str = field(default="gainrl", compare=False)
    separator: str = "\n\n"  # between the question and the instruction (verl's own: " ")

    def user_content(self, question: str) -> str:
        return question + (self.separator + self.instruction if self.instruction else "")

    def messages(self, question: str) -> list[dict[str, str]]:
        msgs = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        for user, assistant in self.few_shot:
            msgs += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
        return msgs + [{"role": "user", "content": self.user_content(question)}]

    def to_dict(self) -> TemplateJSON:
        """The template as the manifest's signal.template and run.json write it."""
        return TemplateJSON(
            system_prompt=self.system_prompt,
            few_shot=[list(pair) for pair in self.few_shot],
            instruction=self.instruction,
            few_shot_name=self.few_shot_name,
            separator=self.separator,
        )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ScoringTemplate:
        """The inverse of to_dict (a manifest's signal.template, a run's config)."""
        return cls(
            system_prompt=d["system_prompt"],
            few_shot=tuple(tuple(x) for x in d["few_shot"]),
            instruction=d["instruction"],
            few_shot_name=d["few_shot_name"],
            separator=d.get("separator", "\n\n"),
        )


def data_source_template(data_source: str | None) -> ScoringTemplate:
    """The default conversation for a data_source. Where verl's default reward knows the name,
    verl's own preprocessing: no system prompt (the chat template's own default, if any), no
    few-shot, the question, a space and the instruction that asks for the reward's format
    (`#### n`, `\\boxed{}`); the R1-style <answer> default would earn 0 there. Else the
    R1-style system prompt and one worked example (for a reward that reads <answer>)."""
    instruction = REWARD_INSTRUCTIONS.get(data_source or "")
    if instruction is None:
        return ScoringTemplate()
    return ScoringTemplate(
        system_prompt=None,
        few_shot=(),
        instruction=instruction,
        few_shot_name="none",
        separator=VERL_SEPARATOR,
    )


def resolve_template(
    template: ScoringTemplate, flags: Any, data_source: str | None
) -> ScoringTemplate:
    """The template a run scores with. `flags` None: `template` as given (library callers);
    else the fields named in `flags` (set on the command line) as given and the others from
    the data source's defaults. An explicit instruction keeps its own separator."""
    if flags is None:
        return template
    d = data_source_template(data_source)
    own = set(flags)
    return replace(
        d,
        system_prompt=template.system_prompt if "system_prompt" in own else d.system_prompt,
        few_shot=template.few_shot if "few_shot" in own else d.few_shot,
        few_shot_name=template.few_shot_name if "few_shot" in own else d.few_shot_name,
        instruction=template.instruction if "instruction" in own else d.instruction,
        separator=template.separator if "instruction" in own else d.separator,
    )


def template_from_options(
    *,
    system_prompt: str | None = None,
    system_prompt_file: str | Path | None = None,
    no_system_prompt: bool = False,
    few_shot: str | None = None,
    instruction: str | None = None,
) -> ScoringTemplate:
    """The one constructor behind every command's template flags: the system prompt is
    --system-prompt, else the file, else the default; --no-system-prompt drops it; an empty
    --instruction is none."""
    system = DEFAULT_SYSTEM_PROMPT
    if system_prompt_file is not None:
        try:
            system = Path(system_prompt_file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as e:
            raise InputError(
                f"`system_prompt_file` {system_prompt_file}: {getattr(e, 'strerror', None) or e}"
            ) from None
    if system_prompt is not None:
        system = system_prompt
    name, pairs = load_few_shot(few_shot or "gainrl")
    return ScoringTemplate(
        system_prompt=None if no_system_prompt else system,
        few_shot=pairs,
        instruction=instruction or None,
        few_shot_name=name,
    )


def load_few_shot(value: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    """`gainrl`, `none`, or a JSON file: [{"question", "answer"}, ...] or chat messages."""
    if value.lower() == "gainrl":
        return "gainrl", GAINRL_FEW_SHOT
    if value.lower() == "none":
        return "none", ()
    path = Path(value)
    if not path.is_file():
        raise InputError(f"`few_shot`: no such file: {value} (use gainrl, none, or a JSON file)")
    try:
        items = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"`few_shot` {value}: not valid JSON ({e})") from None
    pairs = _few_shot_pairs(items)
    if pairs is None:
        raise InputError(
            f"`few_shot` {value}: expected a JSON list of {{'question', 'answer'}} objects "
            "or of alternating user/assistant {'role', 'content'} messages"
        )
    return str(path), pairs


def _few_shot_pairs(items: Any) -> tuple[tuple[str, str], ...] | None:
    if not isinstance(items, list) or not all(isinstance(x, dict) for x in items):
        return None
    if all(isinstance(x.get("question"), str) and isinstance(x.get("answer"), str) for x in items):
        return tuple((x["question"], x["answer"]) for x in items)
    roles = [x.get("role") for x in items]
    if len(items) % 2 or roles != ["user", "assistant"] * (len(items) // 2):
        return None
    if not all(isinstance(x.get("content"), str) for x in items):
        return None
    return tuple((items[i]["content"], items[i + 1]["content"]) for i in range(0, len(items), 2))


def describe(template: ScoringTemplate) -> str:
    """One line: what surrounds the question, e.g. `no system prompt, no few-shot, question +
    instruction "Let's think step by step and output the final answer after "####"."`."""
    if template.system_prompt is None:
        system = "no system prompt (the chat template's default, if any)"
    else:
        system = (
            "the R1-style system prompt"
            if template.system_prompt == DEFAULT_SYSTEM_PROMPT
            else "a system prompt"
        )
    n = len(template.few_shot)
    shots = (
        f"{n} few-shot example{'s' if n != 1 else ''} ({template.few_shot_name})"
        if n
        else "no few-shot"
    )
    tail = (
        f'question + instruction "{template.instruction}"' if template.instruction else "question"
    )
    return f"{system}, {shots}, {tail}"
