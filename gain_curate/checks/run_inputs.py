"""What `validate` reads of a scored run and of its sampled rows: the run's settings
(`validate --run OUT`), how many prompts the run ranks, and each sampled row as a trainer's
reward sees it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

from gain_curate.inputs.template import ScoringTemplate

if TYPE_CHECKING:
    from gain_curate.runfolder.run import Run

# What `validate --run OUT` takes from the run's manifest instead of from flags.
RUN_SETTINGS = (
    "model",
    "data",
    "split",
    "question_key",
    "answer_key",
    "layer",
    "inter_weight",
    "template",
    "chat_template",
)
LOCAL_KINDS = ("jsonl", "json", "parquet", "csv", "arrow_dir")


@dataclass(frozen=True)
class RunSettings:
    """The model, data, scoring template and runtime dtype validate checks: a scored run's
    own (run_settings), or the command's."""

    model: str
    data: str
    split: str
    question_key: str | None
    answer_key: str | None
    layer: int | None
    inter_weight: float
    template: ScoringTemplate
    chat_template: str | None
    dtype: str
    run: Path | None = None  # the scored run they were read from
    template_flags: tuple[str, ...] | None = None  # the template settings given (not a run)


def run_settings(out: Path) -> RunSettings:
    """The settings a scored run used, from its manifest: validate then checks the signal
    the run ranked by, with the run's own scores (nothing is scored or resolved again)."""
    from gain_curate.runfolder.run import open_run

    m = open_run(out).manifest
    inp, model, signal = m.input, m.model, m.section("signal")
    return RunSettings(
        model=str(model.path),
        data=str(inp.path) if inp.kind in LOCAL_KINDS else inp.source,
        split=inp.split,
        question_key=inp.question_key,
        answer_key=inp.answer_key,
        layer=model.layer,
        inter_weight=signal["inter_weight"],
        template=ScoringTemplate.from_dict(signal["template"]),
        chat_template=model.chat_template_file,
        dtype=model.dtype,
        run=out,
    )


def run_rows(run: Run) -> int:
    """How many prompts the scored run ranks: what a curriculum over it draws from."""
    return sum(s.rows for s in run.manifest.shards)


class RewardRow(TypedDict):
    """What a trainer's reward reads of a row besides the completion: verl's data_source
    and reward_model ({"ground_truth": ..., "style": ...})."""

    data_source: str
    reward_model: dict[str, Any]


def reward_rows(
    src: Any, picked: list[int], golds: list[str], by_input: dict[int, dict[str, Any]] | None
) -> list[RewardRow]:
    """What a trainer's reward reads of each sampled row: `data_source` and `reward_model`
    from a scored run's own rows; else the input's own columns when it has them, else what
    `score` writes (the input's data_source name; the extracted answer as ground truth)."""
    from gain_curate.inputs.answers import column_values

    if by_input is not None:
        return [
            {"data_source": by_input[i]["data_source"], "reward_model": by_input[i]["reward_model"]}
            for i in picked
        ]
    names = src.table.column_names
    sources = column_values(src.table, "data_source") if "data_source" in names else None
    models = column_values(src.table, "reward_model") if "reward_model" in names else None
    return [
        {
            "data_source": (
                sources[i] if sources and isinstance(sources[i], str) else src.spec.data_source
            ),
            "reward_model": (
                models[i]
                if models and isinstance(models[i], dict) and "ground_truth" in models[i]
                else {"ground_truth": gold, "style": "rule"}
            ),
        }
        for i, gold in zip(picked, golds)
    ]
