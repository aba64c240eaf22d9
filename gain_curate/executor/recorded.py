"""A run's conversations and what it records of them, for the console, the manifest and
`inspect`: the template and each row's scored and trained conversation (run_conversations,
called by prepare and again by the merge on the prepared input: the same rows, the same
answer), one line saying what is scored and what is trained (conversation_note),
signal.template (recorded_template) and signal.conversation (conversation_record)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypedDict

from gain_curate.errors import InputError
from gain_curate.scoring.config import ScoreConfig

if TYPE_CHECKING:
    import pyarrow as pa

    from gain_curate.inputs.conversation import Conversation
    from gain_curate.inputs.sources import InputSpec
    from gain_curate.inputs.template import ScoringTemplate


class ConversationRecord(TypedDict):
    """The manifest's signal.conversation, key order as written."""

    train_prompt: str
    scored: str
    trained: str
    trained_differs: bool
    rows_differing: int
    template_from: str | dict[str, str]  # per template field: "flag" | "data_source default"
    question: str
    note: str


def run_conversations(
    cfg: ScoreConfig,
    table: pa.Table,
    spec: InputSpec,
    questions: list[str | None],
    advance: Callable[[int], None] = lambda n: None,
) -> tuple[ScoringTemplate, list[Conversation | None]]:
    """The run's template (the data source's defaults where no template field was set) and,
    per input row, the conversation scored and the one trained on
    (conversation.conversations)."""
    from gain_curate.inputs.answers import input_chats
    from gain_curate.inputs.conversation import conversations
    from gain_curate.inputs.template import resolve_template

    template = resolve_template(cfg.template, cfg.template_flags, spec.data_source)
    chats = input_chats(table, spec.question_key)
    if chats is not None and cfg.train_prompt == "conversation" and cfg.template_flags:
        given = ", ".join(f"`{f}`" for f in cfg.template_flags)
        raise InputError(
            f"{given}: {spec.path or spec.source} already holds the conversation the trainer "
            "renders (its chat `prompt`), so `score` scores that very conversation; drop "
            f"{given}, or pass `train_prompt` question to score this template while the "
            "trainer sees the input's own prompt"
        )
    convs = conversations(
        template, questions, chats, train_prompt=cfg.train_prompt, advance=advance
    )
    return template, convs


def conversation_note(cfg: ScoreConfig, template: Any, convs: list[Any]) -> str:
    """One line for the console, the manifest and `inspect`: what is scored, what is trained."""
    from gain_curate.inputs.template import describe

    rows = [c for c in convs if c is not None]
    differ = sum(c.differs for c in rows)
    own = any(c.from_input for c in rows)
    scored = (
        "each row's own chat `prompt`"
        if own and cfg.train_prompt == "conversation"
        else describe(template)
    )
    if not differ:
        return f"{scored}; the `prompt` column holds this very conversation"
    trained = (
        "the input's own chat `prompt`"
        if own
        else "one user turn: the question" + (" + instruction" if template.instruction else "")
    )
    return (
        f"scored: {scored}; trained (`prompt`) on a DIFFERENT conversation in {differ:,} of "
        f"{len(rows):,} rows: {trained} (--train-prompt {cfg.train_prompt})"
    )


def recorded_template(cfg: ScoreConfig, template: Any, convs: list[Any]) -> Any:
    """signal.template: what surrounded each question when it was scored. An input's own chat
    scored as it is has nothing around it: an empty template named "input" (its question
    then is the whole last user turn, which is what `validate --run` rebuilds from it)."""
    from gain_curate.inputs.template import ScoringTemplate

    if cfg.train_prompt == "conversation" and any(c is not None and c.from_input for c in convs):
        return ScoringTemplate(
            system_prompt=None, few_shot=(), instruction=None, few_shot_name="input"
        )
    return template


def conversation_record(cfg: ScoreConfig, template: Any, convs: list[Any]) -> ConversationRecord:
    """signal.conversation: whether the trainer's `prompt` is the conversation that was scored
    (one conversation, docs/design.md), how the template was chosen, and one line saying so."""
    from gain_curate.inputs.template import TEMPLATE_FIELDS

    rows = [c for c in convs if c is not None]
    own = any(c.from_input for c in rows)
    flags = cfg.template_flags
    return {
        "train_prompt": cfg.train_prompt,
        "scored": "the input's own chat prompt"
        if own and cfg.train_prompt == "conversation"
        else "template",
        "trained": "the input's own chat prompt"
        if own
        else ("template" if cfg.train_prompt == "conversation" else "question + instruction"),
        "trained_differs": any(c.differs for c in rows),
        "rows_differing": sum(c.differs for c in rows),
        "template_from": "as given (library call)"
        if flags is None
        else {f: "flag" if f in flags else "data_source default" for f in TEMPLATE_FIELDS},
        "question": "the last user turn's text less a trailing instruction (the template's, verl's "
        "GSM8K or MATH one)"
        if own
        else "the question column; the instruction is in no segment",
        "note": conversation_note(cfg, template, convs),
    }
