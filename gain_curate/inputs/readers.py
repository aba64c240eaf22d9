"""Reading local inputs into one Arrow table: .jsonl, .json, .parquet and .csv files,
`datasets.save_to_disk` folders and the champ preset; the presets; content hashes.

What reading finds is a `Raw` (the table, its kind, path, hash and default data_source),
before any column is picked (sources.py does that).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from gain_curate.errors import InputError

# The top-level columns of verl's RLHFDataset schema, in its order.
VERL_COLUMNS = ("data_source", "prompt", "ability", "reward_model", "extra_info")

EXTENSIONS = (".jsonl", ".json", ".parquet", ".csv")
CHAMP_HINT = "pip install --no-deps champ-dataset==1.0.0"

GSM8K_SOURCE = "openai/gsm8k"
MATH_SOURCE = "DigitalLearningGmbH/MATH-lighteval"


@dataclass(frozen=True)
class _Preset:
    hub_id: str | None  # None: shipped locally (champ)
    config: str | None
    revision: str | None  # a commit of the hub repo: the preset is the same rows everywhere
    question_key: str
    answer_key: str
    extraction: str | None  # "last_boxed" reduces a solution to its final \boxed{...}


_MATH_HUB = MATH_SOURCE
PRESETS = {
    "gsm8k": _Preset(
        "openai/gsm8k",
        "main",
        "740312add88f781978c0658806c59bc2815b9866",
        "question",
        "answer",
        None,
    ),
    "math": _Preset(
        _MATH_HUB,
        "default",
        "0530c78699ea5e8eb5530600900e1f328b48acad",
        "problem",
        "solution",
        "last_boxed",
    ),
    "champ": _Preset(None, None, None, "problem", "answer", None),
}


@dataclass
class Raw:  # what reading found, before any column is picked
    table: pa.Table
    kind: str
    path: str | None
    content_hash: str
    data_source: str
    hub_id: str | None = None
    revision: str | None = None
    preset: _Preset | None = None


def read_local(path: Path, split: str) -> Raw:
    if path.is_dir():
        table = _read_arrow_dir(path, split)
        return Raw(table, "arrow_dir", str(path), table_sha256(table), path.name)
    ext = path.suffix.lower()
    if ext not in EXTENSIONS:
        supported = f"{', '.join(EXTENSIONS)}, or a datasets save_to_disk folder"
        raise InputError(
            f"unsupported file type '{ext or path.name}': {path} (supported: {supported}); "
            "convert it or rename it"
        )
    digest = _file_sha256(path)  # first full read: also surfaces permission errors
    if path.stat().st_size == 0:
        raise InputError(f"{path} has no rows (empty file); give a dataset with at least one row")
    try:
        if ext in (".jsonl", ".json"):
            table = _rows_to_table(_read_json_rows(path), path)
        elif ext == ".parquet":
            table = pq.read_table(path)
        else:
            table = pacsv.read_csv(path)
    except (pa.ArrowException, OSError, UnicodeDecodeError) as e:
        raise InputError(
            f"cannot read {path} as {ext}: {one_line(e)}; "
            f"check that the file is a valid {ext[1:]} file"
        ) from e
    return Raw(table, ext[1:], str(path), digest, _file_data_source(path))


def _read_json_rows(path: Path) -> list[Any]:
    """A JSON array of objects, one JSON object (one row), or JSON lines (.jsonl or .json)."""
    text = path.read_text(encoding="utf-8-sig")  # UnicodeDecodeError: caught by the caller
    if path.suffix.lower() == ".json" and text.lstrip().startswith("{"):
        with contextlib.suppress(json.JSONDecodeError):  # else: JSON lines, checked below
            return [json.loads(text)]
    if path.suffix.lower() == ".json" and text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            raise InputError(f"{path} line {e.lineno}: invalid JSON ({e.msg}); fix the file") from e
        bad = next((i for i, r in enumerate(rows) if not isinstance(r, dict)), None)
        if bad is not None:
            raise InputError(
                f"{path}: item {bad + 1} of the JSON array is not an object; "
                'each item must be {"question": ..., "answer": ...}'
            )
        return rows
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(row := json.loads(line))
        except json.JSONDecodeError as e:
            raise InputError(f"{path} line {n}: invalid JSON ({e.msg}); fix or remove it") from e
        if not isinstance(row, dict):
            raise InputError(
                f"{path} line {n}: expected a JSON object, got {type(row).__name__}; "
                "fix or remove the line"
            )
    return rows


NONSTRING_META = b"gain_curate.nonstring_rows"


def _rows_to_table(rows: list[dict[str, Any]], path: Path) -> pa.Table:
    """Columns in first-seen key order; each type inferred over ALL rows.

    A text column with some non-text values (a number where a question belongs) becomes a
    text column, the odd values written as JSON text; their rows are listed in the schema
    metadata so an odd QUESTION is a per-row problem instead of failing the whole file.
    """
    keys = list(dict.fromkeys(k for row in rows for k in row))
    columns, odd = {}, {}
    for key in keys:
        values = [row.get(key) for row in rows]
        try:
            columns[key] = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            if not any(isinstance(v, str) for v in values):
                msg = (
                    f"{path}: column '{key}' mixes types Arrow cannot unify ({one_line(e)}); "
                    f"give every row's '{key}' the same type"
                )
                raise InputError(msg) from e
            odd[key] = [i for i, v in enumerate(values) if v is not None and not isinstance(v, str)]
            columns[key] = pa.array(
                [v if v is None or isinstance(v, str) else json.dumps(v) for v in values],
                pa.string(),
            )
    table = pa.table(columns)
    return table.replace_schema_metadata({NONSTRING_META: json.dumps(odd)}) if odd else table


def _read_arrow_dir(path: Path, split: str) -> pa.Table:
    """A `datasets.save_to_disk` folder: data-*.arrow IPC files, splits as subfolders."""
    if (path / "dataset_dict.json").is_file():
        splits = sorted(p.name for p in path.iterdir() if (p / "state.json").is_file())
        if split not in splits:
            raise InputError(f"no split '{split}' in {path} (splits: {', '.join(splits)})")
        path = path / split
    files = sorted(path.glob("data-*.arrow"))  # data-00000-of-0000N: sorted = row order
    if not files:
        msg = f"{path} is a folder but not a save_to_disk folder (no data-*.arrow files)"
        raise InputError(f"{msg}; give a file or a datasets save_to_disk folder")
    try:
        return pa.concat_tables([_read_ipc(f) for f in files])
    except (pa.ArrowException, OSError) as e:
        raise InputError(f"cannot read {path} as Arrow IPC: {one_line(e)}") from e


def _read_ipc(file: Path) -> pa.Table:
    """datasets writes the IPC stream format; accept the file format too."""
    try:
        with pa.memory_map(str(file)) as source:
            return pa.ipc.open_stream(source).read_all()
    except pa.ArrowInvalid:
        with pa.memory_map(str(file)) as source:
            return pa.ipc.open_file(source).read_all()


def read_champ() -> Raw:
    spec = importlib.util.find_spec("champ_dataset")  # locate without importing
    folders = (spec.submodule_search_locations or []) if spec else []
    path = Path(folders[0] if folders else ".") / "dataset_files" / "v0.json"
    if not path.is_file():
        raise InputError(f"the champ preset needs the champ-dataset package: {CHAMP_HINT}")
    problems = json.loads(path.read_text(encoding="utf-8"))["problems"]
    # The final answer is each problem's own `_answer`; its `solution` holds only steps.
    cols = dict(identifier="identifier", problem="_text", answer="_answer", category="category")
    rows = [{col: p.get(key) for col, key in cols.items()} for p in problems.values()]
    table = _rows_to_table(rows, path)
    return Raw(table, "preset", str(path), _file_sha256(path), "champ", preset=PRESETS["champ"])


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    try:
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    except OSError as e:  # permission denied, a special file, ...
        raise InputError(f"cannot read {path}: {e.strerror or e}; check its permissions") from e
    return digest.hexdigest()


def table_sha256(table: pa.Table) -> str:
    """sha256 of the table's Arrow IPC stream (one chunk per column, so chunking is canonical)."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table.combine_chunks())
    return hashlib.sha256(sink.getvalue()).hexdigest()


def one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def _file_data_source(path: Path) -> str:
    """A file's default data_source: its stem, or parent/stem when the stem is a split name."""
    if (
        path.stem.lower() in {"train", "test", "validation", "valid", "dev", "eval"}
        and path.parent.name
    ):
        return f"{path.parent.name}/{path.stem}"
    return path.stem
