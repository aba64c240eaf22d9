"""`score` end to end: exact against a dense cosine matrix on a real model, outputs as specified."""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from gain_curate.executor.launch import run_score
from gain_curate.executor.score import ScoreConfig
from gain_curate.inputs.template import ScoringTemplate
from gain_curate.scoring.angles import naive_angle_concentration

QUESTIONS = [
    (
        "Natalia sold clips to 48 of her friends in April, and then she sold half as "
        "many clips in May. How many clips did Natalia sell altogether in April and May?"
    ),
    (
        "Weng earns $12 an hour for babysitting. Yesterday, she "
        "just did 50 minutes of babysitting. How much did she earn?"
    ),
    "What is 7 times 8?",
    (
        "Betty is saving money for a new wallet which costs $100. Betty has only half of the money "
        "she needs. Her parents decided to give her $15 for that purpose, and her grandparents "
        "twice as much as her parents. How much more money does Betty need to buy the wallet?"
    ),
    "  Leading and trailing spaces are part of this question.  ",
]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def read_run(out: Path) -> tuple[pa.Table, dict]:
    manifest = json.loads((out / "gain_manifest.json").read_text())
    tables = [pq.read_table(out / s["path"]) for s in manifest["shards"]]
    return pa.concat_tables(tables), manifest


@functools.cache
def load_reference(model_dir: Path) -> tuple[Any, Any]:
    """The full causal LM and its tokenizer, loaded once per model for the whole run."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    return tok, AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


def dense_reference(
    model_dir: Path, template: ScoringTemplate, question: str
) -> tuple[float, float]:
    """The paper's metric the slow, obvious way: full causal LM with logits, a hook on the
    last layer's MLP input, the n x n cosine matrix of the WHOLE rendered prompt."""
    tok, model = load_reference(model_dir)
    text = tok.apply_chat_template(
        template.messages(question), tokenize=False, add_generation_prompt=True
    )
    start = text.rindex(question)
    end = start + len(question)
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True, return_tensors="pt")
    offsets = enc["offset_mapping"][0].tolist()
    in_q = [i for i, (s, e) in enumerate(offsets) if e > s and s < end and e > start]
    grabbed = []
    handle = model.model.layers[-1].mlp.register_forward_pre_hook(lambda m, a: grabbed.append(a[0]))
    with torch.no_grad():
        model(input_ids=enc["input_ids"])
    handle.remove()
    h = grabbed[0][0]
    return naive_angle_concentration(h[in_q[0] : in_q[-1] + 1], h[: in_q[0]])


@pytest.mark.slow
@pytest.mark.parametrize(
    "template",
    [
        ScoringTemplate(),
        ScoringTemplate(
            system_prompt="You are a careful math tutor.",
            few_shot=(),
            instruction="Answer with a number.",
        ),
    ],
    ids=["default", "tutor-instruction"],
)
def test_scores_equal_dense_cosine_matrix_on_real_model(
    smollm2_dir: Path, tmp_path: Path, template: ScoringTemplate
) -> None:
    data = write_jsonl(
        tmp_path / "q.jsonl", [{"question": q, "answer": str(i)} for i, q in enumerate(QUESTIONS)]
    )
    cfg = ScoreConfig(
        data=str(data),
        model=str(smollm2_dir),
        out=tmp_path / "out",
        template=template,
        dtype="float32",
        device="cpu",
        token_budget=256,
    )
    run_score(cfg)
    table, _ = read_run(tmp_path / "out")
    rows = {r["extra_info"]["index"]: r for r in table.to_pylist()}
    for i, q in enumerate(QUESTIONS):
        intra, inter = dense_reference(smollm2_dir, template, q)
        assert rows[i]["gain_c_intra"] == pytest.approx(intra, abs=1e-4), q
        assert rows[i]["gain_c_inter"] == pytest.approx(inter, abs=1e-4), q
        assert rows[i]["gain_score"] == pytest.approx(intra + inter, abs=2e-4)


def test_run_writes_ranked_verl_shards_and_manifest(tiny_qwen2_dir: Path, tmp_path: Path) -> None:
    qs = [f"Question number {i}: how many apples are in {i} baskets of {i + 2}?" for i in range(9)]
    rows = [{"question": q, "answer": f"#### {i}", "difficulty": i % 3} for i, q in enumerate(qs)]
    rows.append({"question": "   ", "answer": "#### 0", "difficulty": 0})  # unscorable
    rows.append({"question": qs[2], "answer": "#### 2", "difficulty": 2})  # duplicate of row 2
    data = write_jsonl(tmp_path / "d.jsonl", rows)
    out = tmp_path / "out"
    run_score(
        ScoreConfig(
            data=str(data),
            model=str(tiny_qwen2_dir),
            out=out,
            rows_per_shard=4,
            device="cpu",
            dtype="float32",
        )
    )
    table, m = read_run(out)
    # each row holds ITS prompt's scores (a swap of two rows' scores fails here), by input row
    by_index = {r["extra_info"]["index"]: r for r in table.to_pylist()}
    for i, q in enumerate(qs):
        intra, inter = dense_reference(tiny_qwen2_dir, ScoringTemplate(), q)
        assert by_index[i]["gain_c_intra"] == pytest.approx(intra, abs=1e-4), q
        assert by_index[i]["gain_c_inter"] == pytest.approx(inter, abs=1e-4), q
    assert len(m["shards"]) == 3 and [s["rows"] for s in m["shards"]] == [4, 4, 3]
    schemas = {pq.read_schema(out / s["path"]) for s in m["shards"]}
    assert len(schemas) == 1  # one explicit schema: the shards concatenate
    assert table.column_names[:5] == [
        "data_source",
        "prompt",
        "ability",
        "reward_model",
        "extra_info",
    ]
    assert "index" not in table.column_names and "uid" not in table.column_names
    assert table["gain_rank"].to_pylist() == list(range(11))
    scores = table["gain_score"].to_pylist()
    scored = [s for s in scores if s is not None]
    assert scored == sorted(scored, reverse=True) and len(scored) == 10
    assert scores[-1] is None and table["gain_unscored_reason"].to_pylist()[-1] == "empty_question"
    # the duplicate of row 2 carries row 2's scores and ranks right after it
    index = [e["index"] for e in table["extra_info"].to_pylist()]
    first, dup = index.index(2), index.index(10)
    assert dup == first + 1 and scores[dup] == scores[first]
    assert table["gain_c_intra"][dup] == table["gain_c_intra"][first]
    dup_of = table["gain_duplicate_of"].to_pylist()
    assert dup_of[dup] == table["gain_uid"][first].as_py()
    assert dup_of[:dup] + dup_of[dup + 1 :] == [None] * 10
    assert sorted(r["index"] for r in table["extra_info"].to_pylist()) == list(range(11))
    ei = table["extra_info"].to_pylist()
    assert [e["gain_rank"] for e in ei] == list(range(11))
    assert [e["gain_uid"] for e in ei] == table["gain_uid"].to_pylist()
    assert len(set(table["gain_uid"].to_pylist())) == 11
    assert table["reward_model"].to_pylist()[0]["ground_truth"].isdigit()  # '#### n' -> n
    assert table["difficulty"].to_pylist()  # other input columns pass through
    for s in m["shards"]:
        rank_lo, rank_hi = s["rank_range"]
        part = pq.read_table(out / s["path"])
        assert part["gain_rank"].to_pylist() == list(range(rank_lo, rank_hi + 1))
    for key in (
        "version",
        "created_at",
        "config_hash",
        "input",
        "model",
        "signal",
        "shards",
        "counts",
        "stats",
        "trainer_flags",
    ):
        assert key in m
    assert m["counts"] == {
        "rows": 11,
        "scored": 10,
        "unscored": {"empty_question": 1},
        "duplicates": 1,
    }
    assert m["model"]["layer"] == 3 and m["model"]["chat_template_sha256"]
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", m["model"]["revision"])  # a local folder's files
    assert m["input"]["rows"] == 11 and len(m["input"]["content_hash"]) == 64
    from scipy import stats

    pairs = [  # by input row: the order the manifest's bootstrap resamples
        (r["gain_score"], r["gain_tokens_question"])
        for r in sorted(table.to_pylist(), key=lambda r: r["extra_info"]["index"])
        if r["gain_score"] is not None
    ]
    expected = stats.spearmanr(*zip(*pairs)).statistic
    assert m["stats"]["spearman_score_vs_question_tokens"] == pytest.approx(expected, abs=1e-12)
    from gain_curate.bootstrap import spearman_ci

    est = m["stats"]["spearman_score_vs_question_tokens_interval"]  # with its interval, seed 0
    assert (
        est
        == spearman_ci(
            *map(np.array, zip(*pairs)), what=("gain_score", "question length")
        ).to_dict()
    )
    assert est["value"] == pytest.approx(expected, abs=1e-12) and est["n"] == 10
    assert not (out / ".gain-curate" / "staging").exists()


def test_verl_input_keeps_its_columns(
    tiny_qwen2_dir: Path, shared_data: Path, tmp_path: Path
) -> None:
    src = shared_data / "verl" / "math_train.parquet"
    out = tmp_path / "out"
    run_score(
        ScoreConfig(data=str(src), model=str(tiny_qwen2_dir), out=out, limit=12, device="cpu")
    )
    table, m = read_run(out)
    original = pq.read_table(src).slice(0, 12)
    for col in ("level", "type", "data_source", "ability", "prompt", "reward_model"):
        assert col in table.column_names
    by_index = {r["extra_info"]["index"]: r for r in table.to_pylist()}
    for i, row in enumerate(original.to_pylist()):
        assert by_index[i]["prompt"] == row["prompt"]
        assert by_index[i]["reward_model"] == row["reward_model"]
        assert by_index[i]["level"] == row["level"]
        assert by_index[i]["extra_info"]["split"] == row["extra_info"]["split"]
    assert m["input"]["is_verl_schema"] is True


def test_layer_and_inter_weight(tiny_qwen2_dir: Path, tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "d.jsonl", [{"question": q} for q in QUESTIONS[:3]])
    run_score(
        ScoreConfig(
            data=str(data),
            model=str(tiny_qwen2_dir),
            out=tmp_path / "a",
            layer=1,
            inter_weight=8.0,
            device="cpu",
        )
    )
    table, m = read_run(tmp_path / "a")
    assert m["model"]["layer"] == 1 and m["signal"]["inter_weight"] == 8.0
    for r in table.to_pylist():
        assert r["gain_score"] == pytest.approx(r["gain_c_intra"] + 8 * r["gain_c_inter"])


def test_max_tokens_marks_long_prompts(tiny_qwen2_dir: Path, tmp_path: Path) -> None:
    data = write_jsonl(
        tmp_path / "d.jsonl", [{"question": "short one?"}, {"question": "long " * 300 + "?"}]
    )
    run_score(
        ScoreConfig(
            data=str(data),
            model=str(tiny_qwen2_dir),
            out=tmp_path / "o",
            max_tokens=200,
            device="cpu",
        )
    )
    table, _ = read_run(tmp_path / "o")
    assert table["gain_unscored_reason"].to_pylist() == [None, "too_long"]
    assert table["gain_tokens_question"].to_pylist()[1] > 200  # counted, never truncated


def test_same_input_gives_identical_shards(tiny_qwen2_dir: Path, tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "d.jsonl", [{"question": q} for q in QUESTIONS])
    for name in ("a", "b"):
        run_score(
            ScoreConfig(
                data=str(data),
                model=str(tiny_qwen2_dir),
                out=tmp_path / name,
                device="cpu",
                token_budget=64,
            )
        )
    a = (tmp_path / "a" / "data" / "train-00000-of-00001.parquet").read_bytes()
    b = (tmp_path / "b" / "data" / "train-00000-of-00001.parquet").read_bytes()
    assert a == b


def test_split_from_the_input_names_shards_and_flags(tiny_qwen2_dir: Path, tmp_path: Path) -> None:
    """test.jsonl is a test split: extra_info.split, the shards' names and verl's
    data.val_files say so; a train file (by name, by default or by --split) gives the very
    bytes it gave before the split was read from the input (train-*, split "train")."""
    rows = [{"question": q, "answer": f"#### {i}"} for i, q in enumerate(QUESTIONS)]  # GSM8K
    runs = {}
    for name, data, split in (
        ("plain", "d.jsonl", None),
        ("named", "train.jsonl", None),
        ("flag", "d.jsonl", "train"),
        ("test", "test.jsonl", None),
    ):
        (tmp_path / name).mkdir()
        path = write_jsonl(tmp_path / name / data, rows)
        runs[name] = run_score(
            ScoreConfig(
                data=str(path),
                model=str(tiny_qwen2_dir),
                out=tmp_path / name / "out",
                device="cpu",
                token_budget=64,
                split=split,
            )
        ).manifest
    for name in ("plain", "named", "flag"):
        assert [s["path"] for s in runs[name]["shards"]] == ["data/train-00000-of-00001.parquet"]
        assert runs[name]["input"]["split"] == "train"
    plain = (tmp_path / "plain" / "out" / "data" / "train-00000-of-00001.parquet").read_bytes()
    for name in ("named", "flag"):
        assert (tmp_path / name / "out" / runs[name]["shards"][0]["path"]).read_bytes() == plain
    # ScoreConfig settles the split when it is made: a --split that agrees with the input's
    # own is recorded as the input's
    assert runs["flag"]["input"]["split_from"] == "the default (--split sets it)"
    assert runs["named"]["input"]["split_from"].startswith("the file's name (train.jsonl")
    m = runs["test"]
    assert [s["path"] for s in m["shards"]] == ["data/test-00000-of-00001.parquet"]
    assert not (tmp_path / "test" / "out" / "data" / "train-00000-of-00001.parquet").exists()
    assert (m["input"]["split"], m["input"]["split_from"]) == (
        "test",
        "the file's name (test.jsonl; --split sets it)",
    )
    test, _ = read_run(tmp_path / "test" / "out")
    assert {e["split"] for e in test["extra_info"].to_pylist()} == {"test"}
    train, _ = read_run(tmp_path / "plain" / "out")

    def but_the_split(t: pa.Table) -> list[dict]:
        return [{**r, "extra_info": {**r["extra_info"], "split": None}} for r in t.to_pylist()]

    assert but_the_split(test) == but_the_split(train)  # the same rows, scores and ranks
    shard = str((tmp_path / "test" / "out" / m["shards"][0]["path"]).resolve())
    assert m["trainer_flags"]["verl"][0] == f"'data.val_files=[{shard}]'"
    assert "data.shuffle=False" not in m["trainer_flags"]["verl"]  # verl never shuffles val
    assert runs["plain"]["trainer_flags"]["verl"][:2] == [
        f"'data.train_files=[{(tmp_path / 'plain' / 'out' / 'data').resolve()}"
        "/train-00000-of-00001.parquet]'",
        "data.shuffle=False",
    ]


def test_batched_equals_one_at_a_time(tiny_qwen2_dir: Path, tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "d.jsonl", [{"question": q} for q in QUESTIONS])
    run_score(
        ScoreConfig(
            data=str(data),
            model=str(tiny_qwen2_dir),
            out=tmp_path / "big",
            dtype="float32",
            device="cpu",
            token_budget=100_000,
        )
    )
    run_score(
        ScoreConfig(
            data=str(data),
            model=str(tiny_qwen2_dir),
            out=tmp_path / "one",
            dtype="float32",
            device="cpu",
            token_budget=1,
        )
    )
    big, _ = read_run(tmp_path / "big")
    one, _ = read_run(tmp_path / "one")
    np.testing.assert_allclose(
        big["gain_score"].to_numpy(), one["gain_score"].to_numpy(), atol=1e-5
    )


# --- data_source and one conversation ------------------------------------------------------


def test_gsm8k_lines_become_verls_own_rows(
    tiny_qwen2_dir: Path, shared_data: Path, tmp_path: Path
) -> None:
    """Raw GSM8K lines with the CLI's defaults (template_flags=()): data_source openai/gsm8k,
    the prompt verl's own preprocessing writes (the shared verl Parquet IS that), the number
    after #### as ground truth, and the `prompt` is the conversation that was scored."""
    out = tmp_path / "o"
    run_score(
        ScoreConfig(
            data=str(shared_data / "gsm8k" / "train.jsonl"),
            model=str(tiny_qwen2_dir),
            out=out,
            limit=6,
            device="cpu",
            template_flags=(),
        )
    )
    table, m = read_run(out)
    verl_rows = pq.read_table(shared_data / "verl" / "gsm8k_train.parquet").slice(0, 6).to_pylist()
    for row in table.to_pylist():
        want = verl_rows[row["extra_info"]["index"]]
        assert (row["data_source"], row["prompt"], row["reward_model"]) == (
            want["data_source"],
            want["prompt"],
            want["reward_model"],
        )
    assert m["input"]["data_source"] == "openai/gsm8k"
    assert m["input"]["data_source_from"].startswith("recognised as GSM8K")
    conv = m["signal"]["conversation"]
    assert conv["trained_differs"] is False and conv["train_prompt"] == "conversation"
    assert conv["template_from"] == dict.fromkeys(
        ("system_prompt", "few_shot", "instruction"), "data_source default"
    )
    assert (
        m["signal"]["template"]["separator"] == " "
        and m["signal"]["template"]["system_prompt"] is None
    )


def test_verl_input_scored_as_its_own_chat_and_data_source_flag(
    tiny_qwen2_dir: Path, shared_data: Path, tmp_path: Path
) -> None:
    src = shared_data / "verl" / "math_train.parquet"
    out = tmp_path / "o"
    run_score(
        ScoreConfig(
            data=str(src),
            model=str(tiny_qwen2_dir),
            out=out,
            limit=4,
            device="cpu",
            data_source="lighteval/MATH",
            template_flags=(),
        )
    )
    table, m = read_run(out)
    original = pq.read_table(src).slice(0, 4).to_pylist()
    for row in table.to_pylist():
        want = original[row["extra_info"]["index"]]
        assert row["data_source"] == "lighteval/MATH"  # the flag replaces the input's column
        assert row["prompt"] == want["prompt"]
        # the question found in the chat, less verl's instruction: what online measurement finds
        assert want["prompt"][-1]["content"].startswith(
            row["extra_info"]["question"] + " Let's think step by step"
        )
    assert m["input"]["data_source_from"] == "--data-source"
    assert m["signal"]["conversation"]["scored"] == "the input's own chat prompt"
    assert m["signal"]["template"]["few_shot_name"] == "input"


def test_chat_input_with_template_flags_is_one_line(
    tiny_qwen2_dir: Path, shared_data: Path, tmp_path: Path
) -> None:
    from gain_curate.errors import InputError

    cfg = ScoreConfig(
        data=str(shared_data / "verl" / "gsm8k_train.parquet"),
        model=str(tiny_qwen2_dir),
        out=tmp_path / "o",
        limit=3,
        device="cpu",
        template_flags=("few_shot",),
    )
    with pytest.raises(
        InputError,
        match=(
            r"^`few_shot`: .* already holds the conversation "
            r"the trainer renders .* `train_prompt` question"
        ),
    ):
        run_score(cfg)
    # --train-prompt question: the template is scored, the input's own prompt is trained on
    run_score(ScoreConfig(**{**cfg.__dict__, "train_prompt": "question"}))
    table, m = read_run(tmp_path / "o")
    conv = m["signal"]["conversation"]
    assert conv["trained_differs"] is True and conv["rows_differing"] == 3
    assert conv["trained"] == "the input's own chat prompt" and conv["scored"] == "template"
    assert "DIFFERENT" in conv["note"] and m["signal"]["template"]["few_shot_name"] == "gainrl"


def test_question_mode_trains_on_one_user_turn(tiny_qwen2_dir: Path, tmp_path: Path) -> None:
    data = write_jsonl(tmp_path / "d.jsonl", [{"question": q} for q in QUESTIONS[:3]])
    template = ScoringTemplate(instruction="Answer with a number.")
    run_score(
        ScoreConfig(
            data=str(data),
            model=str(tiny_qwen2_dir),
            out=tmp_path / "o",
            device="cpu",
            template=template,
            train_prompt="question",
        )
    )
    table, m = read_run(tmp_path / "o")
    for row in table.to_pylist():
        q = QUESTIONS[row["extra_info"]["index"]]
        assert row["prompt"] == [{"content": q + "\n\nAnswer with a number.", "role": "user"}]
    conv = m["signal"]["conversation"]
    assert (conv["trained_differs"], conv["rows_differing"], conv["template_from"]) == (
        True,
        3,
        "as given (library call)",
    )
