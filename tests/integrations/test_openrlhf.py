"""OpenRLHF 0.11.2 installs --no-deps on a CPU machine, but only its datasets import: its
trainer modules import vllm and deepspeed (and its flash-attn pin builds only with CUDA). What
is tested: the export through OpenRLHF's real blending_datasets + PromptDataset, the flag names
in its real parser source, the plan sampler, and the wrapper that swaps a shuffled
StatefulDataLoader for one that follows the plan, on torchdata's real StatefulDataLoader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

pytest.importorskip("torchdata", reason="torchdata not installed: run `make test-integrations`")
from torchdata.stateful_dataloader import StatefulDataLoader  # noqa: E402

from gain_curate.curriculum.export import read_plan  # noqa: E402
from gain_curate.integrations.openrlhf import PlanSampler, follow_plan  # noqa: E402


def write_plan(out: Path, plans: list[list[int]]) -> None:
    (out / "schedule").mkdir(parents=True)
    rows = [(e, i, f"u{r}", r) for e, p in enumerate(plans) for i, r in enumerate(p)]
    t = pa.table(
        {
            "epoch": [r[0] for r in rows],
            "position": [r[1] for r in rows],
            "gain_uid": [r[2] for r in rows],
            "gain_rank": [r[3] for r in rows],
        }
    )
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


openrlhf = pytest.importorskip(
    "openrlhf.datasets", reason="openrlhf not installed: run `make test-integrations`"
)


def test_export_reads_through_openrlhf_0_11s_own_prompt_dataset(
    tiny_qwen2_dir: Path, qwen_tokenizer, tmp_path: Path
) -> None:
    """OpenRLHF 0.11.2 installed --no-deps: its real blending_datasets + PromptDataset read the
    export with the documented flags, in plan order, labels and datasources intact."""
    import json
    from types import SimpleNamespace

    from openrlhf.datasets import PromptDataset
    from openrlhf.datasets.utils import blending_datasets

    from gain_curate.integrations.openrlhf import export_epoch
    from gain_curate.scoring.launch import run_score
    from gain_curate.scoring.score import ScoreConfig

    data = tmp_path / "q.jsonl"
    data.write_text(
        "".join(
            json.dumps({"question": f"What is {i} + {i}?", "answer": str(2 * i)}) + "\n"
            for i in range(10)
        )
    )
    run = tmp_path / "run"
    run_score(ScoreConfig(data=str(data), model=str(tiny_qwen2_dir), out=run, device="cpu"))
    uids = pq.read_table(run / "data").column("gain_uid").to_pylist()
    plan = [[4, 1, 7], [2, 9, 0]]
    (run / "schedule").mkdir()
    rows = [(e, i, uids[r], r) for e, p in enumerate(plan) for i, r in enumerate(p)]
    pq.write_table(
        pa.table(
            {
                "epoch": [r[0] for r in rows],
                "position": [r[1] for r in rows],
                "gain_uid": [r[2] for r in rows],
                "gain_rank": [r[3] for r in rows],
            }
        ),
        run / "schedule" / "plan.parquet",
    )
    path, record = export_epoch(run, 1)
    # the flags it prints and records: what PromptDataset is given below
    assert record["flags"] == (
        f"--data.prompt_dataset {path.resolve()} --data.input_key prompt "
        "--data.apply_chat_template --data.label_key label"
    )
    manifest = json.loads((run / "gain_manifest.json").read_text())
    assert manifest["exports"]["openrlhf"]["epochs"]["1"] == record and record["rows"] == 3
    args = SimpleNamespace(
        data=SimpleNamespace(input_key="prompt", label_key="label", apply_chat_template=True)
    )
    strategy = SimpleNamespace(args=args, print=lambda *a: None, is_rank_0=lambda: True)
    ds = PromptDataset(blending_datasets(str(path), None, strategy), qwen_tokenizer, strategy)
    table = pq.read_table(run / "data").to_pylist()
    assert len(ds) == 3
    for k, rank in enumerate(plan[1]):
        source, prompt, label, _ = ds[k]
        row = table[rank]
        assert label == row["reward_model"]["ground_truth"] and source == row["data_source"]
        assert prompt == qwen_tokenizer.apply_chat_template(
            row["prompt"], tokenize=False, add_generation_prompt=True
        )


def test_documented_flags_exist_in_openrlhf_0_11s_parser() -> None:
    """train_ppo_ray imports vllm at import time, so its argparse definitions are read from
    the installed source instead of being run."""
    import ast
    import importlib.util

    src = (
        Path(importlib.util.find_spec("openrlhf").submodule_search_locations[0])
        / "cli"
        / "train_ppo_ray.py"
    )
    flags = {
        a.value
        for node in ast.walk(ast.parse(src.read_text()))
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument"
        for a in node.args[:1]
        if isinstance(a, ast.Constant)
    }
    assert {
        "--data.prompt_dataset",
        "--data.input_key",
        "--data.label_key",
        "--data.apply_chat_template",
    } <= flags


def test_setup_patches_prepare_datasets_in_the_sync_and_async_trainer_modules(
    tmp_path: Path, monkeypatch
) -> None:
    """In OpenRLHF 0.11.2 PPOTrainer (ppo_trainer) and the async trainer (ppo_trainer_async,
    which imports the name) call `prepare_datasets` from their module globals inside their Ray
    actors; the worker set-up hook must patch both. Stand-ins for the two modules (the real
    ones import vllm and deepspeed) check that both call sites get the plan-following loader."""
    import sys
    import types

    from gain_curate.integrations import openrlhf as adapter

    write_plan(tmp_path, [[1, 0]])

    def prepare_datasets(strategy, tokenizer):
        return StatefulDataLoader(["a", "b"], batch_size=1, shuffle=True, collate_fn=list), None, 2

    for name in ("openrlhf.trainer.ppo_trainer", "openrlhf.trainer.ppo_trainer_async"):
        mod = types.ModuleType(name)
        mod.prepare_datasets = prepare_datasets
        monkeypatch.setitem(sys.modules, name, mod)
    monkeypatch.setenv(adapter.ENV_RUN, str(tmp_path))
    adapter.setup()
    for name in ("openrlhf.trainer.ppo_trainer", "openrlhf.trainer.ppo_trainer_async"):
        loader, _, _ = sys.modules[name].prepare_datasets(None, None)
        assert [b for b in loader] == [["b"], ["a"]], name
