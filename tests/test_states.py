"""`score --keep-states`: the pooled hidden states it stores are the states `score` used.

Reference in plain sight: one plain forward per prompt over its whole conversation (up to
the end of the question), a pre-hook on the scored layer's MLP (prefill.mlp_inputs), then
the mean of the question rows and the question's last row. The stored float16 vectors must
equal those to float16 precision, on rows that shared the prefix and rows that ran whole;
and keeping them changes no byte of the shards, whatever the launcher.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from gain_curate.executor.launch import PartsDone, run_score
from gain_curate.executor.merge import merge_run
from gain_curate.runfolder.store import STATES, read_npz
from gain_curate.runtime.models import resolve_model
from gain_curate.runtime.truncated import load_model, mlp_inputs
from gain_curate.scoring.config import ScoreConfig

QUESTIONS = [
    "A shop sells 12 pens at 3 dollars each. What do they cost?",
    "Weng earns $12 an hour for babysitting. Yesterday, she did 50 minutes. How much did she earn?",
    "Its own system prompt: this conversation does not start with the shared prefix.",
    "James writes a 3-page letter to 2 different friends twice a week. How many pages a year?",
    "What is 7 times 8?",
    "A shop sells 12 pens at 3 dollars each. What do they cost?",  # a duplicate of row 0
    "Tom has 5 apples and buys 7 more, then eats 2. How many are left?",
]
ALONE = 2  # the row whose system prompt differs: it runs whole


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Chat rows: one system prompt shared by all but row ALONE."""
    path = tmp_path_factory.mktemp("states") / "q.jsonl"
    rows = [
        {
            "prompt": [
                {
                    "role": "system",
                    "content": "Solve it." if i != ALONE else "Think step by step, then answer.",
                },
                {"role": "user", "content": q},
            ],
            "answer": "1",
        }
        for i, q in enumerate(QUESTIONS)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def cfg_for(model: Path, data: Path, out: Path, **kw) -> ScoreConfig:
    # a small budget and part size: several batches and parts
    base = dict(
        data=str(data),
        model=str(model),
        out=out,
        device="cpu",
        dtype="float32",
        token_budget=64,
        part_rows=2,
        keep_states=True,
    )
    return ScoreConfig(**{**base, **kw})


def shard_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "data").glob("*.parquet"))}


def reference_states(
    model: Path, out: Path, rows: list[int]
) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Per input row: (mean of its question tokens' MLP inputs, its last token's), fp32, from
    one plain forward over the prepared token ids, with no cache, batch or prefix sharing."""
    prepared = pq.read_table(out / ".gain-curate" / "prepared" / "rows.parquet").to_pydict()
    lm = load_model(
        resolve_model(str(model)), dtype=torch.float32, device=torch.device("cpu"), layer=None
    )
    want = {}
    for r in rows:
        ids, p = prepared["input_ids"][r], prepared["p"][r]
        h = mlp_inputs(lm, torch.tensor([ids]))[0].float()  # (T, d)
        want[r] = (h[p:].mean(0).numpy(), h[-1].numpy())
    return want


@pytest.mark.parametrize("share", [True, False], ids=["shared-prefix", "unshared"])
def test_stored_states_equal_the_states_score_used(
    tiny_qwen2_dir: Path, data: Path, tmp_path: Path, share: bool
) -> None:
    out = tmp_path / "run"
    res = run_score(cfg_for(tiny_qwen2_dir, data, out, share_prefix=share))
    prefill = res.manifest["prefill"]
    if share:  # both paths ran: rows after the shared prefix, and a row that runs whole
        assert 0 < prefill["prompts_sharing_prefix"] < prefill["prompts"], prefill
    else:
        assert prefill["prompts_sharing_prefix"] == 0
    st = read_npz(out / STATES)
    entry = res.manifest["states"]
    assert entry["rows"] == len(QUESTIONS) and entry["layer"] == 3 and entry["dtype"] == "float16"
    # the prompt end at the default probe layers of 4 layers (test_prompt_end.py: its values)
    assert entry["probe_layers"] == [2, 3]
    features = ["question_mean", "last_token", "prompt_end@L2", "prompt_end@L3"]
    assert entry["features"] == features and sorted(st) == sorted(["row", "gain_uid", *features])
    assert st["row"].tolist() == list(range(len(QUESTIONS)))
    assert st["question_mean"].dtype == np.float16 and st["question_mean"].shape == (
        len(QUESTIONS),
        64,
    )
    shards = pq.read_table(out / "data").to_pylist()
    uid_of = {r["extra_info"]["index"]: r["gain_uid"] for r in shards}
    assert st["gain_uid"].tolist() == [uid_of[r] for r in range(len(QUESTIONS))]
    want = reference_states(tiny_qwen2_dir, out, [0, 1, 2, 4, 6])
    for r, (mean, last) in want.items():
        for name, ref in (("question_mean", mean), ("last_token", last)):
            got = st[name][r].astype(np.float32)
            np.testing.assert_allclose(got, ref, rtol=2e-3, atol=2e-3, err_msg=f"row {r} {name}")
    # the duplicate (row 5) never ran: it carries row 0's states, as it carries its scores
    assert np.array_equal(st["question_mean"][5], st["question_mean"][0])
    assert np.array_equal(st["last_token"][5], st["last_token"][0])


def test_keeping_states_changes_no_shard_byte_and_no_config_hash(
    tiny_qwen2_dir: Path, data: Path, tmp_path: Path
) -> None:
    plain = run_score(cfg_for(tiny_qwen2_dir, data, tmp_path / "plain", keep_states=False))
    kept = run_score(cfg_for(tiny_qwen2_dir, data, tmp_path / "kept"))
    assert shard_bytes(tmp_path / "plain") == shard_bytes(tmp_path / "kept")
    assert plain.manifest["config_hash"] == kept.manifest["config_hash"]
    assert "states" not in plain.manifest and not (tmp_path / "plain" / STATES).exists()


def test_states_are_the_same_bytes_from_every_launcher(
    tiny_qwen2_dir: Path, data: Path, tmp_path: Path
) -> None:
    """The batch plan is global and parts are whole batches: one process and 3 --shard
    workers + merge write the same states.npz, byte for byte."""
    run_score(cfg_for(tiny_qwen2_dir, data, tmp_path / "local"))
    cfg = cfg_for(tiny_qwen2_dir, data, tmp_path / "shards")
    assert all(isinstance(run_score(cfg, shard=(i, 3), env={}), PartsDone) for i in (2, 0, 1))
    merged = merge_run(tmp_path / "shards")
    assert (tmp_path / "shards" / STATES).read_bytes() == (tmp_path / "local" / STATES).read_bytes()
    assert (
        merged.manifest["states"]["sha256"]
        == json.loads((tmp_path / "local" / "gain_manifest.json").read_text())["states"]["sha256"]
    )
    assert shard_bytes(tmp_path / "shards") == shard_bytes(tmp_path / "local")


def test_a_run_scored_without_states_keeps_them_when_asked_again(
    tiny_qwen2_dir: Path, data: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    cfg = cfg_for(tiny_qwen2_dir, data, out, keep_states=False)
    run_score(cfg)
    before = shard_bytes(out)
    res = run_score(replace(cfg, keep_states=True))  # same scores, new request: states written
    assert res.manifest["states"]["rows"] == len(QUESTIONS) and (out / STATES).is_file()
    assert shard_bytes(out) == before
    run_score(replace(cfg, keep_states=False))  # and a run without them lists none, holds none
    assert not (out / STATES).exists() and shard_bytes(out) == before


def test_other_probe_layers_keep_other_states_and_the_same_shards(
    tiny_qwen2_dir: Path, data: Path, tmp_path: Path
) -> None:
    """The probe layers are part of the states' identity, not of the scores': a rerun with
    other --probe-layers keeps states at those (its parts' states are made again), with the
    same config hash and shard bytes, and the unchanged arrays are the same bytes."""
    out = tmp_path / "run"
    first = run_score(cfg_for(tiny_qwen2_dir, data, out))
    before, st = shard_bytes(out), read_npz(out / STATES)
    again = run_score(cfg_for(tiny_qwen2_dir, data, out, probe_layers=(1, 3)))
    assert again.manifest["states"]["probe_layers"] == [1, 3]
    assert again.manifest["config_hash"] == first.manifest["config_hash"]
    assert shard_bytes(out) == before
    now = read_npz(out / STATES)
    assert sorted(now) == sorted(
        ["row", "gain_uid", "question_mean", "last_token"]
        + [
            "prompt_end@L1",
            "prompt_end@L3",
        ]
    )
    for name in ("question_mean", "last_token", "prompt_end@L3"):
        assert np.array_equal(now[name], st[name]), name
    assert not np.array_equal(now["prompt_end@L1"], st["prompt_end@L2"])


def test_probe_layers_are_no_part_of_a_run_without_states(tmp_path: Path) -> None:
    """Without --keep-states the request key is the one it was before probe layers existed:
    the flags less the parallelism (a preset and a model name fingerprint as themselves),
    hashed as before; with it, the probe layers count."""
    import hashlib

    from gain_curate.scoring.config import PARALLEL_FIELDS, config_dict, request_key

    cfg = ScoreConfig(data="gsm8k", model="smollm2", out=tmp_path, keep_states=False)
    flags = {
        k: v
        for k, v in config_dict(cfg).items()
        if k not in PARALLEL_FIELDS and k != "probe_layers"
    }
    before = hashlib.sha256(json.dumps(flags, sort_keys=True, default=str).encode()).hexdigest()
    assert request_key(cfg) == before[:16]
    kept = replace(cfg, keep_states=True)
    assert request_key(kept) != request_key(replace(kept, probe_layers=(3,)))
