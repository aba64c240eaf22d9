"""Input datasets -> one Arrow table plus per-row question / answer text for scoring.

`load_source(data)` reads a local file (.jsonl, .json, .parquet, .csv), a `save_to_disk`
folder, a preset (gsm8k, math, champ) or a hub id (`owner/name[@revision]`, needs the
optional `datasets` package). It keeps every column with its Arrow type, finds the question
and answer columns (dotted keys reach into structs) and records in `InputSpec` what the
manifest needs. Bad input raises a one-line `InputError`.

    src = load_source("../shared/data/verl/gsm8k_train.parquet", limit=100)
    src.questions[0], src.answers[0], src.spec.question_key   # ..., "72", "prompt"

data_source (what verl's reward router dispatches on) is `data_source=` (--data-source) when
given, else the input's own data_source column, the preset's or hub dataset's id, a known
dataset recognised by its shape (GSM8K, MATH: the names verl's default reward knows), else
the file's name; `InputSpec.data_source_from` says which.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import json
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from gain_curate.errors import InputError

QUESTION_KEYS = ("question", "problem", "prompt", "query", "input")
ANSWER_KEYS = ("answer", "solution", "ground_truth", "reward_model.ground_truth")
VERL_COLUMNS = ("data_source", "prompt", "ability", "reward_model", "extra_info")
EXTENSIONS = (".jsonl", ".json", ".parquet", ".csv")
OFFLINE_HINT = "give --data path/to/file.jsonl|.json|.parquet|.csv (a local copy) instead"
CHAMP_HINT = "pip install --no-deps champ-dataset==1.0.0"

_GSM8K_ANSWER = re.compile(r"####\s*([-+]?[\d,]*\.?\d+)\s*\Z")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")


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
    split: str = "train",
    limit: int | None = None,
    data_source: str | None = None,
) -> SourceData:
    """Read `data` (path, preset or hub id), pick its question and answer columns and name
    its data_source (`data_source` when given)."""
    if limit is not None and limit < 1:
        raise InputError(f"--limit must be at least 1, got {limit}")
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
            f"no question column in {where} ({looked}); {listing}; pass --question-key"
        )
    if a_key is None:
        order = ANSWER_KEYS[-1:] + ANSWER_KEYS[:-1] if is_verl else ANSWER_KEYS
        a_key = next((k for k in order if k in columns), None)
    for key, flag in ((q_key, "--question-key"), (a_key, "--answer-key")):
        if key is not None and key not in columns:
            raise InputError(f"column '{key}' ({flag}) not found in {where}; {listing}")

    questions, problems = zip(*map(_question, column_values(table, q_key)), strict=True)
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
    elif (numbers := _gsm8k_numbers(answers)) is not None:
        answers, extraction = numbers, "gsm8k_hashes"
    elif not is_verl and (boxed := _boxed_answers(answers)) is not None:
        answers, extraction = boxed, "last_boxed"  # solutions: the reward compares the final answer

    name, how = _data_source(data_source, raw, table, q_key, extraction)
    spec = InputSpec(
        data, raw.kind, raw.path, raw.hub_id, raw.revision, split, q_key, a_key, extraction,
        raw.content_hash, table.num_rows, rows_total, name, is_verl, how,
    )  # fmt: skip
    return SourceData(table, list(questions), answers, problems, spec)


GSM8K_SOURCE = "openai/gsm8k"
MATH_SOURCE = "DigitalLearningGmbH/MATH-lighteval"
MATH_COLUMNS = ("level", "type")


def _data_source(flag: str | None, raw: _Raw, table: pa.Table, q_key: str, extraction: str | None) -> tuple[str, str]:  # fmt: skip
    """(data_source, how it was chosen): the flag; the input's own column; the preset's or
    hub dataset's id; GSM8K or MATH recognised by their shape; else the file's name."""
    if flag is not None:
        if not flag.strip():
            raise InputError("--data-source is empty: give the name your trainer's reward dispatches on, e.g. openai/gsm8k")  # fmt: skip
        return flag, "--data-source"
    if "data_source" in table.column_names:
        names = Counter(
            v for v in table.column("data_source").to_pylist() if isinstance(v, str) and v
        )
        if names:
            (top, _), n = names.most_common(1)[0], len(names)
            return top, "the input's data_source column" + (f" ({n} names; rows without one get {top})" if n > 1 else "")  # fmt: skip
    if raw.kind == "preset":
        if raw.preset is PRESETS["champ"]:
            return raw.data_source, "the champ preset (free-form answers: verl has no default reward for them)"  # fmt: skip
        return raw.data_source, "the preset's hub id"
    if raw.kind == "hub":
        return raw.data_source, "the hub dataset's id"
    if extraction == "gsm8k_hashes":
        return GSM8K_SOURCE, "recognised as GSM8K: every answer ends in `#### <number>`"
    if extraction == "last_boxed":
        return MATH_SOURCE, "recognised as MATH: every answer holds a \\boxed{} final answer"
    if q_key == "problem" and any(c in table.column_names for c in MATH_COLUMNS):
        return MATH_SOURCE, f"recognised as MATH: a problem column and {'/'.join(c for c in MATH_COLUMNS if c in table.column_names)}"  # fmt: skip
    return raw.data_source, "the file's name (no dataset verl's default reward knows was recognised; --data-source sets it)"  # fmt: skip


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
    "gsm8k": _Preset("openai/gsm8k", "main", "740312add88f781978c0658806c59bc2815b9866",
                     "question", "answer", None),
    "math": _Preset(_MATH_HUB, "default", "0530c78699ea5e8eb5530600900e1f328b48acad",
                    "problem", "solution", "last_boxed"),
    "champ": _Preset(None, None, None, "problem", "answer", None),
}  # fmt: skip
_COMMIT = re.compile(r"[0-9a-f]{40}")


@dataclass
class _Raw:  # what reading found, before any column is picked
    table: pa.Table
    kind: str
    path: str | None
    content_hash: str
    data_source: str
    hub_id: str | None = None
    revision: str | None = None
    preset: _Preset | None = None


def _read(data: str, split: str) -> _Raw:
    """Resolution order: existing local path, preset, hub id."""
    path = Path(data).expanduser()
    if path.exists():
        return _read_local(path.resolve(), split)
    name = data.strip().lower()
    if name == "champ":
        return _read_champ()
    if name in PRESETS:
        preset = PRESETS[name]
        raw = _read_hub(preset.hub_id or "", preset.config, preset.revision, split)
        raw.kind, raw.preset = "preset", preset
        return raw
    looks_like_file = path.suffix.lower() in EXTENSIONS or data.startswith((".", "/", "~"))
    if _HUB_ID.match(data) and not looks_like_file:
        hub_id, _, revision = data.partition("@")
        return _read_hub(hub_id, None, revision or None, split)
    if looks_like_file or "/" in data or "\\" in data:
        raise InputError(f"file not found: {data} (check the path given to --data)")
    raise InputError(
        f"no such file or preset: {data} (presets: {', '.join(PRESETS)}; or give a path to a "
        ".jsonl, .json, .parquet, .csv file or a save_to_disk folder)"
    )


def _read_local(path: Path, split: str) -> _Raw:
    if path.is_dir():
        table = _read_arrow_dir(path, split)
        return _Raw(table, "arrow_dir", str(path), _table_sha256(table), path.name)
    ext = path.suffix.lower()
    if ext not in EXTENSIONS:
        supported = f"{', '.join(EXTENSIONS)}, or a datasets save_to_disk folder"
        raise InputError(
            f"unsupported file type '{ext or path.name}': {path} (supported: {supported}); convert it or rename it"
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
            f"cannot read {path} as {ext}: {_one_line(e)}; check that the file is a valid {ext[1:]} file"
        ) from e
    return _Raw(table, ext[1:], str(path), digest, _file_data_source(path))


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
                f'{path}: item {bad + 1} of the JSON array is not an object; each item must be {{"question": ..., "answer": ...}}'
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
                f"{path} line {n}: expected a JSON object, got {type(row).__name__}; fix or remove the line"
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
                msg = (f"{path}: column '{key}' mixes types Arrow cannot unify ({_one_line(e)}); "
                       f"give every row's '{key}' the same type")  # fmt: skip
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
        raise InputError(f"cannot read {path} as Arrow IPC: {_one_line(e)}") from e


def _read_ipc(file: Path) -> pa.Table:
    """datasets writes the IPC stream format; accept the file format too."""
    try:
        with pa.memory_map(str(file)) as source:
            return pa.ipc.open_stream(source).read_all()
    except pa.ArrowInvalid:
        with pa.memory_map(str(file)) as source:
            return pa.ipc.open_file(source).read_all()


def _read_champ() -> _Raw:
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
    return _Raw(table, "preset", str(path), _file_sha256(path), "champ", preset=PRESETS["champ"])


def _read_hub(hub_id: str, config: str | None, revision: str | None, split: str) -> _Raw:
    """`datasets` loads (and caches) the split; the manifest records the commit it resolved."""
    what = f"cannot load '{hub_id}' from the Hugging Face hub"
    try:
        datasets = importlib.import_module("datasets")
    except ImportError:  # a broken install: datasets is a dependency
        why = "the `datasets` package is missing (pip install datasets)"
        raise InputError(f"{what}: {why}, or {OFFLINE_HINT}") from None
    try:
        with _hub_session(datasets):
            builder = datasets.load_dataset_builder(hub_id, config, revision=revision)
            builder.download_and_prepare()
            ds = builder.as_dataset(split=split)
    except Exception as e:  # offline, unknown id, config or split: all one line
        raise InputError(f"{what}: {_hub_why(e, split)}") from e
    table = ds.with_format("arrow")[:]
    commit = builder.hash if isinstance(builder.hash, str) and _COMMIT.fullmatch(builder.hash) else revision  # fmt: skip
    return _Raw(table, "hub", None, _table_sha256(table), hub_id, hub_id, commit)


@contextlib.contextmanager
def _hub_session(datasets: Any) -> Iterator[None]:
    """Quiet hub calls that fail fast: when the hub's host does not resolve, go offline at
    once (a cached copy still loads) instead of five logged retries over ~20 seconds."""
    import logging

    from huggingface_hub import constants

    offline = constants.HF_HUB_OFFLINE or not _resolves(constants.ENDPOINT)
    saved = constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE
    loggers = [logging.getLogger(name) for name in ("huggingface_hub", "datasets")]
    levels = [lg.level for lg in loggers]
    constants.HF_HUB_OFFLINE = datasets.config.HF_HUB_OFFLINE = offline
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE = saved
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _resolves(url: str, timeout: float = 5.0) -> bool:
    """Whether the URL's host resolves within `timeout` seconds (DNS only, no request)."""
    import socket
    import threading
    from urllib.parse import urlparse

    host, found = urlparse(url).hostname, []
    if not host:
        return False

    def lookup() -> None:
        with contextlib.suppress(OSError):
            found.append(socket.getaddrinfo(host, 443))

    worker = threading.Thread(target=lookup, daemon=True)
    worker.start()
    worker.join(timeout)
    return bool(found)


def _hub_why(e: Exception, split: str) -> str:
    """What went wrong loading from the hub, and what to do, in one line."""
    text = _one_line(e)
    if isinstance(e, ConnectionError) or "OfflineModeIsEnabled" in text or "not cached" in text:
        return f"the hub cannot be reached (offline or no network) and no copy is cached; {OFFLINE_HINT}"  # fmt: skip
    if type(e).__name__ == "DatasetNotFoundError":
        return f"no such dataset, or it is gated or private; check the id, or {OFFLINE_HINT}"
    if "split" in text.lower() and split in text:
        return f"no split '{split}' ({text}); pass --split"
    return f"{type(e).__name__}: {text}; check the id and config, or {OFFLINE_HINT}"


def column_values(table: pa.Table, key: str) -> list[Any]:
    """The values of a column, a dotted key reaching into struct columns."""
    head, *rest = [key] if key in table.column_names else key.split(".")
    values = table.column(head).to_pylist()
    for part in rest:
        values = [v.get(part) if isinstance(v, dict) else None for v in values]
    return values


def _flat_names(schema: pa.Schema) -> list[str]:
    """Top-level column names, then every struct field as a dotted key."""
    names, todo = list(schema.names), [(f.name, f.type) for f in schema]
    while todo:
        prefix, typ = todo.pop(0)
        if pa.types.is_struct(typ):
            names += [f"{prefix}.{f.name}" for f in typ]
            todo += [(f"{prefix}.{f.name}", f.type) for f in typ]
    return names


def _question(value: Any) -> tuple[str | None, str | None]:
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


def _gsm8k_numbers(answers: list[str | None]) -> list[str | None] | None:
    """'... #### 1,234' -> '1234' (verl's GSM8K ground truth: no commas, no plus sign), or
    None unless EVERY present answer ends that way."""
    found = [(a, _GSM8K_ANSWER.search(a) if a is not None else None) for a in answers]
    if all(a is None for a, _ in found) or any(a is not None and m is None for a, m in found):
        return None
    return [m.group(1).replace(",", "").lstrip("+") if m else None for _, m in found]  # as verl's


def _boxed_answers(answers: list[str | None]) -> list[str | None] | None:
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
    """Content of the last \\boxed{...} (nested braces kept), or of `\\boxed 5`."""
    start = text.rfind("\\boxed")
    if start < 0:
        return None
    i = start + len("\\boxed")
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


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    try:
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    except OSError as e:  # permission denied, a special file, ...
        raise InputError(f"cannot read {path}: {e.strerror or e}; check its permissions") from e
    return digest.hexdigest()


def _table_sha256(table: pa.Table) -> str:
    """sha256 of the table's Arrow IPC stream (one chunk per column, so chunking is canonical)."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table.combine_chunks())
    return hashlib.sha256(sink.getvalue()).hexdigest()


def _one_line(e: BaseException) -> str:
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
