"""Input datasets -> one Arrow table plus per-row question / answer text for scoring.

`load_source(data)` reads a local file (.jsonl, .json, .parquet, .csv), a `save_to_disk`
folder, a preset (gsm8k, math, champ) or a hub id (`owner/name[@revision]`, needs the
optional `datasets` package). It keeps every column with its Arrow type, finds the question
and answer columns (dotted keys reach into structs) and records in `InputSpec` what the
manifest needs. Bad input raises a one-line `InputError`.

    src = load_source("data/gsm8k_train.parquet", limit=100)  # verl's GSM8K Parquet
    src.questions[0], src.answers[0], src.spec.question_key   # ..., "72", "prompt"

data_source (what verl's reward router dispatches on) is `data_source=` (--data-source) when
given, else the input's own data_source column, the preset's or hub dataset's id, a known
dataset recognised by its shape (GSM8K, MATH: the names verl's default reward knows), else
the file's name; `InputSpec.data_source_from` says which.

The split (extra_info.split, the shards' names, verl's train_files or val_files) is `split=`
(--split) when given, else the file's name (test.jsonl, gsm8k_test.parquet: test; val, dev,
eval, validation likewise), else train (presets and hub datasets: their train split);
`InputSpec.split_from` says which (input_split).

Reading local files and presets is in readers.py, the hub in hub.py, per-row question and
answer text in answers.py.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from gain_curate.errors import InputError
from gain_curate.inputs.answers import (
    _last_boxed,
    boxed_answers,
    column_values,
    gsm8k_numbers,
    question,
)
from gain_curate.inputs.hub import read_hub
from gain_curate.inputs.readers import (
    EXTENSIONS,
    GSM8K_SOURCE,
    MATH_SOURCE,
    NONSTRING_META,
    PRESETS,
    VERL_COLUMNS,
    Raw,
    read_champ,
    read_local,
)

QUESTION_KEYS = ("question", "problem", "prompt", "query", "input")
ANSWER_KEYS = ("answer", "solution", "ground_truth", "reward_model.ground_truth")

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")
# A file named after one of these (its stem's first or last word) holds that split.
SPLIT_NAMES = ("train", "test", "validation", "valid", "val", "dev", "eval")


@dataclass(frozen=True)
class InputSpec:
    """What the manifest records about the input."""

    source: str  # the --data value as given
    kind: str  # "preset" | "hub" | "jsonl" | "json" | "parquet" | "csv" | "arrow_dir"
    path: str | None  # resolved absolute local path, None for hub
    hub_id: str | None
    revision: str | None
    split: str
    question_key: str  # column actually used, dotted for nested
    answer_key: str | None
    answer_extraction: str | None  # "gsm8k_hashes" | "last_boxed" | None
    content_hash: str  # sha256 of the file bytes, or of the table's Arrow IPC stream
    rows: int  # after --limit
    rows_total: int  # before --limit
    data_source: str  # the verl data_source written for rows lacking one (all rows: --data-source)
    is_verl_schema: bool
    data_source_from: str = ""  # how data_source was chosen, in words
    split_from: str = ""  # how split was chosen, in words (input_split)


@dataclass
class SourceData:
    table: pa.Table  # first `limit` input rows, all original columns and types
    questions: list[str | None]  # verbatim question text, None where unusable
    answers: list[str | None]  # ground truth after extraction, None if absent
    problems: list[str | None]  # why a row cannot be scored, else None
    spec: InputSpec


def load_source(
    data: str,
    *,
    question_key: str | None = None,
    answer_key: str | None = None,
    split: str | None = None,
    limit: int | None = None,
    data_source: str | None = None,
) -> SourceData:
    """Read `data` (path, preset or hub id), pick its question and answer columns and name
    its data_source (`data_source` when given) and its split (`split` when given)."""
    if limit is not None and limit < 1:
        raise InputError(f"`limit` must be at least 1, got {limit}")
    implied, split_from = input_split(data, None)
    if split is None or split == implied:
        split = implied
    else:
        split_from = "--split"
    raw = _read(data, split)
    preset, where, rows_total = raw.preset, raw.path or raw.hub_id or data, raw.table.num_rows
    if rows_total == 0:
        raise InputError(f"{where} has no rows; give a dataset with at least one row")
    table = raw.table.slice(0, limit) if limit is not None else raw.table
    names = set(table.column_names)
    is_verl = all(c in names for c in VERL_COLUMNS)
    q_key = question_key or (preset.question_key if preset else None)
    a_key = answer_key or (preset.answer_key if preset else None)
    columns = _flat_names(table.schema)  # top-level names, then dotted struct fields
    listing = f"columns: {', '.join(columns)}"
    if q_key is None and (q_key := next((k for k in QUESTION_KEYS if k in names), None)) is None:
        looked = f"looked for {', '.join(QUESTION_KEYS)}"
        raise InputError(
            f"no question column in {where} ({looked}); {listing}; pass `question_key`"
        )
    if a_key is None:
        order = ANSWER_KEYS[-1:] + ANSWER_KEYS[:-1] if is_verl else ANSWER_KEYS
        a_key = next((k for k in order if k in columns), None)
    for key, flag in ((q_key, "`question_key`"), (a_key, "`answer_key`")):
        if key is not None and key not in columns:
            raise InputError(f"column '{key}' ({flag}) not found in {where}; {listing}")

    questions, problems = zip(*map(question, column_values(table, q_key)), strict=True)
    problems = list(problems)
    odd = json.loads((table.schema.metadata or {}).get(NONSTRING_META, b"{}"))
    for i in odd.get(q_key, []):
        if i < table.num_rows:
            problems[i] = "non_string_question"
    answers = column_values(table, a_key) if a_key else [None] * table.num_rows
    answers = [a if a is None or isinstance(a, str) else str(a) for a in answers]  # ints, floats
    extraction = preset.extraction if preset and not answer_key else None
    if extraction == "last_boxed":
        answers = [_last_boxed(a) if a is not None else None for a in answers]
    elif (numbers := gsm8k_numbers(answers)) is not None:
        answers, extraction = numbers, "gsm8k_hashes"
    elif not is_verl and (boxed := boxed_answers(answers)) is not None:
        answers, extraction = boxed, "last_boxed"  # solutions: the reward compares the final answer

    name, how = _data_source(data_source, raw, table, q_key, extraction)
    spec = InputSpec(
        data,
        raw.kind,
        raw.path,
        raw.hub_id,
        raw.revision,
        split,
        q_key,
        a_key,
        extraction,
        raw.content_hash,
        table.num_rows,
        rows_total,
        name,
        is_verl,
        how,
        split_from,
    )
    return SourceData(table, list(questions), answers, problems, spec)


def input_split(data: str, split: str | None) -> tuple[str, str]:
    """(the split, how it was chosen): `split` when given; else a .jsonl/.json/.parquet/.csv
    file's name when its stem's first or last word is a split name (test.jsonl,
    gsm8k_test.parquet, test-00000-of-00001.parquet: test); else train. Reads nothing."""
    if split is not None:
        return split, "--split"
    path = Path(data).expanduser()
    if path.suffix.lower() in EXTENSIONS:
        words = [w for w in re.split(r"[\s_.-]+", path.stem.lower()) if w]
        for word in words[:1] + words[-1:]:
            if word in SPLIT_NAMES:
                return word, f"the file's name ({path.name}; --split sets it)"
    return "train", "the default (--split sets it)"


MATH_COLUMNS = ("level", "type")


def _data_source(
    flag: str | None, raw: Raw, table: pa.Table, q_key: str, extraction: str | None
) -> tuple[str, str]:
    """(data_source, how it was chosen): the flag; the input's own column; the preset's or
    hub dataset's id; GSM8K or MATH recognised by their shape; else the file's name."""
    if flag is not None:
        if not flag.strip():
            raise InputError(
                "`data_source` is empty: give the name your trainer's reward dispatches on, "
                "e.g. openai/gsm8k"
            )
        return flag, "--data-source"
    if "data_source" in table.column_names:
        names = Counter(
            v for v in table.column("data_source").to_pylist() if isinstance(v, str) and v
        )
        if names:
            (top, _), n = names.most_common(1)[0], len(names)
            return top, "the input's data_source column" + (
                f" ({n} names; rows without one get {top})" if n > 1 else ""
            )
    if raw.kind == "preset":
        if raw.preset is PRESETS["champ"]:
            return (
                raw.data_source,
                "the champ preset (free-form answers: verl has no default reward for them)",
            )
        return raw.data_source, "the preset's hub id"
    if raw.kind == "hub":
        return raw.data_source, "the hub dataset's id"
    if extraction == "gsm8k_hashes":
        return GSM8K_SOURCE, "recognised as GSM8K: every answer ends in `#### <number>`"
    if extraction == "last_boxed":
        return MATH_SOURCE, "recognised as MATH: every answer holds a \\boxed{} final answer"
    if q_key == "problem" and any(c in table.column_names for c in MATH_COLUMNS):
        return (
            MATH_SOURCE,
            "recognised as MATH: a problem column and "
            f"{'/'.join(c for c in MATH_COLUMNS if c in table.column_names)}",
        )
    return (
        raw.data_source,
        "the file's name (no dataset verl's default reward knows was recognised; "
        "--data-source sets it)",
    )


def _read(data: str, split: str) -> Raw:
    """Resolution order: existing local path, preset, hub id."""
    path = Path(data).expanduser()
    if path.exists():
        return read_local(path.resolve(), split)
    name = data.strip().lower()
    if name == "champ":
        return read_champ()
    if name in PRESETS:
        preset = PRESETS[name]
        raw = read_hub(preset.hub_id or "", preset.config, preset.revision, split)
        raw.kind, raw.preset = "preset", preset
        return raw
    looks_like_file = path.suffix.lower() in EXTENSIONS or data.startswith((".", "/", "~"))
    if _HUB_ID.match(data) and not looks_like_file:
        hub_id, _, revision = data.partition("@")
        return read_hub(hub_id, None, revision or None, split)
    if looks_like_file or "/" in data or "\\" in data:
        raise InputError(f"file not found: {data} (check the path given to `data`)")
    raise InputError(
        f"no such file or preset: {data} (presets: {', '.join(PRESETS)}; or give a path to a "
        ".jsonl, .json, .parquet, .csv file or a save_to_disk folder)"
    )


def _flat_names(schema: pa.Schema) -> list[str]:
    """Top-level column names, then every struct field as a dotted key."""
    names, todo = list(schema.names), [(f.name, f.type) for f in schema]
    while todo:
        prefix, typ = todo.pop(0)
        if pa.types.is_struct(typ):
            names += [f"{prefix}.{f.name}" for f in typ]
            todo += [(f"{prefix}.{f.name}", f.type) for f in typ]
    return names
