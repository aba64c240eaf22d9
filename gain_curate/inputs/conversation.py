"""Each row's scoring conversation and its token segments (docs/design.md).

The conversation is rendered by the model's own chat template with
add_generation_prompt=True and tokenized with add_special_tokens=False.

Segments come from character offsets, never hard-coded token counts:
    P = every token before the first token that overlaps the question text,
    Q = the tokens whose character span overlaps the question text,
    the rest (instruction, end of turn, generation prompt) is in no segment.
Causal attention means tokens after Q never influence P or Q, so the angle score never runs
them; `score --keep-states` runs them (Segments.tail) after the question pass, for the
residual stream at the prompt's last token (prompt_end.py).

One conversation (docs/design.md, "Outputs"): by default the conversation scored is the one
the trainer renders from the output's `prompt` column. `conversations()` decides both, per row.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gain_curate.errors import InputError, ModelError
from gain_curate.inputs.template import BOXED_INSTRUCTION, GSM8K_INSTRUCTION, ScoringTemplate

TRAIN_PROMPTS = ("conversation", "question")


@dataclass(frozen=True)
class Conversation:
    """One row: the messages scored, the question text inside their last user turn, and the
    messages the trainer renders from the output's `prompt` column."""

    scored: list[dict[str, Any]]
    question: str
    trained: list[dict[str, Any]]
    from_input: bool = False  # `trained` is the input's own chat

    @property
    def differs(self) -> bool:
        turns = [
            [(m.get("role"), m.get("content")) for m in c] for c in (self.scored, self.trained)
        ]
        return turns[0] != turns[1]


def conversations(
    template: ScoringTemplate,
    questions: list[str | None],
    chats: list[Any] | None,
    *,
    train_prompt: str = "conversation",
    advance: Callable[[int], None] = lambda n: None,
) -> list[Conversation | None]:
    """Per row, what is scored and what the trainer sees; None where there is no question.

    A row that comes with its own chat (`chats[i]`: the input's `prompt` column, or a chat
    question column) trains on that chat as it is. "conversation" (the default) scores that
    very chat; its question is the last user turn's text less a trailing instruction the run
    knows (the template's, verl's GSM8K and MATH ones), so the instruction is in no segment,
    as for any other input. "question" scores the template around that question instead.
    A row without a chat: "conversation" scores and trains on template.messages(question);
    "question" scores that and trains on one user turn, the question plus the instruction
    (the paper's split: its scoring template, a bare training prompt)."""
    if train_prompt not in TRAIN_PROMPTS:
        raise InputError(f"`train_prompt` {train_prompt!r}: use one of {', '.join(TRAIN_PROMPTS)}")
    known = [i for i in (template.instruction, GSM8K_INSTRUCTION, BOXED_INSTRUCTION) if i]
    out: list[Conversation | None] = []
    for i, q in enumerate(questions):
        chat = chats[i] if chats is not None else None
        if q is None:
            out.append(None)
        elif isinstance(chat, list) and chat:
            q = split_instruction(q, known)
            scored = chat if train_prompt == "conversation" else template.messages(q)
            out.append(Conversation(scored, q, chat, from_input=True))
        else:
            scored = template.messages(q)
            trained = (
                scored
                if train_prompt == "conversation"
                else [{"role": "user", "content": template.user_content(q)}]
            )
            out.append(Conversation(scored, q, trained))
        if (i + 1) % 10_000 == 0:  # advance(k): as each k rows are done
            advance(10_000)
    if len(questions) % 10_000:
        advance(len(questions) % 10_000)
    return out


def split_instruction(text: str, instructions: list[str]) -> str:
    """`text` less a trailing instruction (and the whitespace before it), if it ends with one."""
    for instruction in instructions:
        if text.endswith(instruction) and (question := text[: -len(instruction)].rstrip()):
            return question
    return text


@dataclass(frozen=True)
class Segments:
    """Token ids of one scoring conversation up to the end of the question.

    input_ids[:p] is P, input_ids[p:] is Q (q = len(input_ids) - p); total_tokens is the
    length of the whole rendered conversation (what --max-tokens limits). tail: the ids after
    the question to the end of the rendered prompt (instruction, end of turn, generation
    prompt), so input_ids + tail is the whole prompt; only --keep-states runs them.
    """

    input_ids: list[int]
    p: int
    total_tokens: int
    tail: list[int] = field(default_factory=list)

    @property
    def q(self) -> int:
        return len(self.input_ids) - self.p


# Stands in for the last user turn's content to find where that turn starts in the text.
_SENTINEL = "GAINCURATELASTUSERTURNSTARTSHERE"


def render_chat(
    tokenizer: Any, messages: list[dict[str, Any]], question: str, **kwargs: Any
) -> tuple[str, int, int]:
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
        probe = [*messages[:last], {**messages[last], "content": _SENTINEL}, *messages[last + 1 :]]
        turn = tokenizer.apply_chat_template(probe, tokenize=False, **kwargs).find(_SENTINEL)
    except Exception as e:  # jinja errors: a template that rejects the roles we use
        raise ModelError(
            f"the model's chat template failed to render the conversation: {e}"
        ) from None
    if (
        turn < 0
        or text[:turn] != tokenizer.apply_chat_template(probe, tokenize=False, **kwargs)[:turn]
    ):
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


def token_segments(tokenizer: Any, rendered: list[tuple[str, int, int]]) -> list[Segments | None]:
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
        out.append(
            Segments(
                list(ids[: last + 1]), p=first, total_tokens=len(ids), tail=list(ids[last + 1 :])
            )
        )
    return out


def segment_batch(
    tokenizer: Any, template: ScoringTemplate, questions: list[str]
) -> list[Segments | None]:
    """Tokenize each scoring conversation and cut it into P and Q; None where Q is not found."""
    return token_segments(tokenizer, [render(tokenizer, template, q) for q in questions])


def conversation_segments(
    tokenizer: Any,
    convs: list[Conversation],
    advance: Callable[[int], None] = lambda n: None,
    chunk: int = 4096,
) -> list[Segments | None]:
    """Each row's scored conversation tokenized and cut into P and Q (None: Q not found),
    `chunk` rows at a time (a million rows take minutes: advance(k) as each k are done)."""
    out: list[Segments | None] = []
    for a in range(0, len(convs), chunk):
        block = convs[a : a + chunk]
        out += token_segments(
            tokenizer, [render_chat(tokenizer, c.scored, c.question) for c in block]
        )
        advance(len(block))
    return out


def template_hash(tokenizer: Any) -> str:
    return hashlib.sha256((tokenizer.chat_template or "").encode()).hexdigest()[:16]
