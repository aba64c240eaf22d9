"""What a scoring run was asked to do: `ScoreConfig` (the settings), the `ScoreResult`, and
the two fingerprints that decide whether a folder holds this run. Progress is reported
through gain_curate.progress.

- `request_key(cfg)`: the flags plus a cheap fingerprint of the input file and model folder
  (path, size, mtime), known before anything is read; a process whose key matches the
  run's reuses its prepared state instead of reading, hashing and tokenizing again.
- the config hash (prepare.py): what determines the scores and their bytes, from the
  input's content hash, the model, the template and the runtime. Never the parallelism.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gain_curate.errors import InputError
from gain_curate.inputs.template import ScoringTemplate


@dataclass(frozen=True)
class ScoreConfig:
    data: str
    model: str
    out: Path
    template: ScoringTemplate = field(default_factory=ScoringTemplate)
    question_key: str | None = None
    answer_key: str | None = None
    split: str | None = None  # None: from the input (sources.input_split), set on creation
    limit: int | None = None
    layer: int | None = None
    inter_weight: float = 1.0
    max_tokens: int = 4096
    dtype: str = "auto"
    device: str = "auto"
    token_budget: int | None = None
    kernel: str = "auto"
    share_prefix: bool = True
    part_rows: int | None = None  # rows per part; None: about PART_SECONDS of work (prepared.py)
    workers: int = 1  # processes sharing the parts: the part cut gives each one at least one
    chat_template: str | None = None  # a Jinja file for models that ship none
    rows_per_shard: int = 50_000
    overwrite: bool = False
    data_source: str | None = None  # verl data_source for every row; None: named from the input
    train_prompt: str = "conversation"  # `prompt` holds the scored conversation | "question"
    # Template fields given as flags; the others follow the data source's defaults
    # (template.resolve_template). None: `template` exactly as given (library callers).
    template_flags: tuple[str, ...] | None = None
    # Keep each prompt's pooled hidden states (OUT/states.npz) for a learnability probe. Part
    # of the request key (a rerun with it must write them), never of the config hash: the
    # scores and the shards are the same bytes with it or without it.
    keep_states: bool = False
    # --keep-states' layers for the prompt-end residual stream (probe_layers.py); None: the
    # defaults at 1/2, 2/3 and 5/6 of the depth. In the request key only with keep_states.
    probe_layers: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.probe_layers is not None and not self.keep_states:
            raise InputError("`probe_layers` needs `keep_states`: set both, or neither")
        if self.probe_layers is not None:  # a list from run.json: hashable like the rest
            object.__setattr__(self, "probe_layers", tuple(int(k) for k in self.probe_layers))
        if self.split is None:  # test.jsonl: test; the rest (train files, presets, hub): train
            from gain_curate.inputs.sources import input_split

            object.__setattr__(self, "split", input_split(self.data, None)[0])


# How the work is split never changes the scores: these flags are not part of a run's identity.
PARALLEL_FIELDS = ("workers", "part_rows", "overwrite", "out")


@dataclass(frozen=True)
class ScoreResult:
    out: Path
    manifest: dict[str, Any]
    seconds: float  # what this command took (manifest["seconds"]: what the run took)
    reused: bool = False  # the folder held this finished run: nothing was scored again


def config_dict(cfg: ScoreConfig) -> dict[str, Any]:
    """The ScoreConfig as JSON (run.json's `config`, the request key): its own fields, so a
    TypedDict would only copy them; `out` a string, the template its record."""
    d = asdict(cfg)
    d["out"] = str(cfg.out)
    d["template"] = cfg.template.to_dict()
    return d


def config_from_dict(d: dict[str, Any]) -> ScoreConfig:
    template = ScoringTemplate.from_dict(d["template"])
    known = {k: v for k, v in d.items() if k in ScoreConfig.__dataclass_fields__}
    return ScoreConfig(**{**known, "out": Path(d["out"]), "template": template, "overwrite": False})


def _fingerprint(spec: str | None) -> Any:
    """A local file or folder: its resolved path, size and mtime (a folder: of its files);
    anything else (a preset, a hub id): the string itself."""
    if spec is None:
        return None
    path = Path(spec).expanduser()
    try:
        if path.is_file():
            st = path.stat()
            return [str(path.resolve()), st.st_size, st.st_mtime_ns]
        if path.is_dir():
            stats = [
                (f.name, f.stat().st_size, f.stat().st_mtime_ns)
                for f in sorted(path.iterdir())
                if f.is_file()
            ]
            return [str(path.resolve()), stats]
    except OSError:
        pass
    return spec


def request_key(cfg: ScoreConfig) -> str:
    """The flags that decide the scores plus a cheap fingerprint of the input and model."""
    d = {k: v for k, v in config_dict(cfg).items() if k not in PARALLEL_FIELDS}
    if not cfg.keep_states:  # a run without states has the key it had before probe layers
        d.pop("probe_layers")
    d["data"] = _fingerprint(cfg.data)
    d["model"] = _fingerprint(cfg.model)
    d["chat_template"] = _fingerprint(cfg.chat_template)
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def config_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """`` `limit`: 200 in the run, 300 now`` for every setting that differs (the parallelism
    aside)."""
    out = []
    for key in sorted(set(old) | set(new)):
        if key in PARALLEL_FIELDS or old.get(key) == new.get(key):
            continue
        if key == "template":
            for k in sorted(set(old[key]) | set(new[key])):
                if old[key].get(k) != new[key].get(k):
                    out.append(
                        f"template {k}: {_short(old[key].get(k))} in the run, "
                        f"{_short(new[key].get(k))} now"
                    )
            continue
        out.append(f"`{key}`: {_short(old.get(key))} in the run, {_short(new.get(key))} now")
    return out


def _short(v: Any, width: int = 40) -> str:
    text = json.dumps(v, default=str) if not isinstance(v, str) else v
    return text if len(text) <= width else text[: width - 3] + "..."


def launch_id(env: dict[str, str] | os._Environ[str] | None = None) -> str | None:
    """What every process of ONE launch shares and the next launch does not: set by the
    user (GAIN_CURATE_LAUNCH_ID), torchrun (its rendezvous id and master port), Slurm (the
    array's or job's id). None when nothing says it (ranks started by hand)."""
    env = os.environ if env is None else env
    if env.get("GAIN_CURATE_LAUNCH_ID"):
        return env["GAIN_CURATE_LAUNCH_ID"]
    parts = [env.get(k) for k in ("TORCHELASTIC_RUN_ID", "MASTER_ADDR", "MASTER_PORT")]
    if any(parts):
        return "torchrun:" + ":".join(p or "" for p in parts)
    for key in ("SLURM_ARRAY_JOB_ID", "SLURM_JOB_ID"):
        if env.get(key):
            return f"slurm:{env[key]}"
    return None
