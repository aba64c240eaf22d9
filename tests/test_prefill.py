"""Speed must not cost exactness: shared prefix + batching equal the plain per-prompt path."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from gain_curate.executor.launch import run_score
from gain_curate.executor.score import ScoreConfig
from gain_curate.inputs.conversation import Segments, segment_batch
from gain_curate.inputs.template import ScoringTemplate
from gain_curate.runtime.models import resolve_model
from gain_curate.runtime.truncated import load_model
from gain_curate.scoring import batching, forward, prefill
from gain_curate.scoring.batching import length_sorted_batches, shared_prefix
from gain_curate.scoring.prefill import PrefillStats, segment_sums
from gain_curate.stats import spearman

QUESTIONS = [
    (
        "Natalia sold clips to 48 of her friends in April, and then she sold half as "
        "many clips in May. How many clips did Natalia sell altogether in April and May?"
    ),
    (
        "Weng earns $12 an hour for babysitting. Yesterday, she "
        "just did 50 minutes of babysitting. How much did she earn?"
    ),
    (
        "  Two leading spaces: the turn header's newline and a space "
        "become one token, so this prompt cannot share the prefix."
    ),
    (
        "James writes a 3-page letter to 2 different friends "
        "twice a week. How many pages does he write a year?"
    ),
    "What is 7 times 8?",
]


# `make gpu-check` runs the exactness tests on the GPU: GAIN_CURATE_TEST_DEVICE=cuda.
TEST_DEVICE = os.environ.get("GAIN_CURATE_TEST_DEVICE", "cpu")


def scores(out: Path) -> dict[int, tuple[float, float]]:
    manifest = json.loads((out / "gain_manifest.json").read_text())
    rows = pq.read_table(out / manifest["shards"][0]["path"]).to_pylist()
    return {r["extra_info"]["index"]: (r["gain_c_intra"], r["gain_c_inter"]) for r in rows}


def gsm8k_questions(shared_data: Path, n: int) -> list[str]:
    lines = (shared_data / "gsm8k" / "train.jsonl").read_text().splitlines()[:n]
    return [json.loads(line)["question"] for line in lines]


@pytest.mark.slow
def test_shared_prefix_and_batching_equal_per_prompt_path(
    smollm2_dir: Path, tmp_path: Path
) -> None:
    data = tmp_path / "q.jsonl"
    data.write_text("".join(json.dumps({"question": q}) + "\n" for q in QUESTIONS))
    base = dict(data=str(data), model=str(smollm2_dir), dtype="float32", device=TEST_DEVICE)
    run_score(ScoreConfig(**base, out=tmp_path / "fast", token_budget=512))
    run_score(ScoreConfig(**base, out=tmp_path / "plain", token_budget=1, share_prefix=False))
    fast, plain = scores(tmp_path / "fast"), scores(tmp_path / "plain")
    manifest = json.loads((tmp_path / "fast" / "gain_manifest.json").read_text())
    # the space-led question cannot share the prefix at the token level: it ran whole
    assert manifest["prefill"]["prompts_sharing_prefix"] == len(QUESTIONS) - 1
    assert manifest["prefill"]["shared_prefix_tokens"] > 50
    for i in range(len(QUESTIONS)):
        assert fast[i][0] == pytest.approx(plain[i][0], abs=1e-5)
        assert fast[i][1] == pytest.approx(plain[i][1], abs=1e-5)


@pytest.mark.slow
def test_bf16_ranking_follows_fp32(smollm2_dir: Path, shared_data: Path, tmp_path: Path) -> None:
    data = tmp_path / "q.jsonl"
    data.write_text(
        "".join(json.dumps({"question": q}) + "\n" for q in gsm8k_questions(shared_data, 64))
    )
    for dtype in ("float32", "bfloat16"):
        run_score(
            ScoreConfig(
                data=str(data),
                model=str(smollm2_dir),
                dtype=dtype,
                device=TEST_DEVICE,
                out=tmp_path / dtype,
            )
        )
    f32, bf16 = scores(tmp_path / "float32"), scores(tmp_path / "bfloat16")
    s32 = np.array([f32[i][0] + f32[i][1] for i in range(64)])
    s16 = np.array([bf16[i][0] + bf16[i][1] for i in range(64)])
    assert spearman(s32, s16) >= 0.999


def test_oom_halves_the_budget_and_retries(
    tiny_qwen2_dir: Path, qwen_tokenizer, monkeypatch
) -> None:
    lm = load_model(
        resolve_model(str(tiny_qwen2_dir)),
        dtype=torch.float32,
        device=torch.device("cpu"),
        layer=None,
    )
    segs = segment_batch(qwen_tokenizer, ScoringTemplate(), QUESTIONS)
    want = {
        i: s for b in segment_sums(lm, segs, token_budget=10_000) for i, s in zip(b.indices, b.s_q)
    }
    real = forward.question_batch

    def flaky(lm_, prefix, qs, pad_id):
        if len(qs) > 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(lm_, prefix, qs, pad_id)

    monkeypatch.setattr(prefill, "question_batch", flaky)
    stats = PrefillStats()
    got = {
        i: s
        for b in segment_sums(lm, segs, token_budget=10_000, stats=stats)
        for i, s in zip(b.indices, b.s_q)
    }
    assert stats.oom_retries >= 2 and stats.prompts == len(QUESTIONS)
    for i in want:
        torch.testing.assert_close(got[i], want[i], rtol=1e-5, atol=1e-5)


def test_oom_replans_the_rest_once_and_recovers_the_budget(monkeypatch) -> None:
    """A transient OOM on the first batches: the remaining work is re-planned at half the
    budget (later batches do not each fail first), and after a run of successes the budget
    comes back, so the final batches are as large as before the spike."""
    segs = {i: Segments([7] * 50, 1, 50) for i in range(1000)}
    stats, calls, sizes = PrefillStats(), [], []

    def run(lm, segments, batch, pad_id, kernel, stats_, on_batch) -> prefill.BatchSums:
        calls.append(len(batch.rows))
        if len(calls) <= 10 and len(batch.rows) * 50 > 1000:  # memory pressure, first ten tries
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        sizes.append(len(batch.rows))
        n = len(batch.rows)
        return prefill.BatchSums(batch.rows, torch.zeros(n, 1), torch.zeros(n, 1))

    monkeypatch.setattr(prefill, "_run_alone", run)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    lm = SimpleNamespace(device=torch.device("cpu"))
    plan = batching.plan_batches(segs, token_budget=4000, share_prefix=False)
    got = prefill.run_plan(
        lm, segs, plan.prefix_ids, plan.batches, token_budget=4000, stats=stats, recover_after=8
    )
    done = [i for b in got for i in b.indices]
    assert sorted(done) == list(range(1000))  # every prompt once
    assert calls[:3] == [80, 40, 20]  # 4000 -> 2000 -> 1000 tokens
    assert stats.oom_retries == 2  # the rest was re-planned: no later batch failed first
    assert sizes[0] == 20 and max(sizes[-3:]) == 80  # back to the full budget at the end


def test_a_row_too_large_even_alone_is_named(monkeypatch) -> None:
    """One row that cannot fit alone is not retried forever nor shown as a bug: RowTooLarge
    names the row (its key) and its length, for the scorer to turn into one clear line."""
    segs = {5: Segments([7] * 30, 1, 30), 9: Segments([7] * 900, 1, 900)}

    def run(lm, segments, batch, *rest) -> prefill.BatchSums:
        if any(len(segments[k].input_ids) > 100 for k in batch.rows):
            raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB")
        n = len(batch.rows)
        return prefill.BatchSums(batch.rows, torch.zeros(n, 1), torch.zeros(n, 1))

    monkeypatch.setattr(prefill, "_run_alone", run)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    plan = batching.plan_batches(segs, token_budget=4000, share_prefix=False)
    lm = SimpleNamespace(device=torch.device("cpu"))
    with pytest.raises(batching.RowTooLarge) as e:
        list(prefill.run_plan(lm, segs, None, plan.batches, token_budget=4000))
    assert (e.value.key, e.value.tokens) == (9, 900)


def test_prefix_kv_counts_against_the_budget() -> None:
    """Each row of a shared-prefix batch holds its own copy of the prefix KV."""
    assert [len(b) for b in batching.length_sorted_batches([10] * 8, 100)] == [8]
    assert [len(b) for b in batching.length_sorted_batches([10] * 8, 100, per_row=40)] == [
        2,
        2,
        2,
        2,
    ]


def test_other_errors_are_not_swallowed(tiny_qwen2_dir: Path, qwen_tokenizer, monkeypatch) -> None:
    lm = load_model(
        resolve_model(str(tiny_qwen2_dir)),
        dtype=torch.float32,
        device=torch.device("cpu"),
        layer=None,
    )
    segs = segment_batch(qwen_tokenizer, ScoringTemplate(), QUESTIONS[:2])
    monkeypatch.setattr(
        prefill, "question_batch", lambda *a: (_ for _ in ()).throw(RuntimeError("shape mismatch"))
    )
    with pytest.raises(RuntimeError, match="shape mismatch"):
        list(segment_sums(lm, segs, token_budget=10_000))


def test_shared_prefix_needs_two_prompts() -> None:
    a, b = Segments([1, 2, 3, 9], 3, 4), Segments([1, 2, 3, 8, 7], 3, 5)
    assert shared_prefix([a, b]) == [1, 2, 3]
    assert shared_prefix([a]) is None
    assert shared_prefix([a, Segments([5, 2, 3, 8], 3, 4)]) is None


def test_batches_fit_the_budget_longest_first() -> None:
    lengths = [5, 1, 9, 9, 3, 2, 8]
    batches = length_sorted_batches(lengths, 18)
    assert sorted(i for b in batches for i in b) == list(range(7))
    assert batches[0] == [2, 3]  # the two longest first
    for b in batches:
        assert len(b) * max(lengths[i] for i in b) <= 18 or len(b) == 1


def test_batches_keep_padding_small() -> None:
    lengths = [100, 98, 97, 60, 59, 58, 57, 20, 20, 19]
    for batch in length_sorted_batches(lengths, 10_000, max_padding=0.05):
        longest = max(lengths[i] for i in batch)
        padded = len(batch) * longest
        assert padded - sum(lengths[i] for i in batch) <= 0.05 * padded
    # a wide budget alone would have put everything in one batch, 35% padding
    assert len(length_sorted_batches(lengths, 10_000, max_padding=1.0)) == 1
