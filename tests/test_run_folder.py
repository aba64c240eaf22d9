"""runfolder/run.py: `open_run(out)`, the typed view of a finished run every reader uses."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from gain_curate.errors import OutputError
from gain_curate.executor.launch import run_score
from gain_curate.runfolder import store
from gain_curate.runfolder.run import ModelInfo, Shard, StatesInfo, open_run
from gain_curate.scoring.config import ScoreConfig


@pytest.fixture(scope="module")
def scored(tiny_qwen2_dir: Path, tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("run-folder")
    data = tmp / "d.jsonl"
    rows = [
        {"question": f"Problem {i}: what is {i} plus {i * 7} apples in all?", "answer": str(8 * i)}
        for i in range(12)
    ]
    rows.append({"question": "", "answer": "0"})  # unscored: no question
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp / "run"
    cfg = ScoreConfig(
        data=str(data),
        model=str(tiny_qwen2_dir),
        out=out,
        device="cpu",
        keep_states=True,
        rows_per_shard=5,
    )
    run_score(cfg)
    return out


def test_open_run_fields_equal_the_manifest_json(scored: Path) -> None:
    raw = json.loads((scored / store.MANIFEST).read_text())
    run = open_run(scored)
    m = run.manifest
    assert m.config_hash == raw["config_hash"]
    assert asdict(m.input) == raw["input"]  # every key, in the order written
    assert asdict(m.model) == raw["model"]
    assert [s.to_json() for s in m.shards] == raw["shards"] and len(m.shards) == 3
    assert all(isinstance(s, Shard) and isinstance(s.rank_range, tuple) for s in m.shards)
    assert (
        (m.counts.rows, m.counts.scored, dict(m.counts.unscored))
        == (
            raw["counts"]["rows"],
            raw["counts"]["scored"],
            raw["counts"]["unscored"],
        )
        == (13, 12, {"empty_question": 1})
    )
    assert isinstance(m.model, ModelInfo) and isinstance(m.states, StatesInfo)
    states = {**asdict(m.states), "probe_layers": list(m.states.probe_layers)}
    states["features"] = list(states["features"])
    assert states == raw["states"]
    assert m.section("signal") == raw["signal"] and m.section("schedule") is None
    assert dict(m.sections) == raw


def test_table_states_and_ranking_read_every_shard_in_rank_order(scored: Path) -> None:
    run = open_run(scored)
    t = run.table()
    by_shard = [pq.read_table(scored / s.path) for s in run.manifest.shards]
    assert t.num_rows == 13 == sum(b.num_rows for b in by_shard)
    assert t["gain_rank"].to_pylist() == list(range(13))
    uids, scores = run.ranking()
    assert uids == t["gain_uid"].to_pylist()
    assert np.isnan(scores[-1]) and np.isfinite(scores[:-1]).all()
    assert list(np.diff(scores[:-1]) <= 0) == [True] * 11  # rank 0 = highest score
    st = run.states()
    assert list(st) == ["row", "gain_uid", *run.manifest.states.features]
    assert st["question_mean"].shape == (12, run.manifest.model.hidden_size)


def test_a_folder_without_a_manifest_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(OutputError) as e:
        open_run(tmp_path)
    msg = str(e.value)
    assert "\n" not in msg and "holds no scored run (gain_manifest.json missing)" in msg
    (tmp_path / store.MANIFEST).write_text("{not json")
    with pytest.raises(OutputError, match="cannot read .* not a manifest gain-curate wrote"):
        open_run(tmp_path)
    (tmp_path / store.MANIFEST).write_text('{"config_hash": "x"}')
    with pytest.raises(OutputError, match="missing 'counts'"):
        open_run(tmp_path)


def test_an_old_manifest_without_states_or_later_fields_reads(scored: Path, tmp_path: Path) -> None:
    old = tmp_path / "old"
    shutil.copytree(scored, old)
    raw = json.loads((old / store.MANIFEST).read_text())
    for key in ("states", "schedule", "exports", "prediction", "runtime"):
        raw.pop(key, None)
    for key in ("chat_template_file", "dtype_requested", "hardware"):
        del raw["model"][key]
    for key in ("data_source_from", "split_from"):
        del raw["input"][key]
    del raw["counts"]["duplicates"]
    (old / store.MANIFEST).write_text(json.dumps(raw))
    run = open_run(old)
    assert run.manifest.states is None and run.manifest.section("schedule") is None
    assert run.manifest.model.hardware is None and run.manifest.input.split_from == ""
    assert run.manifest.counts.duplicates == 0 and run.table().num_rows == 13
    with pytest.raises(
        OutputError, match="kept no hidden states: score it again with `keep_states`"
    ):
        run.states()
    (old / run.manifest.shards[1].path).unlink()
    with pytest.raises(OutputError, match="listed in gain_manifest.json is missing"):
        run.table()
