"""The one record of a scored row, from the scorer to the shards (docs/design.md).

`score_part` fills a `ScoredRows` (one entry per input row it ran, columns as arrays),
writes it as a work part in PART_SCHEMA, and the merge reads the parts back into one;
`RankedRows` is the same record over every input row (unscored rows too) plus what ranking
adds; the shards carry it as the gain_* columns (GAIN_FIELDS), named from the same fields.
Every schema below is derived from RECORD, so a column is defined once.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import pyarrow as pa


@dataclass
class PrefillStats:
    """What the prefill did, for the manifest and the benchmark: a part's marker records it
    (`prefill`), the merge sums the parts' into the manifest's `prefill`."""

    prompts: int = 0
    tokens_run: int = 0  # real tokens through the model (shared prefix counted once)
    tokens_padded: int = 0  # B x T summed over batches
    shared_prefix_tokens: int = 0
    prompts_sharing_prefix: int = 0
    prompt_end_tokens: int = 0  # --keep-states: real tail tokens run after the questions
    oom_retries: int = 0
    seconds: float = 0.0  # the model's forward + the reduction only (what MFU divides by)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> PrefillStats:
        """A marker's `prefill` (older markers lack the later fields: 0)."""
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})


# field, Arrow type in a work part, Arrow type of its gain_* column in the shards
RECORD: tuple[tuple[str, pa.DataType, pa.DataType], ...] = (
    ("score", pa.float64(), pa.float64()),
    ("c_intra", pa.float64(), pa.float64()),
    ("c_inter", pa.float64(), pa.float64()),
    ("tokens_prefix", pa.int64(), pa.int32()),
    ("tokens_question", pa.int64(), pa.int32()),
    ("reason", pa.string(), pa.string()),
)
PART_SCHEMA = pa.schema([("row", pa.int64())] + [(name, part) for name, part, _ in RECORD])
_SHARD_NAME = {"reason": "gain_unscored_reason"}
GAIN_FIELDS = [
    pa.field("gain_uid", pa.string(), nullable=False),
    pa.field("gain_rank", pa.int64(), nullable=False),
    *(pa.field(_SHARD_NAME.get(name, f"gain_{name}"), shard) for name, _, shard in RECORD),
    pa.field("gain_duplicate_of", pa.string()),  # gain_uid of the first occurrence, else null
]
# `gain-curate predict` adds these two after the others (predict.py): a probe's predicted
# pass rate, and the learnability ranking (high p(1 - p) first) as a rank position.
PREDICT_FIELDS = [pa.field("gain_pred_pass", pa.float64()), pa.field("gain_learn_rank", pa.int64())]


@dataclass
class ScoredRows:
    """What one part's scoring found, by input row (sorted): the RECORD fields as arrays.
    NaN scores where the hidden states were not finite (reason says so)."""

    row: np.ndarray  # int64 input rows
    score: np.ndarray  # float64
    c_intra: np.ndarray
    c_inter: np.ndarray
    tokens_prefix: np.ndarray  # int64
    tokens_question: np.ndarray
    reason: list[str | None]

    def to_table(self) -> pa.Table:
        return pa.Table.from_arrays(
            [pa.array(getattr(self, f.name), type=f.type) for f in PART_SCHEMA],
            schema=PART_SCHEMA,
        )

    @classmethod
    def from_table(cls, table: pa.Table) -> ScoredRows:
        cols: dict[str, Any] = {}
        for f in PART_SCHEMA:
            values = table[f.name].to_pylist()
            if pa.types.is_string(f.type):
                cols[f.name] = values
            elif pa.types.is_floating(f.type):
                cols[f.name] = np.array([np.nan if v is None else v for v in values], np.float64)
            else:
                cols[f.name] = np.asarray(values, dtype=np.int64)
        return cls(**cols)


@dataclass
class RankedRows:
    """Per input row, in INPUT order; `order[r]` is the input row at rank r."""

    uids: list[str]
    answers: list[str | None]
    score: np.ndarray  # float64, NaN where unscored
    c_intra: np.ndarray
    c_inter: np.ndarray
    tokens_prefix: np.ndarray  # int64, -1 where never tokenized
    tokens_question: np.ndarray
    reasons: list[str | None]
    order: np.ndarray  # int64 permutation
    duplicate_of: list[int | None]  # input row of the first occurrence, None for originals


RECORD_FIELDS = tuple(f.name for f in fields(ScoredRows))
