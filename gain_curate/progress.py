"""Progress of the steps that take a while, on stderr: a rich bar with its elapsed time and
an ETA on a terminal; when stderr is not one (a log file, a pipe), one plain line every
LOG_EVERY_S seconds and one when the step ends, so a long run's log shows where it is.

The library reports a step with `step(name, total)` (it returns the callback that advances
it) and says what it is doing with `note(msg)`, wherever it runs (the scorer, the merge, a
model conversion deep inside model loading). This is the one progress channel: a command
shows it on stderr (`on_stderr(quiet)`), a spawned worker or Ray actor stays quiet
(`silenced()`), and a library caller with no bars of its own gets the plain lines."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

LOG_EVERY_S = 30.0


class Bars:
    """Named progress tasks on a console: rich bars with an ETA, or periodic log lines
    (`live=False`, or a console that is not a terminal)."""

    def __init__(self, console: Any, clock: Any = time.monotonic, live: bool | None = None) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.console, self.clock = console, clock
        self.live = console.is_terminal if live is None else live
        self.bars = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
            get_time=clock,
        )
        self.logged: dict[int, float] = {}  # task -> when its last line was printed

    def start(self) -> None:
        if self.live:
            self.bars.start()

    def stop(self) -> None:
        if self.live:
            self.bars.stop()

    def add(self, name: str, total: int) -> int:
        task = self.bars.add_task(name, total=total, rate="")
        self.logged[task] = self.clock()
        return task

    def advance(self, task: int, n: int, rate: str = "") -> None:
        self.bars.update(task, advance=n, rate=rate)
        if self.live:
            return
        t = self.bars.tasks[task]
        now = self.clock()
        if now - self.logged[task] < LOG_EVERY_S and t.completed < (t.total or 0):
            return
        self.logged[task] = now
        self.console.print(_line(t, rate), soft_wrap=True, highlight=False, markup=False)

    def note(self, msg: str, style: str | None = None) -> None:
        """One plain line (above the bars on a terminal); `style` (rich's: "dim") on a
        terminal only, so a log holds the text alone."""
        self.console.print(msg, soft_wrap=True, highlight=False, markup=False, style=style)


def _line(t: Any, rate: str) -> str:
    """`scoring: 120/1,000 (12%), 3.2 prompts/s, 0:04:35 elapsed, ETA 0:45:12`."""
    from datetime import timedelta

    def hms(s: float | None) -> str:
        return "?" if s is None else str(timedelta(seconds=round(s)))

    total = t.total or 0
    pct = 100 * t.completed / total if total else 100.0
    eta = "done" if t.completed >= total else f"ETA {hms(t.time_remaining)}"
    parts = [f"{t.description}: {t.completed:,.0f}/{total:,.0f} ({pct:.0f}%)"]
    parts += [rate] if rate else []
    parts += [f"{hms(t.elapsed)} elapsed", eta]
    return ", ".join(parts)


# --- the library's side: report to the command's bars, or plain lines on stderr ------------

_shown: ContextVar[Bars | None] = ContextVar("gain_curate_progress", default=None)


@contextlib.contextmanager
def showing(bars: Bars) -> Iterator[Bars]:
    """Show every `step` and `note` reported inside this block on `bars`."""
    token = _shown.set(bars)
    try:
        yield bars
    finally:
        _shown.reset(token)


def _bars() -> Bars:
    bars = _shown.get()
    if bars is None:  # no command shows progress: plain lines on stderr
        from rich.console import Console

        bars = Bars(Console(stderr=True), live=False)
        _shown.set(bars)
    return bars


class Step:
    """A step of `total` units on the bars: call it with the units just done (and, for a
    step with a `rate`, the tokens they took); `finish()` marks the rest done (a step that
    ended early, e.g. an interval that was not needed)."""

    def __init__(self, bars: Bars, name: str, total: int, rate: str | None = None) -> None:
        self.bars, self.total, self.done = bars, total, 0
        self.rate, self.tokens, self.t0 = rate, 0, bars.clock()
        self.task = bars.add(name, total)

    def __call__(self, n: int, tokens: int = 0) -> None:
        self.done += n
        self.tokens += tokens
        self.bars.advance(self.task, n, self._rate())

    def _rate(self) -> str:
        """`3.2 prompts/s  1,234 tok/s` since the step began ("" without a `rate`)."""
        if self.rate is None:
            return ""
        dt = max(self.bars.clock() - self.t0, 1e-9)
        return f"{self.done / dt:,.1f} {self.rate}/s  {self.tokens / dt:,.0f} tok/s"

    def finish(self) -> None:
        if self.done < self.total:
            self(self.total - self.done)


def step(name: str, total: int, *, rate: str | None = None) -> Step:
    """A step of `total` units, shown as a bar (or log lines); call it to advance it.
    `rate`: the units' name, to show units/s and tokens/s (`prompts`)."""
    return Step(_bars(), name, total, rate)


def note(msg: str, style: str | None = None) -> None:
    """One line saying what the library is doing (e.g. that a one-time conversion starts);
    `style="dim"` for status lines that are not news."""
    _bars().note(msg, style)


@contextlib.contextmanager
def on_stderr(quiet: bool = False) -> Iterator[Bars]:
    """Show every step and note reported inside this block on stderr: live bars on a
    terminal, log lines elsewhere; nothing when `quiet` (a command printing --json)."""
    from rich.console import Console

    bars = Bars(Console(stderr=True, quiet=quiet))
    with showing(bars):
        bars.start()
        try:
            yield bars
        finally:
            bars.stop()


@contextlib.contextmanager
def silenced() -> Iterator[None]:
    """Show nothing reported inside this block (a spawned GPU worker, a Ray actor: the
    launching process shows the run)."""
    from rich.console import Console

    with showing(Bars(Console(stderr=True, quiet=True), live=False)):
        yield
