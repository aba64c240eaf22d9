"""Progress on stderr for the long commands: `phases` (one bar per step of validate) and
`progress` (score's batches, parts and status lines). No logic: the library reports
progress through the Hooks it is given."""

from __future__ import annotations

import time
from typing import Any


class phases:
    """Rich progress bars for the steps of a long command: `add(name, total)` returns the
    callback that advances that bar."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet

    def __enter__(self) -> phases:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        console = Console(stderr=True, quiet=self.quiet)
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        )
        self.progress.start()
        return self

    def add(self, name: str, total: int) -> Any:
        task = self.progress.add_task(name, total=total)
        return lambda n: self.progress.update(task, advance=n)

    def __exit__(self, *exc: Any) -> None:
        self.progress.stop()


class progress:
    """Rich progress bar with prompts/s and tokens/s, wired to score's Hooks."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet

    def __enter__(self) -> Any:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        from gain_curate.scoring.score import Hooks

        self.console = Console(stderr=True, quiet=self.quiet)
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            console=self.console,
            transient=False,
        )
        self.task = None
        self.tokens = 0
        self.t0 = 0.0

        def start(prompts: int, tokens: int) -> None:
            self.progress.start()
            self.t0 = time.perf_counter()
            self.task = self.progress.add_task("scoring", total=prompts, rate="")

        def batch(prompts: int, tokens: int) -> None:
            self.tokens += tokens
            done = self.progress.tasks[0].completed + prompts
            dt = max(time.perf_counter() - self.t0, 1e-9)
            self.progress.update(
                self.task,
                advance=prompts,
                rate=f"{done / dt:,.1f} prompts/s  {self.tokens / dt:,.0f} tok/s",
            )

        return Hooks(
            status=lambda msg: self.console.print(
                f"[dim]{msg}[/dim]", soft_wrap=True, highlight=False
            ),
            start=start,
            batch=batch,
        )

    def __exit__(self, *exc: Any) -> None:
        self.progress.stop()
