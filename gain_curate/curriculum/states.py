"""What the online learnability curriculum reads from a scored run: its kept prefill states
(OUT/states.npz, `score --keep-states`), aligned to the schedule's prompts by gain_uid, and
a saved probe to start from (validate's OUT/probes/*.npz), rewritten as one weight vector.

The states stay float16 (2 bytes per value: N = 1,000,000 prompts of SmolLM2's 576 values
is 1.15 GB on disk and in memory); the probe reads them in float32 blocks.
"""

from __future__ import annotations

import json
import re
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from gain_curate.curriculum.learner import StartProbe
from gain_curate.errors import InputError
from gain_curate.runfolder import store

ID_ARRAYS = ("row", "gain_uid")


def states_path(where: str | Path) -> Path:
    """A run folder (its states.npz) or a states.npz file; one line when neither is there."""
    p = Path(where).expanduser()
    path = p / store.STATES if p.is_dir() else p
    if not path.is_file():
        raise InputError(
            f"`states` {where}: no {store.STATES} there; score the run with `keep_states` and "
            "give its folder"
        )
    return path


def pick_feature(names: Sequence[str], feature: str | None) -> str:
    """The array to read: `feature` when given, else the first prompt_end@L<k> (the state at
    the end of the prompt), else last_token."""
    arrays = [n for n in names if n not in ID_ARRAYS]
    if feature is not None:
        base = re.sub(r"@L-?\d+$", "", feature)
        for name in (feature, base):
            if name in arrays:
                return name
        raise InputError(
            f"`feature` {feature!r} is not in the states (they hold {', '.join(arrays)}): "
            "name one of those"
        )
    ends = sorted(n for n in arrays if n.startswith("prompt_end@"))
    if ends:
        return ends[0]
    if "last_token" in arrays:
        return "last_token"
    raise InputError(f"the states hold no prompt state ({', '.join(arrays) or 'nothing'})")


def load_states(
    where: str | Path, uids: Sequence[str], feature: str | None = None
) -> tuple[np.ndarray, str]:
    """(len(uids), d) float16 states in the order of `uids` (the schedule's positions), and
    the array's name. Prompts without states (not in the file) get the column mean, so the
    probe predicts them its intercept."""
    path = states_path(where)
    got = store.read_npz(path)
    name = pick_feature(list(got), feature)
    x, have = got[name], got["gain_uid"]
    at = {str(u): i for i, u in enumerate(have)}
    idx = np.array([at.get(str(u), -1) for u in uids], np.int64)
    if (idx < 0).all():
        raise InputError(
            f"{path} holds none of the trainer's prompts (no gain_uid in common): give the "
            "states of the run the shards came from"
        )
    out = x[np.maximum(idx, 0)].astype(np.float16)
    if (idx < 0).any():
        out[idx < 0] = x.astype(np.float32).mean(0).astype(np.float16)
    return out, name


def load_start_probe(path: str | Path, feature: str) -> StartProbe:
    """A probe saved by `validate` (ridge on standardised states: coef, mean, scale and its
    JSON info) as predict(x) = x @ weight + bias; one line when it is not one, or reads
    another state than `feature`."""
    p = Path(path).expanduser()
    try:
        with np.load(p, allow_pickle=False) as z:
            coef, mean, scale = z["coef"], z["mean"], z["scale"]
            info = json.loads(str(z["info"]))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as e:
        raise InputError(
            f"`probe` {path}: not a probe `validate` saved ({e}); give OUT/probes/learnability.npz"
        ) from None
    names = str((info.get("meta") or {}).get("features", "")).split("+")
    same = len(names) == 1 and (
        names[0] == feature or ("@" not in feature and re.sub(r"@L-?\d+$", "", names[0]) == feature)
    )
    if not same:
        raise InputError(
            f"`probe` {path} reads {'+'.join(names)}, the online probe reads {feature}: give "
            f"`feature` {names[0]} (one state array), or a probe fit on {feature}"
        )
    weight = coef / scale
    return StartProbe(weight.astype(np.float64), float(info["intercept"] - mean @ weight))
