"""The ranked output table: input columns + the scored record in rank order, in verl's RL
schema (data_source, prompt, ability, reward_model, extra_info), then the input's other
columns, then the gain_* columns (record.GAIN_FIELDS). One explicit schema for the whole
run; every shard is a slice of this one table, so the shards always concatenate."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from gain_curate.inputs.readers import VERL_COLUMNS
from gain_curate.scoring.record import GAIN_FIELDS, RankedRows

# Names verl's RLHFDataset / DataProto use for itself: an input column with one of these
# names moves into extra_info as input_<name> instead of shadowing it at top level.
VERL_RESERVED = frozenset(
    {
        "index",
        "uid",
        "raw_prompt",
        "raw_prompt_ids",
        "full_prompts",
        "multi_modal_data",
        "multi_modal_inputs",
        "input_ids",
        "attention_mask",
        "position_ids",
        "tools_kwargs",
        "interaction_kwargs",
        "dummy_tensor",
    }
)
PROMPT_TYPE = pa.list_(pa.struct([("content", pa.string()), ("role", pa.string())]))
REWARD_TYPE = pa.struct([("ground_truth", pa.string()), ("style", pa.string())])


def rank_order(
    score: np.ndarray, uids: list[str], duplicate_of: list[int | None] | None = None
) -> np.ndarray:
    """Highest score first, ties by gain_uid; unscored (NaN) rows last, in input order. A
    duplicate (same question and answer as an earlier row) carries its first occurrence's
    score and ranks right after it, so the curriculum reaches both at the same time."""
    dup = duplicate_of or [None] * len(uids)
    originals = [i for i in range(len(uids)) if dup[i] is None]
    scored = [i for i in originals if np.isfinite(score[i])]
    scored.sort(key=lambda i: (-score[i], uids[i]))
    copies: dict[int, list[int]] = {}
    for i, first in enumerate(dup):
        if first is not None:
            copies.setdefault(first, []).append(i)
    unscored = [i for i in originals if not np.isfinite(score[i])]
    order = [j for i in scored + unscored for j in (i, *copies.get(i, ()))]
    return np.asarray(order, dtype=np.int64)


@dataclass(frozen=True)
class TableInputs:
    """What the output table is built from besides the input table and the ranked rows.

    Per input row, `prompts` is the conversation the trainer renders (template.conversations;
    None: no question, one empty user turn); an input's own chat `prompt` column is kept as
    it is. `questions`: the question text found in an input's own chat, written to
    extra_info.question where the input has none (what online measurement looks for).
    data_source: the input's own column (nulls filled) unless `replace_data_source`."""

    question_key: str
    answer_key: str | None
    data_source: str
    split: str
    prompts: list[list[dict[str, Any]] | None]
    questions: list[str | None] | None = None
    replace_data_source: bool = False


def build_table(
    table: pa.Table,
    rows: RankedRows,
    inputs: TableInputs,
    ranks: tuple[int, int] | None = None,
) -> pa.Table:
    """Input table + scores -> the output table in rank order, with its explicit schema:
    verl's columns, extra_info, the input's other columns, the gain_* columns.
    ranks: (first, end) builds only the rows ranked first..end-1 (one shard at a time)."""
    first, end = ranks if ranks is not None else (0, len(rows.uids))
    order = rows.order[first:end]  # the input rows at these ranks, best first
    taken = table.take(pa.array(order))
    cols = _verl_columns(table, taken, rows, inputs, order)
    extra, consumed = _extra_info(table, taken, rows, inputs, order, first)
    cols["extra_info"] = extra
    for name in table.column_names:
        if name not in VERL_COLUMNS and name not in consumed and name not in VERL_RESERVED:
            cols[name] = taken[name]
    fields = [pa.field(k, v.type) for k, v in cols.items()] + GAIN_FIELDS
    schema = pa.schema(fields)  # explicit; the input's HF metadata is dropped on purpose
    gain = _gain_columns(rows, order, first)
    return pa.Table.from_arrays([_combine(v) for v in cols.values()] + gain, schema=schema)


Column = pa.Array | pa.ChunkedArray


def _verl_columns(
    table: pa.Table, taken: pa.Table, rows: RankedRows, inputs: TableInputs, order: np.ndarray
) -> dict[str, Column]:
    """data_source, prompt, ability, reward_model: the input's own where it has them."""
    n, names = len(order), set(table.column_names)
    cols: dict[str, Column] = {}
    if "data_source" in names and not inputs.replace_data_source:
        own = pc.cast(taken["data_source"], pa.string())
        cols["data_source"] = pc.fill_null(own, pa.scalar(inputs.data_source, pa.string()))
    else:
        cols["data_source"] = pa.array([inputs.data_source] * n, pa.string())
    if "prompt" in names and _is_chat(table.schema.field("prompt").type):
        cols["prompt"] = taken["prompt"]
    else:
        empty = [{"content": "", "role": "user"}]
        msgs = [
            [
                {"content": m.get("content"), "role": m.get("role")}
                for m in (inputs.prompts[i] or empty)
            ]
            for i in order
        ]
        cols["prompt"] = pa.array(msgs, PROMPT_TYPE)
    cols["ability"] = (
        taken["ability"] if "ability" in names else pa.array(["math"] * n, pa.string())
    )
    if "reward_model" in names:
        cols["reward_model"] = taken["reward_model"]
    else:
        gts = [{"ground_truth": rows.answers[i], "style": "rule"} for i in order]
        cols["reward_model"] = pa.array(gts, REWARD_TYPE)
    return cols


def _extra_info(
    table: pa.Table,
    taken: pa.Table,
    rows: RankedRows,
    inputs: TableInputs,
    order: np.ndarray,
    first: int,
) -> tuple[pa.StructArray, set[str]]:
    """extra_info: the input's own fields, the consumed question/answer columns, reserved
    top-level names, then index (the input row), split, gain_uid and gain_rank; and the
    input columns it consumed (they leave the top level)."""
    n = len(order)
    extra: dict[str, Column] = {}
    if "extra_info" in table.column_names and pa.types.is_struct(
        table.schema.field("extra_info").type
    ):
        ei = taken["extra_info"].combine_chunks()
        for k in range(ei.type.num_fields):
            extra[ei.type.field(k).name] = ei.field(k)
    top = inputs.question_key.split(".")[0]
    consumed = {top} if top not in VERL_COLUMNS else set()
    answer_key = inputs.answer_key
    if answer_key and answer_key.split(".")[0] not in VERL_COLUMNS:
        consumed.add(answer_key.split(".")[0])
    for name in table.column_names:
        if name in consumed:
            extra.setdefault("question" if name == top else "answer", taken[name])
        elif name in VERL_RESERVED:
            extra[f"input_{name}"] = taken[name]
    questions = inputs.questions
    if questions is not None and any(q is not None for q in questions):
        extra.setdefault("question", pa.array([questions[i] for i in order], pa.string()))
    extra["index"] = pa.array(order, pa.int64())
    extra.setdefault("split", pa.array([inputs.split] * n, pa.string()))
    extra["gain_uid"] = pa.array([rows.uids[i] for i in order], pa.string())
    extra["gain_rank"] = pa.array(np.arange(first, first + n), pa.int64())
    struct = pa.StructArray.from_arrays([_combine(a) for a in extra.values()], names=list(extra))
    return struct, consumed


def _gain_columns(rows: RankedRows, order: np.ndarray, first: int) -> list[pa.Array]:
    """The gain_* columns (record.GAIN_FIELDS, in order) of the rows at these ranks."""

    def f(values: np.ndarray) -> pa.Array:
        return pa.array(values[order], pa.float64(), mask=~np.isfinite(values[order]))

    def tokens(values: np.ndarray) -> pa.Array:
        return pa.array(values[order], pa.int32(), mask=values[order] < 0)

    return [
        pa.array([rows.uids[i] for i in order], pa.string()),
        pa.array(np.arange(first, first + len(order)), pa.int64()),
        f(rows.score),
        f(rows.c_intra),
        f(rows.c_inter),
        tokens(rows.tokens_prefix),
        tokens(rows.tokens_question),
        pa.array([rows.reasons[i] for i in order], pa.string()),
        pa.array(
            [None if (j := rows.duplicate_of[i]) is None else rows.uids[j] for i in order],
            pa.string(),
        ),
    ]


def _is_chat(t: pa.DataType) -> bool:
    return pa.types.is_list(t) and pa.types.is_struct(t.value_type)


def _combine(a: pa.Array | pa.ChunkedArray) -> pa.Array:
    return a.combine_chunks() if isinstance(a, pa.ChunkedArray) else a
