"""Whether a schedule's parameters fit the run it draws over: one warning line per misfit,
saying what would fit; and the parameters a picture's title must name."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gain_curate.curriculum.state import EpochRecord

FAST_PASS_STEPS = 5  # a new pass of the whole ranking this often: it cycles, not a curriculum


def fit_warnings(n: int, params: Any, sigma: float, history: list[EpochRecord]) -> list[str]:
    """One line per parameter that does not fit a run of n prompts, with what would;
    `params` as given or resolved (the numbers named are the resolved ones)."""
    params = params.resolved(n) if hasattr(params, "resolved") else params
    out = []
    if sigma >= n / 2:
        out.append(
            f"sigma = {sigma:g} rank positions is at least half of the {n:,} prompts: the Gaussian "
            f"is nearly flat and the draws nearly uniform; try --sigma {max(1, round(n / 20))} "
            "(or --sigma 0.05N)"
        )
    if params.batch_size >= n / 2:
        out.append(
            f"--batch-size {params.batch_size} draws at least half of the {n:,} prompts every "
            "step, so the ranking barely changes what is drawn; "
            f"try at most {max(1, n // 10)} (N/10)"
        )
    passes = history[-1].passes if history else 0
    if passes and len(history) / passes <= FAST_PASS_STEPS:
        every = len(history) / passes
        out.append(
            f"mu sweeps the whole ranking every {every:.1f} steps ({passes} passes in "
            f"{len(history)} steps): a pass should take many steps; lower --adj-max (now "
            f"{params.adj_max:g}) or --n (now {params.n:g}), e.g. to about {max(1, n // 50)}"
        )
    return out


def title_params(params: Any, sigma: float, n: int) -> str:
    """Every schedule parameter given that differs from its default, for the plot's title
    (`params` as given: a scaled sigma, n, adj_max is not named)."""
    from dataclasses import fields

    from gain_curate.curriculum.schedule import ScheduleParams

    skip = {"batch_size", "sigma", "sigma_fraction", "angle", "at_end"}  # shown elsewhere
    parts = [
        f"{f.name}={getattr(params, f.name):g}"
        for f in fields(ScheduleParams)
        if f.name not in skip and getattr(params, f.name) not in (None, f.default)
    ]
    return ", ".join(parts)


def resolved_line(given: Any, n_prompts: int) -> str:
    """One line naming the numbers a schedule given `given` draws with over n_prompts (what
    the manifest records), and which of them were scaled to the run's N."""
    from gain_curate.curriculum.params import PAPER_N_PROMPTS

    p = given.resolved(n_prompts)
    sigma = f"{p.sigma:g}" + (f" ({p.sigma_fraction:g}N)" if p.sigma_fraction is not None else "")
    line = (
        f"schedule: B {p.batch_size}, sigma {sigma}, n {p.n:g}, adj [{p.adj_min:g}, "
        f"{p.adj_max:g}], alpha {p.alpha:g}, beta {p.beta:g}, mu0 {p.mu0:g}, seed {p.seed}"
    )
    scaled = given.scaled()
    if scaled:
        line += (
            f"; {', '.join(scaled)} scaled to the run: the paper's value x {n_prompts:,} / "
            f"{PAPER_N_PROMPTS:,} prompts"
        )
    return line
