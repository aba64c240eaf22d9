"""Settings to flags, in one place. The library names what to change by its setting, the
Python name a caller passes (`question_key`, `max_tokens`), written between backticks; a
command line user is told the flag instead (`--question-key`). The table is read from the
commands' own options, so a new option needs no entry here; SETTING_FLAGS holds the few
settings whose flag has another name."""

from __future__ import annotations

import re

import click

# A setting of the library whose flag is not its name with "_" turned into "-".
SETTING_FLAGS = {
    "system_prompt": "--system-prompt",
    "few_shot": "--few-shot",
}

_SETTING = re.compile(r"`([a-z][a-z0-9_]*)`")


def flag_table(group: click.Group) -> dict[str, str]:
    """setting -> the long flag that sets it, for every option of every command of group."""
    table: dict[str, str] = {}
    for cmd in group.commands.values():
        for p in cmd.params:
            longs = [o for o in (*p.opts, *p.secondary_opts) if o.startswith("--")]
            if isinstance(p, click.Option) and p.name and longs:
                table.setdefault(p.name, longs[0])
    return {**table, **SETTING_FLAGS}


def as_flags(message: str, group: click.Group) -> str:
    """The library's message for a command line user of group: each `setting` that a flag
    sets becomes that flag; other backticked text (a command, a file name) stays as it is."""
    table = flag_table(group)
    return _SETTING.sub(lambda m: table.get(m.group(1), m.group(0)), message)
