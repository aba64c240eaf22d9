"""The library names settings, the CLI names flags: an error raised below cli/ says
`question_key`, and the command line user reads --question-key (cli/flags.py)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from click.testing import CliRunner

from gain_curate.cli import main
from gain_curate.cli.flags import as_flags, flag_table

PACKAGE = Path(__file__).resolve().parent.parent / "gain_curate"
FLAG = re.compile(r"(?<![\w.-])--[a-z][a-z0-9-]*\b(?![.\w])")


def test_settings_become_the_commands_own_flags() -> None:
    table = flag_table(main)
    assert table["question_key"] == "--question-key"
    assert table["as_json"] == "--json"  # read from the option, not guessed from the name
    assert as_flags("set `question_key`, or lower `max_tokens` (now 4096)", main) == (
        "set --question-key, or lower --max-tokens (now 4096)"
    )
    # a backticked command or file name that no flag sets stays as it is
    assert as_flags("run `gain-curate schedule` on `plan.parquet`", main) == (
        "run `gain-curate schedule` on `plan.parquet`"
    )


def raised_texts(path: Path) -> list[tuple[int, str]]:
    """The string parts of every `raise X(...)` and `warn(...)`-like message in a module."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Raise) and node.exc is not None:
            for sub in ast.walk(node.exc):
                if isinstance(sub, ast.Constant) and isinstance(sub.value, str):
                    found.append((sub.lineno, sub.value))
    return found


def test_errors_below_the_cli_name_settings_not_flags() -> None:
    flags = set(flag_table(main).values())
    hits = [
        f"{path.relative_to(PACKAGE.parent)}:{line}: {m.group()}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if "cli" not in path.relative_to(PACKAGE).parts
        for line, text in raised_texts(path)
        for m in FLAG.finditer(text)
        if m.group() in flags
    ]
    assert not hits, "\n".join(hits)


def test_the_flag_checker_sees_a_flag() -> None:
    assert [m.group() for m in FLAG.finditer("lower --max-tokens; --data.prompt_dataset x")] == [
        "--max-tokens"
    ]


def test_the_cli_turns_a_library_error_into_flags() -> None:
    from gain_curate.cli.app import _fail
    from gain_curate.errors import InputError

    e = InputError("no column 'q' in x.jsonl; set `question_key` (or `answer_key`)")
    assert _fail(e).message == "no column 'q' in x.jsonl; set --question-key (or --answer-key)"


def test_a_python_caller_and_a_command_line_user_each_read_their_name(tmp_path: Path) -> None:
    import json

    import pytest

    from gain_curate.errors import InputError
    from gain_curate.inputs.sources import load_source

    data = tmp_path / "rows.jsonl"
    data.write_text(json.dumps({"text": "What is 1 + 1?", "answer": "2"}) + "\n")
    with pytest.raises(InputError) as e:
        load_source(str(data))
    assert "`question_key`" in str(e.value) and "--question-key" not in str(e.value)
    r = CliRunner().invoke(
        main, ["score", "--model", "smollm2", "--data", str(data), "--out", str(tmp_path / "out")]
    )
    assert r.exit_code == 1 and "--question-key" in r.output and "`question_key`" not in r.output
