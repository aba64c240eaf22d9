"""The product speaks for itself: the package, its --help texts and the README never point
at files a user of the package does not have, and every `gain-curate ...` example in a help
text or in the README parses with the command's real options."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest

from gain_curate.cli import main

ROOT = Path(__file__).resolve().parents[1]
# Engineering notes and data folders outside the repository: a user never has them.
FOREIGN = re.compile(r"DESIGN\.md|\.\./shared|shared/data|STYLE\.md")


def product_texts() -> dict[str, str]:
    files = [*sorted((ROOT / "gain_curate").rglob("*.py")), ROOT / "README.md"]
    files += sorted((ROOT / "docs").glob("*.md"))
    return {str(p.relative_to(ROOT)): p.read_text(encoding="utf-8") for p in files}


def help_texts() -> dict[str, str]:
    out = {}
    for name, cmd in main.commands.items():
        with click.Context(cmd, info_name=name, parent=click.Context(main)) as ctx:
            out[name] = cmd.get_help(ctx)
    return out


def test_no_pointer_at_files_a_user_does_not_have() -> None:
    texts = {**product_texts(), **{f"gain-curate {k} --help": v for k, v in help_texts().items()}}
    hits = [
        f"{where}:{text.count(chr(10), 0, m.start()) + 1}: {m.group()}"
        for where, text in texts.items()
        for m in FOREIGN.finditer(text)
    ]
    assert not hits, hits


def examples(text: str) -> list[str]:
    """`gain-curate ...` command lines of a text, continuation lines joined, comments cut."""
    lines = text.replace("\\\n", " ").splitlines()
    found = []
    for line in lines:
        line = line.strip().lstrip("$ ").strip()
        if line.startswith("gain-curate ") and not line.startswith("gain-curate: "):
            found.append(line.split("  #")[0].split(" # ")[0].strip())
    return found


def check_parses(example: str) -> None:
    args = shlex.split(example)[1:]
    if not args or args[0].startswith("-"):
        return
    cmd = main.commands.get(args[0])
    assert cmd is not None, f"no command {args[0]!r} in: {example}"
    with cmd.make_context(args[0], args[1:], parent=click.Context(main), resilient_parsing=True):
        pass  # an unknown option raises click.NoSuchOption


@pytest.mark.parametrize("name", sorted(main.commands))
def test_help_examples_parse(name: str) -> None:
    text = help_texts()[name]
    found = examples("\n".join(ln for ln in text.splitlines() if ln.startswith("    ")))
    for example in found:
        check_parses(example)


def test_readme_examples_parse() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    code = "\n".join(line for line in readme.splitlines() if line.startswith("    "))
    found = [e for e in examples(code) if "..." not in e and "<" not in e]
    assert len(found) >= 20, found  # the README's examples were found
    bad = []
    for example in found:
        try:
            check_parses(example)
        except (click.UsageError, AssertionError) as e:
            bad.append(f"{example}: {e}")
    assert not bad, bad
