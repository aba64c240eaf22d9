"""The product speaks for itself: the package, its --help texts, the README and docs/ never
point at files a user of the package does not have; every `gain-curate ...` example in a
help text, the README or a docs/ page parses with the command's real options; every relative
link of the README and docs/ reaches a file (and its heading, for `#anchor`); the README
stays a five-minute read."""

from __future__ import annotations

import re
import shlex
import unicodedata
from pathlib import Path

import click
import pytest

from gain_curate.cli import main

ROOT = Path(__file__).resolve().parents[1]
# Engineering notes and data folders outside the repository: a user never has them.
FOREIGN = re.compile(r"DESIGN\.md|\.\./shared|shared/data|STYLE\.md")


README_MAX_LINES = 250


def doc_files() -> list[Path]:
    """The Markdown a user reads: the README, the changelog and every page under docs/."""
    return [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").rglob("*.md"))]


def product_texts() -> dict[str, str]:
    files = [*sorted((ROOT / "gain_curate").rglob("*.py")), *doc_files()]
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
    # The command's own option parser alone: an unknown option raises click.NoSuchOption, a
    # flag without its value click.BadOptionUsage; no callback runs, no path must exist.
    ctx = click.Context(cmd, info_name=args[0], parent=click.Context(main))
    cmd.make_parser(ctx).parse_args(args=args[1:])


@pytest.mark.parametrize("name", sorted(main.commands))
def test_help_examples_parse(name: str) -> None:
    text = help_texts()[name]
    found = examples("\n".join(ln for ln in text.splitlines() if ln.startswith("    ")))
    for example in found:
        check_parses(example)


def doc_examples(path: Path) -> list[str]:
    """The runnable `gain-curate ...` lines of a Markdown file's indented code blocks."""
    text = path.read_text(encoding="utf-8")
    code = "\n".join(line for line in text.splitlines() if line.startswith("    "))
    return [e for e in examples(code) if "..." not in e and "<" not in e]


def test_readme_and_docs_examples_parse() -> None:
    found = {p: doc_examples(p) for p in doc_files()}
    assert len(found[ROOT / "README.md"]) >= 8, found[ROOT / "README.md"]
    assert sum(map(len, found.values())) >= 40, found  # the docs' examples were found
    bad = []
    for path, exs in found.items():
        for example in exs:
            try:
                check_parses(example)
            except (click.UsageError, AssertionError) as e:
                bad.append(f"{path.relative_to(ROOT)}: {example}: {e}")
    assert not bad, bad


def test_readme_is_short() -> None:
    lines = (ROOT / "README.md").read_text(encoding="utf-8").count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines (at most {README_MAX_LINES})"


FENCE = re.compile(r"^```.*?^```", re.S | re.M)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6} +(.+?) *#*$", re.M)


def slug(heading: str) -> str:
    """The anchor Python-Markdown's toc (what mkdocs uses) gives a heading."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "").replace("*", "")
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def without_fences(text: str) -> str:
    """The text less its fenced code blocks (a `# comment` there is no heading), line
    numbers kept."""
    return FENCE.sub(lambda m: "\n" * m.group().count("\n"), text)


def anchors(path: Path) -> set[str]:
    text = without_fences(path.read_text(encoding="utf-8"))
    return {slug(m.group(1)) for m in HEADING.finditer(text)}


def broken_links(path: Path) -> list[str]:
    """Relative links of a Markdown file whose file or #anchor does not exist."""
    text = INLINE_CODE.sub("", without_fences(path.read_text(encoding="utf-8")))
    bad = []
    for m in LINK.finditer(text):
        target = m.group(1)
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        line = text.count("\n", 0, m.start()) + 1
        if not dest.is_file():
            bad.append(f"{path.name}:{line}: {target}: no file {dest}")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            bad.append(f"{path.name}:{line}: {target}: no heading #{anchor} in {dest.name}")
    return bad


def test_relative_links_resolve() -> None:
    bad = [b for p in doc_files() for b in broken_links(p)]
    assert not bad, bad


def test_broken_links_are_found(tmp_path: Path) -> None:
    (tmp_path / "a.md").write_text("# A `title`: here\n\n[ok](#a-title-here) [ok](b.md#b)\n")
    (tmp_path / "b.md").write_text("# B\n\n[x](c.md) [y](a.md#nope) [z](https://x.org/n.md)\n")
    assert broken_links(tmp_path / "a.md") == []
    bad = broken_links(tmp_path / "b.md")
    assert [b.split(": ")[1] for b in bad] == ["c.md", "a.md#nope"], bad
