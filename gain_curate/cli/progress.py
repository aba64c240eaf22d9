"""Progress on stderr for the long commands: `showing_progress` (one bar per step the library
reports: validate's scoring, supervised gradients, generation, GRPO gradients; calibration's
refits) and `ScoreProgress` (score's and merge's steps and status lines). Both show the
library's own steps (a model's one-time conversion, merge's reading and writing) through
the one channel, gain_curate.progress, on the same bars: a bar with an ETA on a terminal, a
plain line every 30 s in a log. No logic."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

from gain_curate.progress import Bars, showing


@contextlib.contextmanager
def showing_progress(quiet: bool) -> Iterator[Bars]:
    """Show every step and note the library reports inside this block (gain_curate.progress)
    on stderr, one bar each; nothing when `quiet`."""
    from rich.console import Console

    bars = Bars(Console(stderr=True, quiet=quiet))
    with showing(bars):
        bars.start()
        try:
            yield bars
        finally:
            bars.stop()


class ScoreProgress:
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
        self.shown = contextlib.ExitStack()
        self.shown.enter_context(showing(self.bars))
        self.bars.start()

        def start(prompts: int, tokens: int) -> None:
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
        self.shown.close()
