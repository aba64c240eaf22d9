"""What the CLI prints: rich tables and progress bars over results the library returns.
No logic: every number shown here was computed elsewhere."""

from __future__ import annotations

from typing import Any

import click

PIPED_WIDTH = 200  # columns when stdout is not a terminal (rich's default 80 wraps the tables)


def _console() -> Any:
    """A console for stdout: the terminal's width, or PIPED_WIDTH when piped or redirected,
    so a log or `| less` holds whole table rows."""
    from rich.console import Console

    console = Console()
    return console if console.is_terminal else Console(width=PIPED_WIDTH)


def print_validate(result: dict[str, Any]) -> None:
    """validate's tables over its JSON (what --json prints): the supervised check, then with
    rollouts the rankings against them, what each serves, the zero-variance filter."""
    console = _console()
    cell = _cell(result["sample"])
    console.print(_supervised_table(result, cell))
    for line in result.get("uncertainty", []):
        click.echo(f"uncertainty: {line}")
    rl = result.get("rollouts")
    if not rl:
        return
    console.print(_rl_table(rl, result["sample"], cell))
    console.print(_served_table(rl, cell))
    click.echo("AUROC below 0.5: the ranking puts zero-variance groups (nothing to learn) lower")
    if rl["curriculum"].get("note"):
        click.echo(f"note: {rl['curriculum']['note']}")
    console.print(_zero_variance_table(rl, result["sample"]))
    click.echo(
        f"completions: {rl['mean_completion_tokens']:.0f} tokens on average; "
        f"{100 * rl['truncated_share']:.0f}% cut off at {rl['settings']['max_new_tokens']} "
        "tokens before ending"
    )
    click.echo(f"verdict: {rl['verdict']}")
    for line in rl.get("uncertainty", []):
        click.echo(f"uncertainty: {line}")
    for line in rl.get("warnings", []):
        click.echo(f"warning: {line}")


def _cell(n: int) -> Any:
    """An estimate's cell, with its sample size only where it differs from n."""
    from gain_curate.bootstrap import format_estimate

    def cell(v: Any, signed: bool = True) -> str:
        show_n = isinstance(v, dict) and v.get("n") != n
        return format_estimate(v, signed=signed, show_n=show_n)

    return cell


def _supervised_table(result: dict[str, Any], cell: Any) -> Any:
    from rich.table import Table

    n = result["sample"]
    t = Table(title=f"does the signal hold? {result['model']}, {n} prompts, {result['weight']}")
    t.add_column("Spearman of ||grad||_F with")
    t.add_column("rho [95% bootstrap interval]", justify="right")
    intervals = result.get("intervals", {})  # the same keys with bootstrap intervals
    for key, label in (
        ("spearman_grad_vs_score", "gain_score"),
        ("spearman_grad_vs_c_intra", "C_intra"),
        ("spearman_grad_vs_c_inter", "C_inter"),
        ("spearman_grad_vs_question_tokens", "question length"),
        ("partial_spearman_grad_vs_score_given_length", "gain_score, length held fixed"),
    ):
        t.add_row(label, cell(intervals.get(key, result[key])))
    return t


def _rl_table(rl: dict[str, Any], n: int, cell: Any) -> Any:
    from rich.table import Table

    st, boot = rl["settings"], rl["bootstrap"]
    t = Table(
        title=f"the RL side: K = {st['k']} rollouts per prompt (T = {st['temperature']:g}, up to "
        f"{st['max_new_tokens']} tokens), reward {rl['reward']}; Spearman of each ranking "
        f"with 95% intervals (n = {n}, {boot['resamples']:,} bootstrap resamples, "
        f"seed {boot['seed']})"
    )
    t.add_column("ranking (high first)")
    for col in ("pass rate p", "p (1 - p)", "GRPO ||grad||_F"):
        t.add_column(col, justify="right")
    for label, row in rl["rankings"].items():
        t.add_row(
            label,
            *(
                cell(row.get(f"spearman_{x}"))
                for x in ("pass_rate", "learnability", "grpo_grad_norm")
            ),
        )
        partial = [row[f"partial_spearman_{x}_given_length"] for x in ("pass_rate", "learnability")]
        if any(e["value"] is not None for e in partial):  # not for length itself
            t.add_row("  length held fixed", *(cell(e) for e in partial), "")
    return t


def _served_table(rl: dict[str, Any], cell: Any) -> Any:
    from rich.table import Table

    cur = rl["curriculum"]
    t = Table(
        title=f"what each ranking serves: the default schedule's first {cur['epochs']} steps "
        f"over a run of {cur['n_run']:,} prompts; uniform sampling serves "
        f"{cell(cur['uniform_share'], signed=False)} zero-variance groups"
    )
    t.add_column("ranking (high first)")
    for col in ("AUROC for a zero-variance group", "zero-variance share", "minus uniform"):
        t.add_column(col, justify="right")
    for label, row in rl["rankings"].items():
        t.add_row(
            label,
            cell(row["auroc_zero_variance"], signed=False),
            cell(row["curriculum_zero_variance_share"], signed=False),
            cell(row["curriculum_minus_uniform"]),
        )
    return t


def _zero_variance_table(rl: dict[str, Any], n: int) -> Any:
    from rich.table import Table

    t = Table(
        title=f"zero-variance groups: {rl['all_correct']} all correct, {rl['all_wrong']} all wrong "
        f"({100 * rl['zero_variance_share']:.0f}% of {n}); "
        f"mean pass rate {rl['pass_rate_mean']:.3f}"
    )
    for col in ("keep top by gain_score", "zero-variance dropped", "random subset drops"):
        t.add_column(col, justify="right")
    for row in rl["keep_top_by_score"]:
        est = row.get("dropped_by_score_interval") or {}
        pct = "n/a" if row["dropped_by_score"] is None else _percent(est)
        rnd = (
            "n/a" if row["dropped_by_random"] is None else f"{100 * row['dropped_by_random']:.0f}%"
        )
        t.add_row(f"{100 * row['keep']:.0f}% ({row['kept']})", pct, rnd)
    return t


def print_inspect(info: dict[str, Any]) -> None:
    from rich.table import Table

    from gain_curate.bootstrap import format_estimate

    console = _console()
    t = Table(title=f"{info['out']}  ({info['model']})", show_header=False)
    if info.get("data_source"):
        t.add_row(
            "data_source",
            f"{info['data_source']} ({info['data_source_from'] or 'how: not recorded'})",
        )
    t.add_row("rows", f"{info['rows']:,}")
    t.add_row("scored", f"{info['scored']:,}")
    for reason, k in info["unscored"].items():
        t.add_row(f"unscored: {reason}", f"{k:,}")
    t.add_row("duplicates (ranked after their first occurrence)", f"{info['duplicates']:,}")
    for key in ("score", "c_intra", "c_inter"):
        s = info[key]
        if s:
            t.add_row(
                key,
                f"min {s['min']:.4f}  p10 {s['p10']:.4f}  median {s['p50']:.4f}  "
                f"p90 {s['p90']:.4f}  max {s['max']:.4f}",
            )
    t.add_row(
        "spearman(score, question tokens) [95% interval]",
        format_estimate(info["spearman_score_vs_question_tokens_interval"]),
    )
    if info["difficulty_column"]:
        t.add_row(
            f"spearman(score, {info['difficulty_column']}) [95% interval]",
            format_estimate(info["spearman_score_vs_difficulty_interval"]),
        )
    console.print(t)
    # one line, never wrapped into a table cell: what was scored, and whether `prompt` is it
    click.echo(f"conversation: {info['conversation']}")
    for title, rows in (("top (sampled first)", info["top"]), ("bottom", info["bottom"])):
        tb = Table(title=title)
        tb.add_column("rank", no_wrap=True, min_width=5, justify="right")
        tb.add_column("score", no_wrap=True, min_width=7)
        tb.add_column("question", overflow="ellipsis", no_wrap=True, max_width=72)
        for r in rows:
            tb.add_row(str(r["rank"]), f"{r['score']:.4f}", " ".join(r["question"].split()))
        console.print(tb)
    if "plot" in info:
        click.echo(f"plot: {info['plot']['path']}")


def print_plan(rows: list[dict[str, Any]], n: int, width: int = 26) -> None:
    from rich.table import Table

    t = Table(title=f"GAIN-RL curriculum over {n:,} ranked prompts (rank 0 = highest score)")
    for col in (
        "epoch",
        "mu",
        "acc",
        "ang",
        "p10-p90 rank",
        f"0 {'where it draws':^{width - 4}} N",
        "next",
    ):
        t.add_column(col)
    step = max(1, len(rows) // 20)
    shown = sorted(
        {*range(0, len(rows), step), len(rows) - 1, *(i for i, r in enumerate(rows) if r["event"])}
    )
    for row in (rows[i] for i in shown):
        lo = row["rank_p10"] * width // n
        hi = max(row["rank_p90"] * width // n, lo + 1)
        bar = "·" * lo + "█" * (hi - lo) + "·" * (width - hi)
        ang = "-" if row["ang"] is None else f"{row['ang']:+.3f}"
        then = {"restart": "new pass", "uniform": "uniform"}.get(row["event"], "")
        t.add_row(
            str(row["epoch"]),
            f"{row['mu']:.0f}",
            f"{row['acc']:.2f}",
            ang,
            f"{row['rank_p10']}-{row['rank_p90']}",
            bar,
            then,
        )
    console = _console()
    console.width = max(console.width, 100)  # the bar column is unreadable when wrapped
    console.print(t)


def print_summary(result: Any, verb: str) -> None:
    """The run in a table titled by its verb; the times are the manifest's, as in --json."""
    from rich.table import Table

    from gain_curate.bootstrap import format_estimate

    m = result.manifest
    t = Table(title=f"gain-curate {verb}", show_header=False)
    t.add_row(
        "data_source", f"{m['input']['data_source']} ({m['input'].get('data_source_from', '')})"
    )
    t.add_row("rows", f"{m['counts']['rows']:,}")
    t.add_row("scored", f"{m['counts']['scored']:,}")
    for reason, k in m["counts"]["unscored"].items():
        t.add_row(f"unscored: {reason}", f"{k:,}")
    if m["counts"].get("duplicates"):
        t.add_row("duplicates (scored as their first occurrence)", f"{m['counts']['duplicates']:,}")
    t.add_row(
        "spearman(score, question tokens) [95% interval]",
        format_estimate(
            m["stats"].get("spearman_score_vs_question_tokens_interval")
            or m["stats"]["spearman_score_vs_question_tokens"]  # a run of an older release
        ),
    )
    what = "merge time" if verb == "merge" else "scoring time"
    t.add_row(
        what, f"{m['seconds']:.1f} s" + (" (this finished run was reused)" if result.reused else "")
    )
    t.add_row("shards", f"{result.out / 'data'} ({len(m['shards'])} file(s))")
    if split := m["input"].get("split"):
        t.add_row("split", f"{split} ({m['input'].get('split_from') or 'how: not recorded'})")
    t.add_row("manifest", str(result.out / "gain_manifest.json"))
    _console().print(t)
    if result.reused:
        click.echo(
            f"reused: {result.out} already holds this finished run (same flags, input and "
            "model); nothing was scored again; --overwrite scores it again"
        )
    if conv := m["signal"].get("conversation"):
        click.echo(f"conversation: {conv['note']}")
    click.echo(f"ranked shards: {result.out / 'data'}")
    click.echo("verl: " + " ".join(m["trainer_flags"]["verl"]))


def _percent(est: dict[str, Any]) -> str:
    """`75% [60%, 88%]`: a share with its bootstrap interval (as the JSON's estimate)."""
    if est.get("value") is None:
        return "n/a"
    out = f"{100 * est['value']:.0f}%"
    if est.get("low") is not None and est.get("high") is not None:
        out += f" [{100 * est['low']:.0f}%, {100 * est['high']:.0f}%]"
    return out
