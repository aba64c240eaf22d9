"""Typed errors the library raises; the CLI turns each into one line and a non-zero exit.
An unexpected exception (a bug) becomes one line too, its traceback written to a log."""

from __future__ import annotations

import os
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any


class GainCurateError(Exception):
    """An expected failure: the message is one line saying what, where, and what to do."""


class InputError(GainCurateError):
    """The dataset cannot be read or does not have what scoring needs."""


class ModelError(GainCurateError):
    """The model or tokenizer cannot be loaded or lacks what scoring needs."""


class OutputError(GainCurateError):
    """The output folder cannot be written, or holds a run made with another config."""


LOG_NAME = "error.log"


def report_internal_error(e: BaseException, out: Any = None) -> str:
    """Write the traceback of `e` (being handled) to OUT/.gain-curate/error.log, or to the
    temp folder when there is no run folder or it cannot be written; return the one line
    the user sees."""
    from gain_curate import __version__

    text = (
        f"gain-curate {__version__}, python {platform.python_version()}, {platform.platform()}\n"
        f"command: {' '.join(sys.argv)}\ncwd: {os.getcwd()}\n"
        f"time: {time.strftime('%Y-%m-%dT%H:%M:%S%z')}\n\n"
        + "".join(traceback.format_exception(type(e), e, e.__traceback__))
    )
    folders = [Path(out) / ".gain-curate"] if out is not None and not Path(out).is_file() else []
    log = None
    for folder in [*folders, Path(tempfile.gettempdir())]:
        path = folder / (LOG_NAME if folder in folders else f"gain-curate-error-{os.getpid()}.log")
        try:
            folder.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        except OSError:
            continue
        log = path
        break
    first = " ".join(str(e).split())[:300] or "no message"
    where = f"the traceback is in {log}" if log else "the traceback could not be written"
    return (
        f"internal error: {type(e).__name__}: {first} (a bug in gain-curate, not in your input; "
        f"{where}: please report it with that file)"
    )
