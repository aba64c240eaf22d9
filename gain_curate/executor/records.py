"""What crosses the executor's files, typed: how this process takes part (`Launch`), and
what its files under OUT/.gain-curate hold: run.json (`RunInfo`), a scored part before it
is written (`ScoredPart`), a rank's heartbeat (`RankState`). WorkDir (workdir.py) reads and
writes them; the JSON keys are the fields, in order."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gain_curate.inputs.sources import InputSpec
from gain_curate.runfolder.run import ModelInfo, input_spec
from gain_curate.runtime.resolve import Runtime
from gain_curate.scoring.record import PrefillStats

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa


@dataclass(frozen=True)
class Launch:
    """How this process takes part: alone (`single`), starting one worker per GPU
    (`spawn`), one rank of torchrun (`rank`), or one `--shard I/N` (`shard`)."""

    kind: str
    workers: int
    shard: tuple[int, int] | None  # (this process's index, how many) for rank and shard
    device: str  # where this process scores ("cuda" alone: the runtime's placement decides)
    why: str = ""  # how the device was chosen, for the console

    @property
    def leader(self) -> bool:
        """Whether this process may prepare and clear OUT (torchrun: rank 0 only)."""
        return self.kind != "rank" or self.shard[0] == 0


@dataclass(frozen=True)
class RunInfo:
    """OUT/.gain-curate/run.json: what every other process of the run reads instead of
    deciding again. Field order = the JSON's key order (written with asdict)."""

    config_hash: str
    key: str  # scoring.config.request_key: the flags + cheap input/model fingerprints
    launch: str | None  # scoring.config.launch_id of the launch that prepared or last took it
    config: Mapping[str, Any]  # scoring.config.config_dict: the ScoreConfig as JSON
    runtime: Runtime
    model: ModelInfo
    input: InputSpec
    rows: int
    parts: tuple[tuple[int, int], ...]  # part -> [first, last) batch
    prefix_ids: list[int] | None
    pad_id: int = 0

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> RunInfo:
        return cls(
            config_hash=d["config_hash"],
            key=d["key"],
            launch=d.get("launch"),
            config=d["config"],
            runtime=Runtime.from_dict(d["runtime"]),
            model=ModelInfo.from_json(d["model"]),
            input=input_spec(d["input"]),
            rows=int(d["rows"]),
            parts=tuple((int(a), int(b)) for a, b in d["parts"]),
            prefix_ids=d["prefix_ids"],
            pad_id=int(d.get("pad_id", 0)),
        )


@dataclass(frozen=True)
class RankState:
    """OUT/.gain-curate/ranks/rank-NNNNN.json: a torchrun rank's last report (WorkDir.beat)."""

    rank: int
    state: str  # "loading" | "scoring" | "done" | "failed"
    time: float  # time.time() of the report
    pid: int
    launch: str | None = None
    finished: int | None = None  # the part it finished last
    error: str | None = None  # "failed": why, one line


@dataclass(frozen=True)
class ScoredPart:
    """One scored part (score.score_part): its rows in PART_SCHEMA, what the prefill did
    under which token budget, and with `keep_states` its pooled states by input row."""

    table: pa.Table
    stats: PrefillStats
    token_budget: int
    states: dict[str, np.ndarray] | None = None
