"""gain_curate.inputs.sources: real data shapes, local formats, column keys, and every input
error."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import pathlib
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from gain_curate.errors import InputError
from gain_curate.inputs.answers import _last_boxed
from gain_curate.inputs.sources import load_source

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason="../shared/data not present")
needs_champ = pytest.mark.skipif(
    importlib.util.find_spec("champ_dataset") is None,
    reason="champ-dataset not installed (pip install --no-deps champ-dataset==1.0.0)",
)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# --- the three real shapes ---------------------------------------------------------------


@needs_data
def test_gsm8k_jsonl_answers_reduced_to_numbers():
    src = load_source(str(DATA / "gsm8k" / "train.jsonl"))
    spec = src.spec
    assert (spec.kind, spec.rows, spec.rows_total) == ("jsonl", 7473, 7473)
    assert (spec.question_key, spec.answer_key) == ("question", "answer")
    assert spec.answer_extraction == "gsm8k_hashes"
    assert spec.data_source == "openai/gsm8k" and not spec.is_verl_schema  # recognised: verl's name
    assert spec.data_source_from.startswith("recognised as GSM8K")
    assert src.questions[0].startswith("Natalia sold clips to 48 of her friends in April")
    assert src.answers[:3] == ["72", "10", "5"]
    assert all(a is not None and "####" not in a and "," not in a for a in src.answers)
    assert src.problems == [None] * 7473
    # The table keeps the original (unreduced) answer column.
    assert src.table.column("answer")[0].as_py().endswith("#### 72")
    digest = hashlib.sha256((DATA / "gsm8k" / "train.jsonl").read_bytes()).hexdigest()
    assert spec.content_hash == digest


@needs_data
def test_verl_parquet_keeps_columns_and_uses_ground_truth_and_last_user_turn():
    path = DATA / "verl" / "gsm8k_train.parquet"
    src = load_source(str(path), limit=5)
    original = pq.read_table(path)
    assert src.table.schema.equals(original.schema)
    assert src.table.column_names == [
        "data_source",
        "prompt",
        "ability",
        "reward_model",
        "extra_info",
    ]
    spec = src.spec
    assert spec.is_verl_schema and spec.kind == "parquet"
    assert (spec.question_key, spec.answer_key) == ("prompt", "reward_model.ground_truth")
    assert spec.answer_extraction is None
    assert src.answers == ["72", "10", "5", "42", "624"]
    user_turn = original.column("prompt")[0].as_py()[-1]["content"]
    assert src.questions[0] == user_turn
    assert src.questions[0].startswith("Natalia sold clips")
    assert (spec.rows, spec.rows_total) == (5, 7473)


@needs_data
def test_verl_math_parquet_has_extra_columns():
    src = load_source(str(DATA / "verl" / "math_train.parquet"), limit=3)
    assert src.table.column_names[:2] == ["level", "type"]
    assert src.spec.is_verl_schema and src.answers[0] == "0"
    assert src.spec.rows_total == 7500


@needs_data
def test_math_json_array():
    src = load_source(str(DATA / "math" / "train.json"))
    spec = src.spec
    assert (spec.kind, spec.rows) == ("json", 7474)
    assert (spec.question_key, spec.answer_key) == ("problem", "answer")
    assert spec.answer_extraction is None
    assert src.table.column_names == ["problem", "answer", "difficulty", "type"]
    assert src.table.schema.field("difficulty").type == pa.float64()
    assert src.questions[0].startswith("Let \\[f(x) = \\left\\{")
    assert src.answers[:2] == ["0", "98"]


@needs_data
def test_limit_takes_first_rows():
    src = load_source(str(DATA / "gsm8k" / "train.jsonl"), limit=3)
    assert (src.spec.rows, src.spec.rows_total, src.table.num_rows) == (3, 7473, 3)
    assert len(src.questions) == len(src.answers) == len(src.problems) == 3
    assert src.answers == ["72", "10", "5"]


# --- local formats -----------------------------------------------------------------------


def test_csv(tmp_path):
    path = tmp_path / "qa.csv"
    pacsv.write_csv(pa.table({"query": ["What is 2+2?", "  "], "ground_truth": [4, 5]}), path)
    src = load_source(str(path))
    assert (src.spec.kind, src.spec.question_key, src.spec.answer_key) == (
        "csv",
        "query",
        "ground_truth",
    )
    assert src.table.schema.field("ground_truth").type == pa.int64()
    assert src.answers == ["4", "5"]
    assert src.questions == ["What is 2+2?", None]
    assert src.problems == [None, "empty_question"]
    assert src.spec.data_source == "qa"


def _save_to_disk(folder: Path, table: pa.Table) -> Path:
    folder.mkdir(parents=True)
    arrow = folder / "data-00000-of-00001.arrow"
    with pa.OSFile(str(arrow), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    (folder / "dataset_info.json").write_text("{}")
    (folder / "state.json").write_text(
        json.dumps({"_data_files": [{"filename": "data-00000-of-00001.arrow"}]})
    )
    return folder


def test_save_to_disk_folder(tmp_path):
    table = pa.table({"input": ["a question?", "another one"], "answer": ["1", "#### 2"]})
    folder = _save_to_disk(tmp_path / "saved", table)
    src = load_source(str(folder))
    assert src.spec.kind == "arrow_dir" and src.spec.path == str(folder)
    assert src.table.equals(table)
    assert src.questions == ["a question?", "another one"]
    assert src.answers == ["1", "#### 2"]  # not every answer is '#### n': left as is
    assert src.spec.answer_extraction is None
    assert len(src.spec.content_hash) == 64
    assert load_source(str(folder)).spec.content_hash == src.spec.content_hash


def test_save_to_disk_dataset_dict_picks_split(tmp_path):
    root = tmp_path / "dd"
    _save_to_disk(root / "train", pa.table({"question": ["train q"]}))
    _save_to_disk(root / "test", pa.table({"question": ["test q", "test q2"]}))
    (root / "dataset_dict.json").write_text(json.dumps({"splits": ["train", "test"]}))
    assert load_source(str(root)).questions == ["train q"]
    assert load_source(str(root), split="test").questions == ["test q", "test q2"]
    with pytest.raises(InputError, match=r"no split 'valid' in .*dd \(splits: test, train\)"):
        load_source(str(root), split="valid")


def test_json_lines_content_in_json_file(tmp_path):
    path = write_jsonl(tmp_path / "lines.json", [{"problem": "p1", "answer": 3}, {"problem": "p2"}])
    src = load_source(str(path))
    assert src.questions == ["p1", "p2"] and src.answers == ["3", None]


def test_json_rows_with_different_keys_keep_all_columns(tmp_path):
    path = write_jsonl(tmp_path / "x.jsonl", [{"question": "q1"}, {"question": "q2", "extra": 1.5}])
    src = load_source(str(path))
    assert src.table.column_names == ["question", "extra"]
    assert src.table.column("extra").to_pylist() == [None, 1.5]
    assert src.spec.answer_key is None and src.answers == [None, None]


def test_gsm8k_extraction_strips_commas_and_converts_numbers(tmp_path):
    rows = [{"question": "a", "answer": "so\n#### 1,234"}, {"question": "b", "answer": None}]
    src = load_source(str(write_jsonl(tmp_path / "g.jsonl", rows)))
    assert src.answers == ["1234", None] and src.spec.answer_extraction == "gsm8k_hashes"
    src = load_source(str(write_jsonl(tmp_path / "n.jsonl", [{"question": "a", "answer": 7.5}])))
    assert src.answers == ["7.5"] and src.spec.answer_extraction is None


def test_explicit_and_dotted_keys(tmp_path):
    table = pa.table(
        {
            "meta": [{"text": "nested question", "gt": {"value": "42"}}],
            "question": ["top-level question"],
        }
    )
    path = tmp_path / "nested.parquet"
    pq.write_table(table, path)
    src = load_source(str(path), question_key="meta.text", answer_key="meta.gt.value")
    assert src.questions == ["nested question"] and src.answers == ["42"]
    assert (src.spec.question_key, src.spec.answer_key) == ("meta.text", "meta.gt.value")
    assert load_source(str(path)).questions == ["top-level question"]


def test_question_problems(tmp_path):
    rows = [
        {"prompt": [{"role": "system", "content": "sys"}, {"role": "user", "content": "  Q1 \n"}]},
        {"prompt": [{"role": "user", "content": "first"}, {"role": "user", "content": "last"}]},
        {"prompt": [{"role": "user", "content": " \t\n"}]},
        {"prompt": [{"role": "system", "content": "no user turn"}]},
        {"prompt": None},
        {"prompt": [{"role": "user", "content": ""}]},
    ]
    src = load_source(str(write_jsonl(tmp_path / "chat.jsonl", rows)))
    assert src.questions == ["  Q1 \n", "last", None, None, None, None]  # verbatim, not stripped
    assert src.problems == [
        None,
        None,
        "empty_question",
        "missing_question",
        "missing_question",
        "empty_question",
    ]
    path = tmp_path / "mixed.parquet"
    pq.write_table(pa.table({"question": [1, 2], "answer": ["a", "b"]}), path)
    src = load_source(str(path))
    assert src.problems == ["non_string_question"] * 2 and src.questions == [None, None]


def test_last_boxed_handles_nested_braces():
    assert _last_boxed(r"so \boxed{1} then \boxed{\frac{a}{b}}.") == r"\frac{a}{b}"
    assert _last_boxed(r"$\boxed 5$") == "5"
    assert _last_boxed("no box") is None and _last_boxed(r"\boxed{open") is None


@needs_champ
def test_champ_preset():
    src = load_source("CHAMP")
    spec = src.spec
    assert (spec.kind, spec.rows, spec.data_source) == ("preset", 270, "champ")
    assert src.table.column_names == ["identifier", "problem", "answer", "category"]
    assert all(isinstance(a, str) and a.strip() for a in src.answers)
    assert src.answers[0] == "239" and src.problems == [None] * 270
    assert src.table.column("identifier")[0].as_py() == "P_Combinatorics_1"
    assert spec.path is not None and spec.path.endswith("dataset_files/v0.json")


# --- errors ------------------------------------------------------------------------------


def test_malformed_jsonl_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"question": "ok"}\n\n{"question": oops}\n')
    with pytest.raises(InputError, match=r"bad\.jsonl line 3: invalid JSON"):
        load_source(str(path))
    path.write_text('{"question": "ok"}\n[1, 2]\n')
    with pytest.raises(InputError, match=r"bad\.jsonl line 2: expected a JSON object, got list"):
        load_source(str(path))


def test_malformed_json_array(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('[\n{"question": "a"},\n{"question": }\n]')
    with pytest.raises(InputError, match=r"bad\.json line 3: invalid JSON"):
        load_source(str(path))
    path.write_text('[{"question": "a"}, 5]')
    with pytest.raises(InputError, match=r"item 2 of the JSON array is not an object"):
        load_source(str(path))


def test_mixed_json_types_become_text_and_odd_questions_row_problems(tmp_path):
    rows = [
        {"question": "a?", "answer": 1},
        {"question": 7, "answer": "x"},
        {"question": {"q": 1}, "answer": "y"},
    ]
    src = load_source(str(write_jsonl(tmp_path / "t.jsonl", rows)))
    assert src.answers == ["1", "x", "y"]
    assert src.problems == [None, "non_string_question", "non_string_question"]
    assert src.table.num_rows == 3


def test_columns_without_any_text_that_cannot_unify_name_the_column(tmp_path):
    path = write_jsonl(
        tmp_path / "t.jsonl", [{"question": "a", "meta": 1}, {"question": "b", "meta": {"k": 2}}]
    )
    with pytest.raises(InputError, match=r"t\.jsonl: column 'meta' mixes types"):
        load_source(str(path))


def test_missing_named_key_lists_columns(tmp_path):
    path = write_jsonl(tmp_path / "k.jsonl", [{"question": "a", "meta": {"gt": "1"}}])
    with pytest.raises(
        InputError,
        match=(
            r"column 'nope' \(`question_key`\) not found in "
            r".*k\.jsonl; columns: question, meta, meta\.gt$"
        ),
    ):
        load_source(str(path), question_key="nope")
    with pytest.raises(InputError, match=r"column 'meta\.x' \(`answer_key`\) not found"):
        load_source(str(path), answer_key="meta.x")


def test_no_question_column(tmp_path):
    path = write_jsonl(tmp_path / "n.jsonl", [{"text": "a", "label": 1}])
    with pytest.raises(
        InputError,
        match=r"no question column in .*n\.jsonl .*columns: text, label; pass `question_key`",
    ):
        load_source(str(path))


@pytest.mark.parametrize("content", ["", "\n\n", "[]"])
def test_empty_inputs_have_no_rows(tmp_path, content):
    path = tmp_path / "empty.json"
    path.write_text(content)
    with pytest.raises(InputError, match=r"empty\.json has no rows"):
        load_source(str(path))


def test_empty_parquet_has_no_rows(tmp_path):
    path = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"question": pa.array([], pa.string())}), path)
    with pytest.raises(InputError, match=r"empty\.parquet has no rows"):
        load_source(str(path))


@pytest.mark.parametrize("data", ["missing/train.jsonl", "nothere.parquet", "./nope"])
def test_file_not_found(data):
    with pytest.raises(
        InputError, match=rf"^file not found: {re.escape(data)} \(check the path given to `data`\)$"
    ):
        load_source(data)


def test_unknown_name():
    with pytest.raises(InputError) as err:
        load_source("gsm9k")
    assert str(err.value) == (
        "no such file or preset: gsm9k (presets: gsm8k, math, champ; or give a path to a "
        ".jsonl, .json, .parquet, .csv file or a save_to_disk folder)"
    )


def test_unsupported_extension(tmp_path):
    path = tmp_path / "data.txt"
    path.write_text("hello")
    with pytest.raises(
        InputError, match=r"unsupported file type '\.txt'.*\.jsonl, \.json, \.parquet, \.csv"
    ):
        load_source(str(path))


def test_unreadable_file(tmp_path, monkeypatch):
    path = write_jsonl(tmp_path / "locked.jsonl", [{"question": "a"}])

    def denied(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(pathlib.Path, "open", denied)  # works even when tests run as root
    with pytest.raises(InputError, match=r"cannot read .*locked\.jsonl: Permission denied"):
        load_source(str(path))


def test_corrupt_parquet(tmp_path):
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"not a parquet file at all")
    with pytest.raises(InputError, match=r"cannot read .*broken\.parquet as \.parquet"):
        load_source(str(path))


def test_folder_that_is_not_save_to_disk(tmp_path):
    (tmp_path / "notes.md").write_text("hi")
    with pytest.raises(InputError, match=r"is a folder but not a save_to_disk folder"):
        load_source(str(tmp_path))


def test_bad_limit(tmp_path):
    with pytest.raises(InputError, match="`limit` must be at least 1, got 0"):
        load_source(str(write_jsonl(tmp_path / "a.jsonl", [{"question": "a"}])), limit=0)


def test_verl_schema_prefers_reward_model_ground_truth(tmp_path):
    row = {
        "data_source": "x",
        "prompt": [{"role": "user", "content": "What is 6*7?"}],
        "ability": "math",
        "reward_model": {"ground_truth": "42", "style": "rule"},
        "extra_info": {"index": 0},
        "answer": "six times seven is 42",
    }
    path = tmp_path / "verl.parquet"
    pq.write_table(pa.Table.from_pylist([row]), path)
    src = load_source(str(path))
    assert src.spec.answer_key == "reward_model.ground_truth" and src.answers == ["42"]
    pq.write_table(
        pa.Table.from_pylist([{k: row[k] for k in ("prompt", "reward_model", "answer")}]), path
    )
    src = load_source(str(path))  # not verl schema: the plain order applies
    assert not src.spec.is_verl_schema and src.answers == ["six times seven is 42"]


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """No network: the hub is offline, every cache is empty and in tmp, and cwd is tmp, so a
    folder laid out like a hub repo (`openai/gsm8k/...`) is what `datasets` finds for the id."""
    import datasets
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets-cache")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def hub_copy(root: Path, repo: str, config: str, files: dict[str, list[dict]]) -> None:
    """A local copy of a hub dataset repo: README with its configs, Parquet files."""
    folder = root / repo
    lines = ["---", "configs:", f"- config_name: {config}", "  data_files:"]
    for rel, rows in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows), folder / rel)
        split = Path(rel).name.split("-")[0]
        lines += [f"  - split: {split}", f"    path: {rel}"]
    (folder / "README.md").write_text("\n".join([*lines, "---", ""]))


def test_presets_load_through_datasets_at_their_pinned_revision(offline_hub):
    from gain_curate.inputs.readers import PRESETS

    hub_copy(
        offline_hub,
        "openai/gsm8k",
        "main",
        {
            "main/train-00000-of-00001.parquet": [
                {
                    "question": "Tom has 2 apples and buys 3 more. How many now?",
                    "answer": "2+3=5\n#### 5",
                },
                {"question": "What is 1,000 + 234?", "answer": "#### 1,234"},
            ]
        },
    )
    src = load_source("gsm8k")
    assert (src.spec.split, src.spec.split_from) == ("train", "the default (--split sets it)")
    assert (src.spec.kind, src.spec.hub_id, src.spec.data_source) == (
        "preset",
        "openai/gsm8k",
        "openai/gsm8k",
    )
    assert src.spec.revision == PRESETS["gsm8k"].revision and re.fullmatch(
        "[0-9a-f]{40}", src.spec.revision
    )
    assert src.answers == ["5", "1234"] and src.spec.answer_extraction == "gsm8k_hashes"
    hub_copy(
        offline_hub,
        "DigitalLearningGmbH/MATH-lighteval",
        "default",
        {
            "data/test-00000-of-00001.parquet": [
                {
                    "problem": "Half of 1?",
                    "solution": r"so $\boxed{\frac{1}{2}}$",
                    "level": "Level 1",
                }
            ],
            "data/train-00000-of-00001.parquet": [
                {"problem": "p", "solution": "s", "level": "Level 2"}
            ],
        },
    )
    src = load_source("math", split="test")
    assert (src.spec.split, src.spec.split_from) == ("test", "--split")
    assert src.answers == [r"\frac{1}{2}"] and src.spec.answer_extraction == "last_boxed"
    assert src.spec.revision == PRESETS["math"].revision and src.spec.rows == 1
    with pytest.raises(InputError) as err:
        load_source("math", split="validation")
    assert "\n" not in str(err.value) and "no split 'validation'" in str(err.value)


@pytest.mark.parametrize("data", ["gsm8k", "math", "someone/some-dataset@v1"])
def test_hub_unreachable_is_one_line(offline_hub, data):
    hub_id = {"gsm8k": "openai/gsm8k", "math": "DigitalLearningGmbH/MATH-lighteval"}.get(
        data, "someone/some-dataset"
    )
    with pytest.raises(InputError) as err:
        load_source(data)
    assert str(err.value) == (
        f"cannot load '{hub_id}' from the Hugging Face hub: "
        "the hub cannot be reached (offline or no network) "
        "and no copy is cached; give `data` "
        "path/to/file.jsonl|.json|.parquet|.csv (a local copy) instead"
    )


def test_hub_id_records_the_commit_the_hub_resolved(monkeypatch):
    """`owner/name@rev` passes rev to datasets, and the manifest gets the builder's commit."""
    import datasets

    calls, commit = [], "0123456789abcdef0123456789abcdef01234567"

    class Builder:
        hash = commit

        def download_and_prepare(self) -> None:
            pass

        def as_dataset(self, split):
            return datasets.Dataset(pa.table({"question": [f"q from {split}"], "answer": ["1"]}))

    def load_dataset_builder(hub_id, config, revision):
        calls.append((hub_id, config, revision))
        return Builder()

    monkeypatch.setattr(datasets, "load_dataset_builder", load_dataset_builder)
    src = load_source("owner/name@v1.0", split="test")
    assert calls == [("owner/name", None, "v1.0")] and src.questions == ["q from test"]
    assert (src.spec.kind, src.spec.hub_id, src.spec.revision, src.spec.data_source) == (
        "hub",
        "owner/name",
        commit,
        "owner/name",
    )


# --- data_source: what verl's reward router dispatches on ---------------------------------


@needs_data
@pytest.mark.parametrize(
    ("rel", "name", "how"),
    [
        ("gsm8k/train.jsonl", "openai/gsm8k", "recognised as GSM8K"),
        ("verl/gsm8k_train.parquet", "openai/gsm8k", "the input's data_source column"),
        (
            "verl/math_train.parquet",
            "DigitalLearningGmbH/MATH-lighteval",
            "the input's data_source column",
        ),
        (
            "math/train.json",
            "DigitalLearningGmbH/MATH-lighteval",
            "recognised as MATH: a problem column and type",
        ),
    ],
)
def test_data_source_of_the_shared_shapes(rel, name, how):
    spec = load_source(str(DATA / rel), limit=4).spec
    assert spec.data_source == name and spec.data_source_from.startswith(how)


def test_data_source_flag_wins_and_empty_is_one_line(tmp_path):
    path = write_jsonl(tmp_path / "train.jsonl", [{"question": "q?", "answer": "#### 1"}])
    spec = load_source(str(path), data_source="my/reward").spec
    assert (spec.data_source, spec.data_source_from) == ("my/reward", "--data-source")
    with pytest.raises(InputError, match="^`data_source` is empty"):
        load_source(str(path), data_source=" ")


def test_data_source_recognised_from_boxed_solutions_else_the_file_name(tmp_path):
    rows = [
        {"question": "Add 1 and 2.", "solution": "1 + 2 = 3, so \\boxed{3}."},
        {"question": "Halve 1.", "solution": "It is $\\boxed{\\frac{1}{2}}$."},
    ]
    src = load_source(str(write_jsonl(tmp_path / "sols.jsonl", rows)))
    assert src.spec.data_source == "DigitalLearningGmbH/MATH-lighteval"
    assert src.spec.answer_extraction == "last_boxed" and src.answers == ["3", "\\frac{1}{2}"]
    plain = load_source(
        str(write_jsonl(tmp_path / "train.jsonl", [{"question": "Hi?", "answer": "4"}]))
    )
    assert plain.spec.data_source.endswith("/train")  # parent/stem: the stem is a split name
    assert plain.spec.data_source_from.startswith("the file's name")


def test_data_source_column_of_a_plain_file_is_kept_and_named(tmp_path):
    rows = [
        {"question": "a?", "answer": "1", "data_source": "openai/gsm8k"},
        {"question": "b?", "answer": "2", "data_source": "openai/gsm8k"},
        {"question": "c?", "answer": "3", "data_source": "lighteval/MATH"},
    ]
    spec = load_source(str(write_jsonl(tmp_path / "mixed.jsonl", rows))).spec
    assert spec.data_source == "openai/gsm8k"
    assert (
        spec.data_source_from
        == "the input's data_source column (2 names; rows without one get openai/gsm8k)"
    )


def test_gsm8k_ground_truth_as_verl_writes_it(tmp_path):
    rows = [
        {"question": "q1?", "answer": "so #### 1,234"},
        {"question": "q2?", "answer": "#### +5"},
        {"question": "q3?", "answer": "#### -0.5"},
    ]
    assert load_source(str(write_jsonl(tmp_path / "g.jsonl", rows))).answers == [
        "1234",
        "5",
        "-0.5",
    ]


def test_input_chats(tmp_path):
    from gain_curate.inputs.answers import input_chats

    chat = [{"role": "system", "content": "s"}, {"role": "user", "content": "What is 2+2?"}]
    src = load_source(str(write_jsonl(tmp_path / "c.jsonl", [{"prompt": chat}, {"prompt": None}])))
    assert input_chats(src.table, src.spec.question_key) == [chat, None]
    plain = load_source(str(write_jsonl(tmp_path / "p.jsonl", [{"question": "a?"}])))
    assert input_chats(plain.table, plain.spec.question_key) is None


# --- the split: --split, else the file's name, else train ---------------------------------


@pytest.mark.parametrize(
    ("name", "split"),
    [
        ("test.jsonl", "test"),
        ("Test.JSONL", "test"),
        ("gsm8k_test.parquet", "test"),
        ("test-00000-of-00001.parquet", "test"),
        ("validation.json", "validation"),
        ("math-val.csv", "val"),
        ("dev.jsonl", "dev"),
        ("my eval.jsonl", "eval"),
        ("train.jsonl", "train"),
        ("gsm8k_train.parquet", "train"),
        ("d.jsonl", "train"),
        ("contest.jsonl", "train"),  # a word that ends in "test" is no split
        ("latest_results.jsonl", "train"),
        ("a_test_b.jsonl", "train"),  # only the first or last word names it
    ],
)
def test_split_from_the_file_name(tmp_path, name, split):
    from gain_curate.inputs.sources import input_split

    path, rows = tmp_path / name, [{"question": "What is 2+2?", "answer": "4"}]
    ext = path.suffix.lower()
    if ext == ".parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    elif ext == ".csv":
        pacsv.write_csv(pa.Table.from_pylist(rows), path)
    else:
        path.write_text(json.dumps(rows) if ext == ".json" else json.dumps(rows[0]) + "\n")
    assert input_split(str(path), None)[0] == split
    spec = load_source(str(path)).spec
    assert spec.split == split
    how = "the file's name" if split != "train" or "train" in name else "the default"
    assert spec.split_from.startswith(how), spec.split_from


def test_split_flag_wins_and_names_and_folders_default_to_train(tmp_path):
    from gain_curate.inputs.sources import input_split

    test = write_jsonl(tmp_path / "test.jsonl", [{"question": "What is 2+2?", "answer": "4"}])
    spec = load_source(str(test), split="train").spec
    assert (spec.split, spec.split_from) == ("train", "--split")
    spec = load_source(str(test), split="test").spec  # the flag agrees with the name
    assert spec.split == "test" and spec.split_from.startswith("the file's name (test.jsonl")
    assert input_split("gsm8k", None) == ("train", "the default (--split sets it)")
    assert input_split("owner/test", None)[0] == "train"  # a hub id: its train split
    assert input_split(str(tmp_path / "test"), None)[0] == "train"  # a save_to_disk folder
    assert input_split("x/test.jsonl", "validation") == ("validation", "--split")


def test_score_config_takes_its_split_from_the_input():
    from gain_curate.scoring.config import ScoreConfig

    assert ScoreConfig(data="x/test.jsonl", model="m", out=Path("o")).split == "test"
    assert ScoreConfig(data="x/d.jsonl", model="m", out=Path("o")).split == "train"
    assert ScoreConfig(data="gsm8k", model="m", out=Path("o")).split == "train"
    assert ScoreConfig(data="x/test.jsonl", model="m", out=Path("o"), split="dev").split == "dev"
