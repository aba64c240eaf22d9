"""Command line: parse, call, print; no logic lives here. `main` is the `gain-curate` entry
point; importing the verb modules attaches their commands to it.

    app.py          the group: one-line failures and exit codes, --version, --help
    score.py        score, merge
    curriculum.py   schedule, export
    checks.py       inspect, validate, predict
    options.py      flags shared by several verbs, and score's flags -> ScoreConfig
    views.py        the tables; progress.py: progress bars on stderr
"""

from gain_curate.cli import checks, curriculum, score  # noqa: F401  (registers the verbs)
from gain_curate.cli.app import main

__all__ = ["main"]
