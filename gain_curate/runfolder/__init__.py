"""The run folder on disk: every file written whole or not at all (store.py), the typed
records of what crosses files (records.py), and the view every reader gets from
`open_run(out)` (run.py)."""
