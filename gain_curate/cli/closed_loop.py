"""`schedule OUT --simulate --pass-rates FILE`: every ranking in a closed loop against known
pass rates (gain_curate.curriculum.closed_loop), one line each:

    zero-variance share, first 50 steps: uniform 0.496
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
import numpy as np

from gain_curate.cli.app import main
from gain_curate.cli.flags import as_flags


def closed_loop_options(f: Any) -> Any:
    """`schedule`'s --pass-rates and --group-size."""
    f = click.option(
        "--group-size",
        type=click.IntRange(min=2),
        default=8,
        show_default=True,
        help="With --pass-rates: completions per prompt in the simulated trainer (G).",
    )(f)
    return click.option(
        "--pass-rates",
        "pass_rates",
        type=click.Path(dir_okay=False, path_type=Path),
        help="With --simulate: known pass rates (validate's validate.parquet, or JSONL/Parquet "
        "of pass_rate by gain_uid or question): serve every ranking (uniform, angle, "
        "learnability, learnability-online) to a simulated trainer, one zero-variance line "
        "each, instead of the table.",
    )(f)


def run_closed_loop(out: Path, params: dict[str, Any], kw: dict[str, Any]) -> None:
    """`schedule --simulate --pass-rates FILE`: the loop's header, then one line per ranking
    (or --json)."""
    from gain_curate.curriculum.closed_loop import STEPS

    if not kw["simulate"]:
        raise click.BadParameter(
            "known pass rates drive a simulation, not a plan: add --simulate",
            param_hint="--pass-rates",
        )
    try:
        header, lines = zero_variance_lines(
            out, params, kw["pass_rates"], group_size=kw["group_size"], seed=kw["seed"]
        )
    except ValueError as e:
        raise click.ClickException(as_flags(str(e), main)) from None
    if kw["as_json"]:
        shares = {z.ranking: z.share for z in lines}
        why = {z.ranking: z.why for z in lines if z.share is None}
        out_json = {"closed_loop": header, "steps": STEPS, "zero_variance_share": shares}
        click.echo(json.dumps({**out_json, "not_simulated": why}, indent=2))
        return
    click.echo(header)
    for z in lines:
        click.echo(z.line(STEPS))


def zero_variance_lines(
    out: Path,
    params: dict[str, Any],
    pass_rates: Path,
    *,
    pass_rate_key: str | None = None,
    group_size: int = 8,
    seed: int = 0,
) -> tuple[str, list[Any]]:
    """The loop's header and one ZeroVariance per ranking, for the run in OUT. Pass rates are
    matched to its rows by gain_uid (or question), as `validate --pass-rates` matches them;
    learnability needs gain_learn_rank (`predict`), learnability-online the kept states."""
    from gain_curate.checks import pass_rates as pr
    from gain_curate.curriculum.closed_loop import compare, make_loop
    from gain_curate.runfolder.run import open_run

    run = open_run(out)
    table = run.table()
    rows = table.select([c for c in ("gain_uid", "extra_info") if c in table.column_names])
    rates = pr.from_file(Path(pass_rates), rows.to_pylist(), pass_rate_key, None)
    uids = table["gain_uid"].to_pylist()
    loop = make_loop(rates.rate, uids, params["batch_size"], group_size, seed=seed)
    learn = None
    if "gain_learn_rank" in table.column_names:
        learn = np.asarray(table["gain_learn_rank"].to_pylist(), np.int64)[loop.ranks]
    online = {"states": str(out)} if run.manifest.states is not None else None
    return loop.header(len(uids)), compare(loop, params, learn, online)
