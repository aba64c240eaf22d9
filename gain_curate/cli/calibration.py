"""`validate --pass-rate-key/--pass-rates`: its flags checked, the calibration called
(checks/calibrate.py), and what it prints: the verdict line first, then the recommended
ranking beside the baselines, then every ranking against the same pass rates. No logic:
every number shown here was computed in checks/."""

from __future__ import annotations

import json
from typing import Any

import click

from gain_curate.cli.views import _console
from gain_curate.progress import on_stderr

CALIBRATE_FLAGS = ("run", "out", "seed", "sample", "as_json", "pass_rate_key", "pass_rates")


def calibrate(kw: dict[str, Any], given: list[Any]) -> None:
    """validate's calibration mode (checks/calibrate.py): flags, the run, the print."""
    from gain_curate.checks.calibrate import run_calibrate

    if kw["run"] is None:
        raise click.UsageError(
            "--pass-rate-key/--pass-rates calibrate a scored run: give --run OUT "
            "(scored with --keep-states)"
        )
    other = [p.opts[0] for p in given if p.name not in (*CALIBRATE_FLAGS, "pass_rate_k_key")]
    if other:
        raise click.UsageError(
            f"--pass-rate-key/--pass-rates read the run's states and generate nothing: "
            f"drop {', '.join(other)}"
        )
    sample = kw["sample"] if any(p.name == "sample" for p in given) else None
    with on_stderr(quiet=kw["as_json"]):  # the library's steps (gain_curate.progress)
        result = run_calibrate(
            kw["run"],
            kw["out"],
            pass_rate_key=kw["pass_rate_key"],
            pass_rates_file=kw["pass_rates"],
            k_key=kw["pass_rate_k_key"],
            sample=sample,
            seed=kw["seed"],
        ).to_json()
    if kw["as_json"]:
        click.echo(json.dumps(result, indent=2))
        return
    print_calibration(result)
    click.echo(f"table: {kw['out'] / 'validate.parquet'}  json: {kw['out'] / 'validate.json'}")


def _interval(f: dict[str, Any]) -> str:
    v, (lo, hi) = f["spearman_p"], f["spearman_p_interval"]
    out = "n/a" if v is None else f"{v:+.2f}"
    return out + (f" [{lo:+.2f}, {hi:+.2f}]" if lo is not None and hi is not None else "")


def print_calibration(result: dict[str, Any]) -> None:
    from rich.table import Table

    from gain_curate.bootstrap import format_estimate

    click.echo(f"verdict: {result['verdict']}")
    rates, probe = result["pass_rates"], result["probe"]
    n = result["sample"]
    t = Table(
        title=f"which ranking: {n:,} prompts of {result['run']} with a pass rate "
        f"({rates['source']}; mean {rates['mean']:.3f}, "
        f"{100 * rates['zero_variance_share']:.0f}% at 0 or 1)"
    )
    t.add_column("ranking")
    t.add_column("Spearman with p [95%]", justify="right")
    t.add_column("AUROC zero-variance last", justify="right")
    t.add_column("how")
    rows = [("learnability (probe)", probe, f"nested CV, {probe['features']} refit on all")]
    rows += [
        ("length (shortest first)", result["baselines"]["length"], "bootstrap"),
        ("angle (gain_score)", result["baselines"]["angle"], "bootstrap"),
    ]
    for label, f, how in rows:
        a = f["auroc_zero_variance"]
        t.add_row(label, _interval(f), "n/a" if a is None else f"{a:.2f}", how)
    console = _console()
    console.print(t)
    chosen = ", ".join(c["features"] for c in probe["chosen_per_outer_fold"])
    click.echo(f"probe: outer folds chose {chosen}; interval: {probe['interval']}")
    ranked = result["rankings"]
    t = Table(title="every ranking against the same pass rates (held-out predictions fixed)")
    t.add_column("ranking (high first)")
    for col in ("Spearman with p", "length held fixed", "P(zero-variance ranked higher)"):
        t.add_column(col, justify="right")
    t.add_column("curriculum zero-variance share", justify="right")
    for label, row in ranked["rankings"].items():
        t.add_row(
            label,
            format_estimate(row["spearman_pass_rate"], show_n=False),
            format_estimate(row["partial_spearman_pass_rate_given_length"], show_n=False),
            format_estimate(row["auroc_zero_variance"], signed=False, show_n=False),
            format_estimate(row["curriculum_zero_variance_share"], signed=False, show_n=False),
        )
    console.print(t)
    rec = result["recommended"]
    if rec["probe"]:
        click.echo(f"apply it: gain-curate predict {result['run']} --probe '{rec['probe']}'")
    click.echo(f"train on it: --rank-by {rec['ranking']}")
    for line in ranked.get("uncertainty", []):
        click.echo(f"uncertainty: {line}")
