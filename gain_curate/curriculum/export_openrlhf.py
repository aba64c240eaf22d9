"""OpenRLHF's open-loop exports of the plan (`gain-curate schedule`): one plan epoch as a
flat JSON-lines file OpenRLHF reads as it is (`gain-curate export OUT --format openrlhf
--epoch K`), or every epoch back to back for the launcher (gain_curate.integrations.openrlhf),
each recorded in the manifest's exports.openrlhf with the train_ppo_ray flags that read it."""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
import pyarrow as pa

from gain_curate.curriculum.export import (
    PlanFile,
    PlanFileJSON,
    plan_order,
    rank_ordered,
    read_plan,
)
from gain_curate.errors import OutputError
from gain_curate.runfolder import store
from gain_curate.runfolder.run import Run, open_run

PLAN_FILE = Path("export") / "openrlhf" / "plan.jsonl"


class EpochExportJSON(TypedDict):
    """The manifest's exports.openrlhf.epochs[K], key order as written."""

    path: str
    rows: int
    sha256: str
    flags: str


@dataclass(frozen=True)
class EpochExport:
    """OUT/path: one plan epoch (rows prompts) as JSON lines, and the train_ppo_ray flags
    (one shell line) that train on it as one OpenRLHF step."""

    path: str  # relative to OUT
    rows: int
    sha256: str
    flags: str

    def to_json(self) -> EpochExportJSON:
        return {"path": self.path, "rows": self.rows, "sha256": self.sha256, "flags": self.flags}


class PlanExport(PlanFile):
    """OUT/path: every plan epoch back to back as JSON lines, drawn over the `rank_by`
    order, and the train_ppo_ray flags the launcher adds for it."""

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> PlanExport:
        return cls(
            str(d["path"]),
            int(d["rows"]),
            int(d["epochs"]),
            int(d["batch_size"]),
            str(d["sha256"]),
            str(d["flags"]),
            str(d.get("rank_by", "angle")),
        )


def data_flags(path: Path, batch_size: int) -> list[str]:
    """The train_ppo_ray arguments that read `path` as gain-curate wrote it, one plan epoch
    (`batch_size` prompts) per OpenRLHF step; shlex.join them for a shell."""
    return [
        "--data.prompt_dataset",
        str(path.resolve()),
        "--data.input_key",
        "prompt",
        "--data.apply_chat_template",
        "--data.label_key",
        "label",
        "--rollout.batch_size",
        str(batch_size),
    ]


def write_jsonl(run: Run, rel: Path, ranks: np.ndarray, extra: list[dict[str, int]]) -> Path:
    """OUT/rel: one OpenRLHF record per rank in `ranks` (datasource, prompt (chat), input (the
    last user turn as text), label (ground truth), gain_uid, gain_rank, + `extra[k]`)."""
    table = rank_ordered(run, ["data_source", "prompt", "reward_model", "gain_uid"])
    lines = []
    for r, more in zip(table.take(pa.array(ranks)).to_pylist(), extra):
        user = [m["content"] for m in r["prompt"] if m["role"] == "user"]
        record = {
            "datasource": r["data_source"],
            "prompt": r["prompt"],
            "input": user[-1] if user else "",
            "label": (r["reward_model"] or {}).get("ground_truth"),
            "gain_uid": r["gain_uid"],
            "gain_rank": r["gain_rank"],
            **more,
        }
        lines.append(json.dumps(record, ensure_ascii=False))
    path = run.out / rel
    store.write_bytes_atomic(path, ("\n".join(lines) + "\n").encode("utf-8"))
    return path


class OpenRLHFExportsJSON(TypedDict, total=False):
    """The manifest's exports.openrlhf: the launcher's plan file, and each exported epoch."""

    plan: PlanFileJSON
    epochs: dict[str, EpochExportJSON]  # "K" -> epoch K's file


def openrlhf_exports(run: Run) -> OpenRLHFExportsJSON:
    """The manifest's exports.openrlhf as written, empty before any export."""
    return OpenRLHFExportsJSON(**(run.manifest.section("exports") or {}).get("openrlhf", {}))


def record_export(run: Run, key: str, value: object) -> None:
    """manifest.exports.openrlhf[key] = value, the other exports kept."""
    exports = run.manifest.section("exports") or {}
    store.update_manifest(
        run.out, "exports", {**exports, "openrlhf": {**openrlhf_exports(run), key: value}}
    )


def export_epoch(out: Path, epoch: int, rank_by: str | None = None) -> tuple[Path, EpochExport]:
    """Epoch `epoch` of the plan as OpenRLHF-ready JSON lines, in plan order; recorded in the
    manifest (exports.openrlhf.epochs) with the OpenRLHF flags that train on it."""
    plans = read_plan(out)
    run = open_run(out)
    plan_order(run, rank_by)
    if not 0 <= epoch < len(plans):
        raise OutputError(
            f"`epoch` {epoch} is outside the plan in {out} (epochs 0..{len(plans) - 1})"
        )
    rel = Path("export") / "openrlhf" / f"epoch-{epoch:05d}.jsonl"
    path = write_jsonl(run, rel, plans[epoch], [{}] * len(plans[epoch]))
    record = EpochExport(
        path=str(rel),
        rows=len(plans[epoch]),
        sha256=store.file_sha256(path),
        flags=shlex.join(data_flags(path, len(plans[epoch]))),
    )
    epochs = openrlhf_exports(run).get("epochs", {})
    record_export(run, "epochs", {**epochs, str(epoch): record.to_json()})
    return path, record


def export_plan(out: Path, rank_by: str | None = None) -> tuple[Path, PlanExport]:
    """Every epoch of the plan back to back (row k of epoch e: gain_plan_epoch e,
    gain_plan_position k) as OUT/export/openrlhf/plan.jsonl; recorded in the manifest
    (exports.openrlhf.plan) with the flags the launcher adds."""
    plans = read_plan(out)
    run = open_run(out)
    drawn = plan_order(run, rank_by)
    (batch,) = {len(p) for p in plans}  # the schedule draws B prompts every epoch
    extra = [
        {"gain_plan_epoch": e, "gain_plan_position": k}
        for e, p in enumerate(plans)
        for k in range(len(p))
    ]
    path = write_jsonl(run, PLAN_FILE, np.concatenate(plans), extra)
    record = PlanExport(
        path=str(PLAN_FILE),
        rows=len(extra),
        epochs=len(plans),
        batch_size=batch,
        sha256=store.file_sha256(path),
        flags=shlex.join(data_flags(path, batch)),
        rank_by=drawn,
    )
    record_export(run, "plan", record.to_json())
    return path, record
