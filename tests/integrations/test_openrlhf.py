"""OpenRLHF's trainer cannot be installed on a CPU machine (its flash-attn==2.8.3 pin
builds from source and needs CUDA; openrlhf.trainer imports vllm, deepspeed and flash_attn
at import time), so its real dataloader is not exercised here. What is tested: the plan
sampler, and the wrapper that swaps a shuffled StatefulDataLoader for one that follows the
plan, on torchdata's real StatefulDataLoader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

pytest.importorskip("torchdata", reason="torchdata not installed: run `make test-integrations`")
from torchdata.stateful_dataloader import StatefulDataLoader  # noqa: E402

from gain_curate.export import read_plan  # noqa: E402
from gain_curate.integrations.openrlhf import PlanSampler, follow_plan  # noqa: E402


def write_plan(out: Path, plans: list[list[int]]) -> None:
    (out / "schedule").mkdir(parents=True)
    rows = [(e, i, f"u{r}", r) for e, p in enumerate(plans) for i, r in enumerate(p)]
    t = pa.table({"epoch": [r[0] for r in rows], "position": [r[1] for r in rows],
                  "gain_uid": [r[2] for r in rows], "gain_rank": [r[3] for r in rows]})  # fmt: skip
    pq.write_table(t, out / "schedule" / "plan.parquet")


def test_plan_sampler_walks_epochs_and_resumes() -> None:
    s = PlanSampler([np.array([3, 1, 2]), np.array([0, 4])], dataset_len=5)
    assert list(s) == [3, 1, 2] and list(s) == [0, 4] and list(s) == [3, 1, 2]
    it = iter(s)
    next(it)
    state = s.state_dict()
    t = PlanSampler([np.array([3, 1, 2]), np.array([0, 4])], dataset_len=5)
    t.load_state_dict(state)
    assert list(t) == [4]


def test_follow_plan_replaces_the_shuffled_prompt_loader(tmp_path: Path) -> None:
    write_plan(tmp_path, [[5, 2, 7, 1], [0, 3, 6, 4]])
    assert [p.tolist() for p in read_plan(tmp_path)] == [[5, 2, 7, 1], [0, 3, 6, 4]]
    dataset = [f"prompt {i}" for i in range(8)]

    def prepare_datasets(strategy, tokenizer):  # the shape of OpenRLHF's: shuffled loader first
        loader = StatefulDataLoader(dataset, batch_size=2, shuffle=True, collate_fn=list)
        return loader, None, 10

    loader, eval_loader, steps = follow_plan(prepare_datasets, tmp_path)(None, None)
    assert eval_loader is None and steps == 10
    assert [b for b in loader] == [["prompt 5", "prompt 2"], ["prompt 7", "prompt 1"]]
    assert [b for b in loader] == [["prompt 0", "prompt 3"], ["prompt 6", "prompt 4"]]
