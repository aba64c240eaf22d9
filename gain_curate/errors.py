"""Typed errors the library raises; the CLI turns each into one line and a non-zero exit."""


class GainCurateError(Exception):
    """An expected failure: the message is one line saying what, where, and what to do."""


class InputError(GainCurateError):
    """The dataset cannot be read or does not have what scoring needs."""


class ModelError(GainCurateError):
    """The model or tokenizer cannot be loaded or lacks what scoring needs."""


class OutputError(GainCurateError):
    """The output folder cannot be written, or holds a run made with another config."""
