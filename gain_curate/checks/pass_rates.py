"""Pass rates the user already has, matched to a scored run's rows (`validate --run OUT
--pass-rate-key KEY` or `--pass-rates FILE`): nothing is generated.

From the run: KEY names a column of its rows as the shards carry them (the input's own
columns; the input's `extra_info` fields stay under `extra_info`), dotted for nested fields
(`extra_info.pass_rate`); a dict key that itself holds dots is matched whole
(`extra_info.model_difficulty.Qwen2.5-7B`). From FILE (JSONL or Parquet): KEY (default
`pass_rate`) is its column, and each line names its prompt by `gain_uid` or, without that
column, by `question` (the question text the run read, extra_info.question). A rate must lie
in [0, 1]; K (--pass-rate-k-key: samples per prompt) must be a positive integer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gain_curate.errors import InputError

DEFAULT_FILE_KEY = "pass_rate"


@dataclass
class PassRates:
    """Per row of the run (in shard order): pass rate (NaN: none given) and samples K (NaN:
    not given); where they came from, in words."""

    rate: np.ndarray  # (N,)
    k: np.ndarray  # (N,)
    source: str
    unmatched: int = 0  # lines of a file that name no row of the run


def dotted(row: Any, key: str) -> Any:
    """The value under a dotted key in nested dicts; a dict key holding dots matches whole
    (the longest first). None when absent."""
    if key == "":
        return row
    if not isinstance(row, dict):
        return None
    if key in row:
        return row[key]
    parts = key.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        head = ".".join(parts[:cut])
        if head in row:
            return dotted(row[head], ".".join(parts[cut:]))
    return None


def _numbers(values: list[Any], what: str, where: str) -> np.ndarray:
    out = np.full(len(values), np.nan)
    for i, v in enumerate(values):
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise InputError(
                f"{what} in {where}: row {i} holds {v!r}, not a number; "
                "name a numeric column (dotted for a nested field)"
            )
        out[i] = float(v)
    return out


def _checked(rate: np.ndarray, k: np.ndarray, what: str, where: str) -> None:
    bad = np.isfinite(rate) & ((rate < 0) | (rate > 1))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise InputError(
            f"{what} in {where}: {rate[i]:g} (row {i}) is not a pass rate in [0, 1]; "
            "give the fraction of samples that passed (a count of correct samples: divide by K)"
        )
    badk = np.isfinite(k) & ((k < 1) | (k != np.round(k)))
    if badk.any():
        i = int(np.flatnonzero(badk)[0])
        raise InputError(
            f"samples per prompt in {where}: {k[i]:g} (row {i}) is not a positive integer"
        )


def from_rows(rows: list[dict[str, Any]], key: str, k_key: str | None, where: str) -> PassRates:
    """Pass rates from a column of the run's rows (dotted for nested fields)."""
    values = [dotted(r, key) for r in rows]
    if all(v is None for v in values):
        raise InputError(
            f"`pass_rate_key` {key}: no row of {where} has it; its columns: "
            f"{', '.join(available_keys(rows[:1]))}"
        )
    rate = _numbers(values, f"`pass_rate_key` {key}", where)
    k = np.full(len(rows), np.nan)
    if k_key:
        ks = [dotted(r, k_key) for r in rows]
        if all(v is None for v in ks):
            raise InputError(f"`pass_rate_k_key` {k_key}: no row of {where} has it")
        k = _numbers(ks, f"`pass_rate_k_key` {k_key}", where)
    _checked(rate, k, f"`pass_rate_key` {key}", where)
    return PassRates(rate, k, f"{where}, column {key}")


def available_keys(rows: list[dict[str, Any]], prefix: str = "") -> list[str]:
    """Every dotted key of the first row (nested dicts included), for an error line."""
    out = []
    for name, v in (rows[0] if rows else {}).items():
        out.append(prefix + name)
        if isinstance(v, dict):
            out.extend(available_keys([v], prefix + name + "."))
    return out


def read_file(path: Path) -> list[dict[str, Any]]:
    """The lines of a JSONL or Parquet file as dicts; one clear line when it is neither."""
    if not path.is_file():
        raise InputError(f"`pass_rates` {path}: no such file")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            return pq.read_table(path).to_pylist()
        except Exception as e:  # pyarrow raises several types for a bad file
            raise InputError(f"`pass_rates` {path}: not a readable Parquet file ({e})") from None
    rows = []
    with path.open(encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(
                    f"`pass_rates` {path}: line {i} is not JSON ({e.msg}); "
                    "give JSONL (one object a line) or a .parquet file"
                ) from None
            if not isinstance(row, dict):
                raise InputError(f"`pass_rates` {path}: line {i} is not a JSON object")
            rows.append(row)
    if not rows:
        raise InputError(f"`pass_rates` {path}: the file holds no rows")
    return rows


def from_file(
    path: Path, run_rows: list[dict[str, Any]], key: str | None, k_key: str | None
) -> PassRates:
    """Pass rates from FILE, matched to the run's rows by gain_uid, else by question text."""
    key = key or DEFAULT_FILE_KEY
    lines = read_file(path)
    by = "gain_uid" if any("gain_uid" in r for r in lines) else "question"
    if not any(by in r for r in lines):
        raise InputError(
            f"`pass_rates` {path}: its rows name no prompt: give each a gain_uid (the run's "
            "column) or a question (the question text)"
        )
    if all(dotted(r, key) is None for r in lines):
        raise InputError(
            f"`pass_rates` {path}: no row has {key!r}; its keys: "
            f"{', '.join(available_keys(lines[:1]))}; name the column with `pass_rate_key`"
        )
    rate = _numbers([dotted(r, key) for r in lines], f"column {key}", str(path))
    ks = (
        _numbers([dotted(r, k_key) for r in lines], f"column {k_key}", str(path))
        if k_key
        else np.full(len(lines), np.nan)
    )
    _checked(rate, ks, f"column {key}", str(path))
    seen: dict[Any, tuple[float, float]] = {}
    for r, p, k in zip(lines, rate, ks):
        name = r.get(by)
        if name is None or not np.isfinite(p):
            continue
        if name in seen and seen[name][0] != p:
            raise InputError(
                f"`pass_rates` {path}: {by} {str(name)[:60]!r} has two pass rates, "
                f"{seen[name][0]:g} and {p:g}; keep one line per prompt"
            )
        seen[name] = (float(p), float(k))
    mine = [
        r.get("gain_uid") if by == "gain_uid" else (r.get("extra_info") or {}).get("question")
        for r in run_rows
    ]
    got = [seen.get(m, (np.nan, np.nan)) for m in mine]
    matched = {m for m in mine if m in seen}
    if not matched:
        raise InputError(
            f"`pass_rates` {path}: none of its {len(seen):,} {by}s names a row of the run; "
            f"is it the run's file? (rows are matched by {by})"
        )
    return PassRates(
        np.array([g[0] for g in got]),
        np.array([g[1] for g in got]),
        f"{path}, column {key}, by {by}",
        unmatched=len(seen) - len(matched),
    )
