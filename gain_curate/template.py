"""The scoring conversation and its token segments (DESIGN.md section 1).

Conversation = optional system prompt, optional few-shot turns, one user turn holding the
question (optionally followed by an instruction suffix), rendered by the model's own chat
template with add_generation_prompt=True and tokenized with add_special_tokens=False.

Segments come from character offsets, never hard-coded token counts:
    P = every token before the first token that overlaps the question text,
    Q = the tokens whose character span overlaps the question text,
    the rest (instruction, end of turn, generation prompt) is in no segment.
Causal attention means tokens after Q never influence P or Q, so they are never run.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gain_curate.errors import InputError, ModelError

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


@dataclass(frozen=True)
class ScoringTemplate:
    """What surrounds each question in the scoring pass; recorded in the manifest."""

    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT
    few_shot: tuple[tuple[str, str], ...] = GAINRL_FEW_SHOT
    instruction: str | None = None
    few_shot_name: str = field(default="gainrl", compare=False)

    def user_content(self, question: str) -> str:
        return question + ("\n\n" + self.instruction if self.instruction else "")

    def messages(self, question: str) -> list[dict[str, str]]:
        msgs = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        for user, assistant in self.few_shot:
            msgs += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
        return msgs + [{"role": "user", "content": self.user_content(question)}]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["few_shot"] = [list(pair) for pair in self.few_shot]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ScoringTemplate:
        """The inverse of to_dict (a manifest's signal.template, a run's config)."""
        return cls(system_prompt=d["system_prompt"], few_shot=tuple(tuple(x) for x in d["few_shot"]),
                   instruction=d["instruction"], few_shot_name=d["few_shot_name"])  # fmt: skip


def template_from_options(
    *, system_prompt: str | None = None, system_prompt_file: str | Path | None = None,
    no_system_prompt: bool = False, few_shot: str = "gainrl", instruction: str | None = None,
) -> ScoringTemplate:  # fmt: skip
    """The one constructor behind every command's template flags: the system prompt is
    --system-prompt, else the file, else the default; --no-system-prompt drops it."""
    system = DEFAULT_SYSTEM_PROMPT
    if system_prompt_file is not None:
        try:
            system = Path(system_prompt_file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as e:
            raise InputError(f"--system-prompt-file {system_prompt_file}: {getattr(e, 'strerror', None) or e}") from None  # fmt: skip
    if system_prompt is not None:
        system = system_prompt
    name, pairs = load_few_shot(few_shot)
    return ScoringTemplate(system_prompt=None if no_system_prompt else system, few_shot=pairs,
                           instruction=instruction, few_shot_name=name)  # fmt: skip


def load_few_shot(value: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    """`gainrl`, `none`, or a JSON file: [{"question", "answer"}, ...] or chat messages."""
    if value.lower() == "gainrl":
        return "gainrl", GAINRL_FEW_SHOT
    if value.lower() == "none":
        return "none", ()
    path = Path(value)
    if not path.is_file():
        raise InputError(f"--few-shot: no such file: {value} (use gainrl, none, or a JSON file)")
    try:
        items = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"--few-shot {value}: not valid JSON ({e})") from None
    pairs = _few_shot_pairs(items)
    if pairs is None:
        raise InputError(
            f"--few-shot {value}: expected a JSON list of {{'question', 'answer'}} objects "
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


@dataclass(frozen=True)
class Segments:
    """Token ids of one scoring conversation up to the end of the question.

    input_ids[:p] is P, input_ids[p:] is Q (q = len(input_ids) - p); total_tokens is the
    length of the whole rendered conversation (what --max-tokens limits).
    """

    input_ids: list[int]
    p: int
    total_tokens: int

    @property
    def q(self) -> int:
        return len(self.input_ids) - self.p


# Stands in for the last user turn's content to find where that turn starts in the text.
_SENTINEL = "GAINCURATELASTUSERTURNSTARTSHERE"


def render_chat(tokenizer: Any, messages: list[dict[str, Any]], question: str, **kwargs: Any) -> tuple[str, int, int]:  # fmt: skip
    """Chat-template text of `messages` (+ generation prompt) and the character span
    [start, end) of `question` inside the LAST user turn; (-1, -1) when it is not there.

    The turn's start is found by rendering the same conversation with a sentinel as that
    turn's content, so a question that also occurs in an earlier turn, in the generation
    prompt or as a role name ("assistant") is never found in the wrong place. Templates
    that trim content are handled by falling back to the stripped question."""
    kwargs = {"add_generation_prompt": True, **kwargs}
    last = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=-1)
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)
        if last < 0:
            return text, -1, -1
        probe = [*messages[:last], {**messages[last], "content": _SENTINEL}, *messages[last + 1 :]]  # fmt: skip
        turn = tokenizer.apply_chat_template(probe, tokenize=False, **kwargs).find(_SENTINEL)
    except Exception as e:  # jinja errors: a template that rejects the roles we use
        raise ModelError(f"the model's chat template failed to render the conversation: {e}") from None  # fmt: skip
    if turn < 0 or text[:turn] != tokenizer.apply_chat_template(probe, tokenize=False, **kwargs)[:turn]:  # fmt: skip
        turn = 0  # a template that rewrites earlier turns by content: search the whole text
    stripped = question.strip()
    for needle in (question, stripped):
        start = text.find(needle, turn) if needle else -1
        if start >= 0:
            return text, start, start + len(needle)
    return text, -1, -1


def render(tokenizer: Any, template: ScoringTemplate, question: str) -> tuple[str, int, int]:
    """The scoring conversation's text and the question's character span in it."""
    return render_chat(tokenizer, template.messages(question), question)


def token_segments(tokenizer: Any, rendered: list[tuple[str, int, int]]) -> list[Segments | None]:  # fmt: skip
    """Tokenize rendered conversations (add_special_tokens=False: the template carries BOS)
    and cut each into P and Q by character offsets; None where Q is not found."""
    if not rendered:  # a part whose rows all have a problem already
        return []
    enc = tokenizer(
        [text for text, _, _ in rendered],
        add_special_tokens=False,
        return_offsets_mapping=True,
    )
    out: list[Segments | None] = []
    for (_, q_start, q_end), ids, offsets in zip(rendered, enc["input_ids"], enc["offset_mapping"]):
        overlap = [i for i, (s, e) in enumerate(offsets) if s < q_end and e > q_start and e > s]
        if q_start < 0 or not overlap:
            out.append(None)
            continue
        first, last = overlap[0], overlap[-1]
        out.append(Segments(input_ids=list(ids[: last + 1]), p=first, total_tokens=len(ids)))
    return out


def segment_batch(
    tokenizer: Any, template: ScoringTemplate, questions: list[str]
) -> list[Segments | None]:
    """Tokenize each scoring conversation and cut it into P and Q; None where Q is not found."""
    return token_segments(tokenizer, [render(tokenizer, template, q) for q in questions])


def template_hash(tokenizer: Any) -> str:
    return hashlib.sha256((tokenizer.chat_template or "").encode()).hexdigest()[:16]
