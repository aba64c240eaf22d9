"""The bad-input corpus (tests/bad_inputs/): every file-level problem exits non-zero with
exactly one line that names the file (and the line or column where it applies) and what
to do, leaves no public output behind, and never shows a traceback. Row-level problems
keep the row with null scores and a reason."""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from gain_curate.cli import main

CORPUS = Path(__file__).parent / "bad_inputs"

# (id, arguments after `score --model {model} --out {out}`, the exact error line)
CASES = [
    (
        "missing file",
        ["--data", "{dir}/missing.jsonl"],
        "file not found: {dir}/missing.jsonl (check the path given to --data)",
    ),
    (
        "unknown preset",
        ["--data", "nosuchpreset"],
        (
            "no such file or preset: nosuchpreset (presets: gsm8k, math, champ; or give "
            "a path to a .jsonl, .json, .parquet, .csv file or a save_to_disk folder)"
        ),
    ),
    (
        "malformed JSON line",
        ["--data", "{dir}/bad_line.jsonl"],
        "{dir}/bad_line.jsonl line 2: invalid JSON (Expecting value); fix or remove it",
    ),
    (
        "JSON line not an object",
        ["--data", "{dir}/not_object.jsonl"],
        "{dir}/not_object.jsonl line 2: expected a JSON object, got list; fix or remove the line",
    ),
    (
        "JSON array item not an object",
        ["--data", "{dir}/array_item.json"],
        (
            "{dir}/array_item.json: item 2 of the JSON array is not an "
            'object; each item must be {"question": ..., "answer": ...}'
        ),
    ),
    (
        "unsupported file type",
        ["--data", "{dir}/notes.txt"],
        (
            "unsupported file type '.txt': {dir}/notes.txt (supported: .jsonl, .json, "
            ".parquet, .csv, or a datasets save_to_disk folder); convert it or rename it"
        ),
    ),
    (
        "empty dataset",
        ["--data", "{dir}/empty.jsonl"],
        "{dir}/empty.jsonl has no rows (empty file); give a dataset with at least one row",
    ),
    (
        "no question column",
        ["--data", "{dir}/no_question.jsonl"],
        (
            "no question column in {dir}/no_question.jsonl (looked for question, "
            "problem, prompt, query, input); columns: text, answer; pass --question-key"
        ),
    ),
    (
        "named question column missing",
        ["--data", "{dir}/qa.jsonl", "--question-key", "prompt_text"],
        (
            "column 'prompt_text' (--question-key) not found "
            "in {dir}/qa.jsonl; columns: question, answer"
        ),
    ),
    (
        "named answer column missing",
        ["--data", "{dir}/qa.jsonl", "--answer-key", "solution"],
        "column 'solution' (--answer-key) not found in {dir}/qa.jsonl; columns: question, answer",
    ),
    (
        "corrupt parquet",
        ["--data", "{dir}/corrupt.parquet"],
        (
            "cannot read {dir}/corrupt.parquet as .parquet: Could not open Parquet input source "
            "'{dir}/corrupt.parquet': Parquet magic bytes not found in footer. Either the file is "
            "corrupted or this is not a parquet file.; check that the file is a valid parquet file"
        ),
    ),
    (
        "folder that is no dataset",
        ["--data", "{dir}/not_a_dataset"],
        (
            "{dir}/not_a_dataset is a folder but not a save_to_disk folder (no "
            "data-*.arrow files); give a file or a datasets save_to_disk folder"
        ),
    ),
    (
        "column that cannot be one type",
        ["--data", "{dir}/mixed_types.jsonl"],
        (
            "{dir}/mixed_types.jsonl: column 'meta' mixes types Arrow cannot unify (cannot mix "
            "struct and non-struct, non-null values); give every row's 'meta' the same type"
        ),
    ),
    (
        "malformed CSV",
        ["--data", "{dir}/bad_quote.csv"],
        (
            "cannot read {dir}/bad_quote.csv as .csv: CSV parse error: Expected 2 "
            'columns, got 1: "What is 1 + 1?,2; check that the file is a valid csv file'
        ),
    ),
    (
        "few-shot file of the wrong shape",
        ["--data", "{dir}/qa.jsonl", "--few-shot", "{dir}/bad_few_shot.json"],
        (
            "--few-shot {dir}/bad_few_shot.json: expected a JSON list of {'question', "
            "'answer'} objects or of alternating user/assistant {'role', 'content'} messages"
        ),
    ),
    (
        "few-shot file missing",
        ["--data", "{dir}/qa.jsonl", "--few-shot", "{dir}/nope.json"],
        "--few-shot: no such file: {dir}/nope.json (use gainrl, none, or a JSON file)",
    ),
    (
        "layer out of range",
        ["--data", "{dir}/qa.jsonl", "--layer", "7"],
        "--layer 7 is out of range: the model has 4 layers (0..3)",
    ),
    (
        "model path missing",
        ["--data", "{dir}/qa.jsonl", "--model", "{tmp}/no_model"],
        (
            "model folder not found: {tmp}/no_model (give a local folder with config.json, a "
            "hub id such as Qwen/Qwen2.5-7B-Instruct, or `smollm2` for the embedded demo model)"
        ),
    ),
    (
        "model folder without config",
        ["--data", "{dir}/qa.jsonl", "--model", "{dir}/not_a_dataset"],
        (
            "model folder {dir}/not_a_dataset has no config.json "
            "(save it with save_pretrained, or give a hub id)"
        ),
    ),
    (
        "model without a chat template",
        ["--data", "{dir}/qa.jsonl", "--model", "{tmp}/no_template"],
        (
            "no_template has no chat template: scoring renders the model's "
            "own chat; use an instruct model or pass --chat-template FILE"
        ),
    ),
    (
        "output folder is a file",
        ["--data", "{dir}/qa.jsonl", "--out", "{dir}/qa.jsonl"],
        "output path {dir}/qa.jsonl is a file, not a folder: choose another --out",
    ),
    (
        "one JSON object whose question is no text",
        ["--data", "{dir}/one_object.json"],
        (
            "no row of {dir}/one_object.json can be scored (non_string_question: "
            "1); check the question column 'question' or pass --question-key"
        ),
    ),
    (
        "Triton kernel without Triton",
        ["--data", "{dir}/qa.jsonl", "--kernel", "triton", "--device", "cpu"],
        (
            "--kernel triton: Triton is not usable here (triton is not installed: "
            "pip install 'gain-curate[triton]'); use --kernel torch or auto"
        ),
    ),
    (
        "Ray backend without Ray",
        ["--data", "{dir}/qa.jsonl", "--backend", "ray"],
        "--backend ray needs Ray: pip install 'gain-curate[ray]'",
    ),
]


@pytest.fixture(scope="module")
def no_template_model(tiny_qwen2_dir: Path, tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("models")
    dst = tmp / "no_template"
    shutil.copytree(tiny_qwen2_dir, dst)
    (dst / "chat_template.jinja").unlink(missing_ok=True)
    cfg = json.loads((dst / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (dst / "tokenizer_config.json").write_text(json.dumps(cfg))
    return tmp


def test_corpus_has_at_least_fifteen_cases() -> None:
    assert len(CASES) >= 15


@pytest.fixture
def no_optional_packages(monkeypatch):
    """Triton and Ray as if not installed (a None entry in sys.modules fails their import)."""
    import sys

    from gain_curate.runtime.kernel import triton_problem

    for name in ("triton", "ray"):
        monkeypatch.setitem(sys.modules, name, None)
    triton_problem.cache_clear()
    yield
    triton_problem.cache_clear()


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_exact_message(
    case, tiny_qwen2_dir: Path, no_template_model: Path, tmp_path: Path, no_optional_packages
) -> None:
    _, args, message = case

    def fill(s: str) -> str:
        return s.replace("{dir}", str(CORPUS.resolve())).replace("{tmp}", str(no_template_model))

    out = tmp_path / "out"
    argv = [fill(a) for a in args]
    full = [
        "score",
        "--model",
        str(tiny_qwen2_dir),
        *([] if "--out" in argv else ["--out", str(out)]),
        *argv,
    ]
    result = CliRunner().invoke(main, full)
    assert result.exit_code == 1, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert errors == [f"Error: {fill(message)}"]
    assert "Traceback" not in result.output
    assert not (out / "gain_manifest.json").exists() and not (out / "data").exists()


def test_row_level_problems_keep_the_row(tiny_qwen2_dir: Path, tmp_path: Path) -> None:
    rows = [
        {"question": "What is 12 times 3?", "answer": "36"},
        {"question": "", "answer": "0"},
        {"question": "   \n ", "answer": "0"},
        {"question": 42, "answer": "42"},
        {"answer": "no question here"},
        {"question": "What is 12 times 3?", "answer": "36"},
        {"question": "very long " * 400, "answer": "1"},
    ]
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    result = CliRunner().invoke(
        main,
        [
            "score",
            "--model",
            str(tiny_qwen2_dir),
            "--data",
            str(data),
            "--out",
            str(out),
            "--max-tokens",
            "512",
        ],
    )
    assert result.exit_code == 0, result.output
    table = pq.read_table(out / "data").to_pylist()
    reasons = {r["extra_info"]["index"]: r["gain_unscored_reason"] for r in table}
    assert reasons == {
        0: None,
        1: "empty_question",
        2: "empty_question",
        3: "non_string_question",
        4: "missing_question",
        5: None,
        6: "too_long",
    }
    assert [r["gain_rank"] for r in table] == list(range(7))
    # the one scored row ranks first, its duplicate (row 5) right after it with its score
    assert [r["extra_info"]["index"] for r in table[:2]] == [0, 5]
    assert table[1]["gain_score"] == table[0]["gain_score"] is not None
    assert table[1]["gain_duplicate_of"] == table[0]["gain_uid"]


def test_disk_full_leaves_no_public_files(
    tiny_qwen2_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    from gain_curate.runfolder import store

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store.pq, "write_table", full)
    out = tmp_path / "out"
    result = CliRunner().invoke(
        main,
        [
            "score",
            "--model",
            str(tiny_qwen2_dir),
            "--data",
            str(CORPUS / "qa.jsonl"),
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 1
    errors = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and "No space left on device" in errors[0] and "free space" in errors[0]
    assert not (out / "gain_manifest.json").exists() and not (out / "data").exists()


USAGE = [
    (["scroe"], "No such command 'scroe'. Did you mean 'score'? (see `gain-curate --help`)"),
    (
        ["score", "--outt", "x"],
        "No such option '--outt'. Did you mean '--out'? (see `gain-curate score --help`)",
    ),
    (["inspect"], "Missing argument 'OUT'. (see `gain-curate inspect --help`)"),
    (["score", "--data"], "Option '--data' requires an argument. (see `gain-curate score --help`)"),
    (
        ["schedule", "x", "--epochs", "0", "--batch-size", "2"],
        (
            "Invalid value for '--epochs': 0 is not in the "
            "range x>=1. (see `gain-curate schedule --help`)"
        ),
    ),
]


@pytest.mark.parametrize("argv, message", USAGE, ids=[" ".join(a) for a, _ in USAGE])
def test_usage_errors_are_one_line(argv, message) -> None:
    result = CliRunner().invoke(main, argv, prog_name="gain-curate")
    assert result.exit_code == 2
    assert result.output.splitlines() == [f"Error: {message}"]


def test_internal_error_is_one_line_with_the_traceback_in_the_run_folder(
    tiny_qwen2_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    from gain_curate.executor import score

    def broken(*args, **kwargs):
        raise RuntimeError("a bug\nover two lines")

    monkeypatch.setattr(score, "score_part", broken)
    out = tmp_path / "out"
    argv = [
        "score",
        "--model",
        str(tiny_qwen2_dir),
        "--data",
        str(CORPUS / "qa.jsonl"),
        "--out",
        str(out),
    ]
    result = CliRunner().invoke(main, argv)
    log = out / ".gain-curate" / "error.log"
    assert result.exit_code == 1 and "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert errors == [
        f"Error: internal error: RuntimeError: a bug over two lines (a bug in gain-curate, not in "
        f"your input; the traceback is in {log}: please report it with that file)"
    ]
    text = log.read_text()
    assert (
        "Traceback (most recent call last)" in text and "in broken" in text and "command: " in text
    )
    assert not (out / "gain_manifest.json").exists() and not (out / "data").exists()


def test_internal_error_without_a_run_folder_logs_to_the_temp_folder(monkeypatch, tmp_path) -> None:
    import tempfile

    from gain_curate.checks import report

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(report, "summarize", lambda out: {}["missing key"])
    (tmp_path / "x.txt").touch()  # OUT lies inside a file: no run folder can hold the log
    result = CliRunner().invoke(main, ["inspect", str(tmp_path / "x.txt" / "run")])
    assert result.exit_code == 1
    [line] = result.output.splitlines()
    assert line.startswith("Error: internal error: KeyError: 'missing key' (a bug in gain-curate")
    [log] = tmp_path.glob("gain-curate-error-*.log")
    assert str(log) in line and "KeyError" in log.read_text()
