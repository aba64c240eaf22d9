"""The typed records of a finished run folder (what crosses files): a shard, the model,
the kept states, the counts; with the JSON records they are written as. run.py assembles
them into a Manifest (open_run); store.py writes shards and returns their Shard records."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, TypedDict

from gain_curate.inputs.sources import InputSpec


class ShardJSON(TypedDict):
    """A shard's entry in the manifest's `shards`."""

    path: str
    rows: int
    sha256: str
    rank_range: list[int]  # [first, last]


class StatesJSON(TypedDict):
    """The manifest's `states`."""

    path: str
    rows: int
    sha256: str
    dtype: str
    layer: int
    hidden_size: int
    probe_layers: list[int]
    features: list[str]
    arrays: dict[str, str]


@dataclass(frozen=True)
class Shard:
    """One public shard: OUT/path holds the rows ranked rank_range[0]..rank_range[1]."""

    path: str  # relative to OUT: data/train-00000-of-00001.parquet
    rows: int
    sha256: str
    rank_range: tuple[int, int]  # first and last rank, both included

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Shard:
        first, last = d["rank_range"]
        return cls(str(d["path"]), int(d["rows"]), str(d["sha256"]), (int(first), int(last)))

    def to_json(self) -> ShardJSON:
        """The manifest's entry, key order as written (store.write_shards)."""
        return ShardJSON(
            path=self.path, rows=self.rows, sha256=self.sha256, rank_range=list(self.rank_range)
        )


@dataclass(frozen=True)
class ModelInfo:
    """The manifest's `model`: which weights, where they ran, the hooked layer."""

    name: str
    path: str | None
    revision: str | None
    dtype: str
    device: str
    layer: int
    num_layers: int
    hidden_size: int
    chat_template_sha256: str
    chat_template_file: str | None = None
    dtype_requested: str | None = None
    hardware: str | None = None

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> ModelInfo:
        return known(cls, d)


@dataclass(frozen=True)
class StatesInfo:
    """The manifest's `states` (score with `keep_states`): OUT/path, one row per input row."""

    path: str
    rows: int
    sha256: str
    dtype: str
    layer: int
    hidden_size: int
    probe_layers: tuple[int, ...] = ()
    features: tuple[str, ...] = ()
    arrays: Mapping[str, str] = field(default_factory=dict)  # array name -> what it holds

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> StatesInfo:
        s = known(cls, d)
        return replace(s, probe_layers=tuple(map(int, s.probe_layers)), features=tuple(s.features))

    def to_json(self) -> StatesJSON:
        """The manifest's `states`, key order as written (merge.write_states)."""
        return StatesJSON(
            path=self.path,
            rows=self.rows,
            sha256=self.sha256,
            dtype=self.dtype,
            layer=self.layer,
            hidden_size=self.hidden_size,
            probe_layers=list(self.probe_layers),
            features=list(self.features),
            arrays=dict(self.arrays),
        )


@dataclass(frozen=True)
class Counts:
    """The manifest's `counts`: rows, how many scored, the rest by reason."""

    rows: int
    scored: int
    unscored: Mapping[str, int]
    duplicates: int = 0


class ManifestJSON(TypedDict, total=False):
    """gain_manifest.json as written, key order = the order on disk (merge.build_manifest,
    then the sections later commands add with update_manifest). Readers get the typed view
    from run.open_run; writers update this record and write it back whole."""

    tool: str
    version: str
    created_at: str
    config_hash: str
    input: dict[str, Any]  # sources.InputSpec
    model: dict[str, Any]  # run.ModelInfo
    signal: dict[str, Any]
    shards: list[ShardJSON]
    counts: dict[str, Any]
    stats: dict[str, Any]
    seconds: float | None
    prefill: dict[str, Any]
    trainer_flags: dict[str, list[str]]
    runtime: dict[str, Any]  # resolve.Runtime
    states: StatesJSON  # score with `keep_states`
    schedule: dict[str, Any]  # `gain-curate schedule`
    exports: dict[str, Any]  # `gain-curate export`
    prediction: dict[str, Any]  # `gain-curate predict`


def input_spec(d: Mapping[str, Any]) -> InputSpec:
    """The manifest's (or run.json's) `input` as the InputSpec it was written from."""
    return known(InputSpec, d)


def known(cls: Any, d: Mapping[str, Any]) -> Any:
    """cls from the keys it knows (a later version's extra keys are left to `raw`)."""
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in d.items() if k in names})
