"""`python -m gain_curate.cli` (torchrun -m gain_curate.cli score ...)."""

import sys

from gain_curate.cli import main

sys.exit(main())
