"""Progress on stderr for the long commands: `phases` (one bar per step of validate: scoring,
supervised gradients, generation, GRPO gradients) and `progress` (score's batches and
status lines). Every bar shows its elapsed time and an ETA on a terminal; when stderr is not
one (a log file, a pipe), each step instead prints one plain line every LOG_EVERY_S seconds
and one when it finishes, so a long run's log shows where it is. No logic: the library
reports progress through the Hooks it is given."""

from __future__ import annotations

import time
from typing import Any

LOG_EVERY_S = 30.0


class Bars:
    """Named progress tasks on a console: rich bars with an ETA, or periodic log lines."""

    def __init__(self, console: Any, clock: Any = time.monotonic) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.console, self.clock = console, clock
        self.live = console.is_terminal
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


class phases:
    """One bar per step of a long command: `add(name, total)` returns the callback that
    advances that step's bar."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet

    def __enter__(self) -> phases:
        from rich.console import Console

        self.bars = Bars(Console(stderr=True, quiet=self.quiet))
        self.bars.start()
        return self

    def add(self, name: str, total: int) -> Any:
        task = self.bars.add(name, total)
        return lambda n: self.bars.advance(task, n)

    def __exit__(self, *exc: Any) -> None:
        self.bars.stop()


class progress:
    """score's bar with prompts/s and tokens/s, wired to its Hooks."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet

    def __enter__(self) -> Any:
        from rich.console import Console

        from gain_curate.scoring.config import Hooks

        self.console = Console(stderr=True, quiet=self.quiet)
        self.bars = Bars(self.console)
        self.task: int | None = None
        self.tokens = 0
        self.t0 = 0.0

        def start(prompts: int, tokens: int) -> None:
            self.bars.start()
            self.t0 = time.perf_counter()
            self.task = self.bars.add("scoring", prompts)

        def batch(prompts: int, tokens: int) -> None:
            assert self.task is not None
            self.tokens += tokens
            done = self.bars.bars.tasks[self.task].completed + prompts
            dt = max(time.perf_counter() - self.t0, 1e-9)
            rate = f"{done / dt:,.1f} prompts/s  {self.tokens / dt:,.0f} tok/s"
            self.bars.advance(self.task, prompts, rate)

        return Hooks(
            status=lambda msg: self.console.print(
                f"[dim]{msg}[/dim]", soft_wrap=True, highlight=False
            ),
            start=start,
            batch=batch,
        )

    def __exit__(self, *exc: Any) -> None:
        self.bars.stop()
