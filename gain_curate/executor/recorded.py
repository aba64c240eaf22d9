"""What a run records of its conversations, for the console, the manifest and `inspect`:
one line saying what is scored and what is trained (conversation_note), signal.template
(recorded_template) and signal.conversation (conversation_record)."""

from __future__ import annotations

from typing import Any

from gain_curate.scoring.config import ScoreConfig


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


def conversation_record(cfg: ScoreConfig, template: Any, convs: list[Any]) -> dict[str, Any]:
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
