"""Per-row text from an input table: column values (dotted keys reach into structs), the
question text, the ground truth extracted from GSM8K (`#### n`) or MATH (`\\boxed{}`)
answers, and the chat the input already holds for the trainer."""

from __future__ import annotations

import re
from typing import Any

import pyarrow as pa

_GSM8K_ANSWER = re.compile(r"####\s*([-+]?[\d,]*\.?\d+)\s*\Z")


def column_values(table: pa.Table, key: str) -> list[Any]:
    """The values of a column, a dotted key reaching into struct columns."""
    head, *rest = [key] if key in table.column_names else key.split(".")
    values = table.column(head).to_pylist()
    for part in rest:
        values = [v.get(part) if isinstance(v, dict) else None for v in values]
    return values


def question(value: Any) -> tuple[str | None, str | None]:
    """(question text verbatim, problem); a chat list gives its LAST user turn's content."""
    if isinstance(value, list) and value and all(isinstance(m, dict) for m in value):
        users = [m for m in value if str(m.get("role", "")).lower() == "user"]
        value = users[-1].get("content") if users else None
    if value is None:
        return None, "missing_question"
    if not isinstance(value, str):
        return None, "non_string_question"
    if not value.strip():
        return None, "empty_question"
    return value, None


def gsm8k_numbers(answers: list[str | None]) -> list[str | None] | None:
    """'... #### 1,234' -> '1234' (verl's GSM8K ground truth: no commas, no plus sign), or
    None unless EVERY present answer ends that way."""
    found = [(a, _GSM8K_ANSWER.search(a) if a is not None else None) for a in answers]
    if all(a is None for a, _ in found) or any(a is not None and m is None for a, m in found):
        return None
    return [m.group(1).replace(",", "").lstrip("+") if m else None for _, m in found]  # as verl's


def boxed_answers(answers: list[str | None]) -> list[str | None] | None:
    """Each answer's last \\boxed{...}, or None unless EVERY present answer has one."""
    found = [a for a in answers if a is not None]
    if not found or not all("\\boxed" in a for a in found):
        return None
    return [_last_boxed(a) if a is not None else None for a in answers]


def input_chats(table: pa.Table, question_key: str) -> list[Any] | None:
    """Per row, the conversation the input already holds for the trainer: its chat `prompt`
    column, else a chat question column; None when it holds none (rows: None where missing)."""
    if "prompt" in table.column_names and _is_chat_type(table.schema.field("prompt").type):
        return table.column("prompt").to_pylist()
    values = column_values(table, question_key)
    if any(isinstance(v, list) for v in values):
        return [v if isinstance(v, list) else None for v in values]
    return None


def _is_chat_type(t: pa.DataType) -> bool:
    return pa.types.is_list(t) and pa.types.is_struct(t.value_type)


def _last_boxed(text: str) -> str | None:
    """Content of the last complete \\boxed{...} (nested braces kept), or of `\\boxed 5`; a
    last box left open (a completion cut off inside it) gives way to the one before it."""
    end = len(text)
    while (start := text.rfind("\\boxed", 0, end)) >= 0:
        found = _boxed_at(text, start + len("\\boxed"))
        if found is not None:
            return found
        end = start
    return None


def _boxed_at(text: str, i: int) -> str | None:
    """The box whose argument starts at text[i] (after `\\boxed`); None when it never closes."""
    while i < len(text) and text[i] == " ":
        i += 1
    if i < len(text) and text[i] != "{":
        return re.split(r"[\s$]", text[i:], maxsplit=1)[0] or None
    depth = 0
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i + 1 : j]
    return None  # unbalanced braces
