"""Reading a dataset from the Hugging Face hub with the `datasets` package: offline fast
when the hub's host does not resolve, and every failure as one line saying what to do."""

from __future__ import annotations

import contextlib
import importlib
import re
from collections.abc import Iterator
from typing import Any

from gain_curate.errors import InputError
from gain_curate.inputs.readers import Raw, one_line, table_sha256
from gain_curate.runtime.hub import resolves

OFFLINE_HINT = "give `data` path/to/file.jsonl|.json|.parquet|.csv (a local copy) instead"

_COMMIT = re.compile(r"[0-9a-f]{40}")


def read_hub(hub_id: str, config: str | None, revision: str | None, split: str) -> Raw:
    """`datasets` loads (and caches) the split; the manifest records the commit it resolved."""
    what = f"cannot load '{hub_id}' from the Hugging Face hub"
    try:
        datasets = importlib.import_module("datasets")
    except ImportError:  # a broken install: datasets is a dependency
        why = "the `datasets` package is missing (pip install datasets)"
        raise InputError(f"{what}: {why}, or {OFFLINE_HINT}") from None
    try:
        with _hub_session(datasets):
            builder = datasets.load_dataset_builder(hub_id, config, revision=revision)
            builder.download_and_prepare()
            ds = builder.as_dataset(split=split)
    except Exception as e:  # offline, unknown id, config or split: all one line
        raise InputError(f"{what}: {_hub_why(e, split)}") from e
    table = ds.with_format("arrow")[:]
    commit = (
        builder.hash
        if isinstance(builder.hash, str) and _COMMIT.fullmatch(builder.hash)
        else revision
    )
    return Raw(table, "hub", None, table_sha256(table), hub_id, hub_id, commit)


@contextlib.contextmanager
def _hub_session(datasets: Any) -> Iterator[None]:
    """Quiet hub calls that fail fast: when the hub's host does not resolve, go offline at
    once (a cached copy still loads) instead of five logged retries over ~20 seconds."""
    import logging

    from huggingface_hub import constants

    offline = constants.HF_HUB_OFFLINE or not resolves(constants.ENDPOINT)
    saved = constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE
    loggers = [logging.getLogger(name) for name in ("huggingface_hub", "datasets")]
    levels = [lg.level for lg in loggers]
    constants.HF_HUB_OFFLINE = datasets.config.HF_HUB_OFFLINE = offline
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE = saved
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _hub_why(e: Exception, split: str) -> str:
    """What went wrong loading from the hub, and what to do, in one line."""
    text = one_line(e)
    if isinstance(e, ConnectionError) or "OfflineModeIsEnabled" in text or "not cached" in text:
        return (
            "the hub cannot be reached (offline or no network) and no copy is cached; "
            f"{OFFLINE_HINT}"
        )
    if type(e).__name__ == "DatasetNotFoundError":
        return f"no such dataset, or it is gated or private; check the id, or {OFFLINE_HINT}"
    if "split" in text.lower() and split in text:
        return f"no split '{split}' ({text}); pass `split`"
    return f"{type(e).__name__}: {text}; check the id and config, or {OFFLINE_HINT}"
