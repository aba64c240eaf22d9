"""The run folder on disk: every file written whole or not at all (store.py), and the typed
records every reader gets from `open_run(out)` (run.py)."""
