"""The command group: how every command fails (one line, an exit code), the version, the
help. The verbs live beside it: score.py (score, merge), curriculum.py (schedule, export),
checks.py (inspect, validate, predict)."""

from __future__ import annotations

import sys
from typing import Any

import click

from gain_curate import __version__
from gain_curate.errors import GainCurateError


def _fail(e: GainCurateError) -> click.ClickException:
    from gain_curate.cli.flags import as_flags

    return click.ClickException(as_flags(str(e), main))


class _Command(click.Command):
    """A command whose unexpected exceptions become one line naming the log that holds the
    traceback (in the run folder when the command has one), and whose expected errors
    (GainCurateError) are one line even where a command does not catch them."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except GainCurateError as e:
            raise _fail(e) from None
        except Exception as e:
            from gain_curate.errors import report_internal_error

            raise click.ClickException(report_internal_error(e, ctx.params.get("out"))) from None


class _Cli(click.Group):
    """The command group: every failure is one line on stderr and a non-zero exit (2 for
    usage: an unknown verb or flag, a missing or invalid value; 1 for everything else)."""

    command_class = _Command

    def main(
        self,
        args: Any = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.exceptions.NoArgsIsHelpError as e:  # bare `gain-curate`: the help
            click.echo(e.ctx.get_help())
            sys.exit(0)
        except click.UsageError as e:  # click's usage block + hint + message -> one line
            verb = next(
                (a for a in (sys.argv[1:] if args is None else args) if a in self.commands), None
            )
            where = (
                e.ctx.command_path
                if e.ctx is not None
                else " ".join(filter(None, [prog_name or "gain-curate", verb]))
            )
            message = " ".join(e.format_message().split())
            click.echo(f"Error: {message} (see `{where} --help`)", err=True)
            sys.exit(e.exit_code)
        except click.ClickException as e:
            e.show()
            sys.exit(e.exit_code)
        except click.Abort:
            click.echo("Error: interrupted; nothing was published (a rerun resumes)", err=True)
            sys.exit(130)
        sys.exit(code if isinstance(code, int) else 0)


@click.group(cls=_Cli, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="gain-curate")
def main() -> None:
    """Rank RL prompts by GAIN-RL angle concentration, before you train.

    \b
    Example:
      gain-curate score --model Qwen/Qwen2.5-7B-Instruct --data gsm8k --out runs/gsm8k
      # verl: 'data.train_files=[runs/gsm8k/data/train-00000-of-00001.parquet]' data.shuffle=False
    """
