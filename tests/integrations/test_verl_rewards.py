"""The output trains with verl's OWN default reward, and the scored conversation is the one
verl renders: GSM8K and MATH in each input shape (raw question/answer JSON lines, verl's
Parquet, a JSON array), scored through the CLI as a user runs it, then verl's
`default_compute_score` on every row (1.0 for the answer written the way the prompt asks,
0.0 for a wrong one), and the scorer's token ids against verl's rendering of `prompt`. And
the default reward's table (tests/reward_cases.py) through verl's own GSM8K reward: where
both read a `####` answer, they give the same reward (this part needs no shared data).

Runs under verl 0.7.1 (.venv-integrations) and 0.9.1 (.venv-verl09); skipped elsewhere, and
where ../shared/data is absent."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

pytest.importorskip("verl", reason="verl not installed: run `make test-integrations`")
from omegaconf import OmegaConf  # noqa: E402
from reward_cases import CASES as REWARD_CASES  # noqa: E402  (tests/reward_cases.py)
from reward_cases import Case  # noqa: E402  (the table `make test` asserts)
from verl.utils.dataset.rl_dataset import RLHFDataset  # noqa: E402
from verl.utils.reward_score import default_compute_score, gsm8k  # noqa: E402

from gain_curate.checks.rewards import marked_answer, math_reward  # noqa: E402
from gain_curate.cli import main  # noqa: E402
from gain_curate.inputs.conversation import render_chat  # noqa: E402

ROWS = 5
GSM8K, MATH = "openai/gsm8k", "DigitalLearningGmbH/MATH-lighteval"


def gsm8k_rows(shared: Path) -> list[dict]:
    lines = (shared / "gsm8k" / "train.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines[:ROWS]]


def math_rows(shared: Path) -> list[dict]:
    return json.loads((shared / "math" / "train.json").read_text(encoding="utf-8"))[:ROWS]


def input_file(shape: str, dataset: str, shared: Path, tmp: Path) -> Path:
    """The shared files as they are, and the two shapes ../shared lacks made from them."""
    if shape == "verl-parquet":
        return shared / "verl" / f"{dataset}_train.parquet"
    if (shape, dataset) == ("jsonl", "gsm8k"):
        return shared / "gsm8k" / "train.jsonl"
    if (shape, dataset) == ("json-array", "math"):
        return shared / "math" / "train.json"
    rows = gsm8k_rows(shared) if dataset == "gsm8k" else math_rows(shared)
    path = tmp / f"{dataset}.{'jsonl' if shape == 'jsonl' else 'json'}"
    text = "".join(json.dumps(r) + "\n" for r in rows) if shape == "jsonl" else json.dumps(rows)
    path.write_text(text, encoding="utf-8")
    return path


CASES = [
    (shape, dataset)
    for dataset in ("gsm8k", "math")
    for shape in ("jsonl", "verl-parquet", "json-array")
]


def score(model: Path, data: Path, out: Path, *flags: str) -> tuple[list[dict], dict]:
    """`gain-curate score` as a user runs it; the output rows and the manifest."""
    args = [
        "score",
        "--model",
        str(model),
        "--data",
        str(data),
        "--out",
        str(out),
        "--limit",
        str(ROWS),
        "--device",
        "cpu",
        "--json",
        *flags,
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "gain_manifest.json").read_text())
    return pq.read_table(out / "data").to_pylist(), manifest


@pytest.fixture(scope="module")
def runs(tiny_qwen2_dir: Path, shared_data: Path, tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("verl-rewards")
    return {
        case: (
            *score(tiny_qwen2_dir, input_file(*case, shared_data, tmp), tmp / "-".join(case)),
            tmp / "-".join(case),
        )
        for case in CASES
    }


def solution(dataset: str, answer: str) -> str:
    """A completion written the way the prompt asks: verl's GSM8K reward reads the last
    `#### <number>` (strict), its MATH reward the last \\boxed{}."""
    if dataset == "gsm8k":
        return f"First add the parts, then subtract.\n#### {answer}"
    return f"Working through it step by step, the result is $\\boxed{{{answer}}}$."


@pytest.mark.parametrize(("shape", "dataset"), CASES)
def test_verls_default_reward_scores_every_row(runs: dict, shape: str, dataset: str) -> None:
    rows, manifest, _ = runs[(shape, dataset)]
    want = GSM8K if dataset == "gsm8k" else MATH
    assert manifest["input"]["data_source"] == want, manifest["input"]["data_source_from"]
    asks = '"####"' if dataset == "gsm8k" else "\\boxed{}"
    assert len(rows) == ROWS
    for row in rows:
        assert row["data_source"] == want
        assert row["prompt"][-1]["role"] == "user" and asks in row["prompt"][-1]["content"]
        assert "<answer>" not in json.dumps(
            row["prompt"]
        )  # nothing contradicts the reward's format
        truth = row["reward_model"]["ground_truth"]
        right = default_compute_score(row["data_source"], solution(dataset, truth), truth)
        wrong = default_compute_score(row["data_source"], solution(dataset, "-12345"), truth)
        assert (right, wrong) == (1.0, 0.0), (row["prompt"], truth)


def test_every_shape_of_a_dataset_gives_the_same_prompts_and_scores(runs: dict) -> None:
    """verl's own Parquet IS verl's preprocessing of the raw rows, so the defaults make the
    raw shapes into the very same prompts, scored the same."""
    for dataset in ("gsm8k", "math"):
        by_shape = {}
        for shape in ("jsonl", "verl-parquet", "json-array"):
            rows, _, _ = runs[(shape, dataset)]
            by_shape[shape] = {
                r["extra_info"]["index"]: (
                    r["prompt"],
                    r["reward_model"]["ground_truth"],
                    r["gain_score"],
                )
                for r in rows
            }
        assert by_shape["jsonl"] == by_shape["json-array"] == by_shape["verl-parquet"], dataset


@pytest.mark.parametrize("case", REWARD_CASES, ids=[c.why for c in REWARD_CASES])
def test_the_default_reward_reads_gsm8k_answers_as_verl_does(case: Case) -> None:
    """The default reward's table (tests/reward_cases.py, asserted under `make test`) through
    verl's own GSM8K reward: verl reads a `####` answer exactly where the table says and
    gives the table's reward, directly and through default_compute_score's router; wherever
    verl reads one, the default reward reads that same answer (unless an `<answer>` tag
    comes first) and gives verl's reward."""
    read = gsm8k.extract_solution(case.completion)  # strict: what compute_score compares
    assert (read is None) == (case.verl is None), read
    verls = 0.0 if case.verl is None else case.verl
    assert gsm8k.compute_score(case.completion, case.gold) == verls
    assert default_compute_score(GSM8K, case.completion, case.gold) == verls
    marker, said = marked_answer(case.completion) or ("none", None)
    if read is not None:
        assert marker in ("answer", "verl"), marker  # nothing but a tag comes before it
    if marker == "verl":  # both read the `####` answer: the same one, the same reward
        assert said == read
        assert math_reward(case.completion, case.gold) == verls


def test_the_table_holds_both_sides() -> None:
    both = [c for c in REWARD_CASES if (marked_answer(c.completion) or ("",))[0] == "verl"]
    assert len(both) >= 15 and {c.verl for c in both} == {0.0, 1.0}
    assert any(c.verl is None and c.ours == 1.0 for c in REWARD_CASES)  # ours reads, verl does not


def verl_prompt_ids(tokenizer, messages: list[dict]) -> list[int]:
    """The ids verl's rollout feeds the policy for a dataset row's `raw_prompt`."""
    try:  # verl 0.9: the agent loop's Continuous Token builder (model_type qwen2)
        from verl.utils.tokenizer.continuous_token_wiring import create_continuous_token_builder
    except ImportError:  # verl 0.7: AgentLoopBase.apply_chat_template
        from verl.utils.chat_template import apply_chat_template
        from verl.utils.tokenizer import normalize_token_ids

        ids = apply_chat_template(
            tokenizer, messages, tools=None, add_generation_prompt=True, tokenize=True
        )
        return normalize_token_ids(ids)
    return create_continuous_token_builder(tokenizer, hf_model_type="qwen2").build_initial_tokens(
        messages
    )


@pytest.fixture(scope="module")
def templated_run(tiny_qwen2_dir: Path, tmp_path_factory) -> tuple[list[dict], dict, Path]:
    """A data source verl does not know: the R1-style system prompt and a worked example are
    in the conversation, so the check covers system and few-shot turns too."""
    tmp = tmp_path_factory.mktemp("templated")
    data = tmp / "q.jsonl"
    data.write_text(
        "".join(
            json.dumps(
                {
                    "question": f"A crate holds {i} rows of {i + 4} jars. How many jars?",
                    "answer": str(i * (i + 4)),
                }
            )
            + "\n"
            for i in range(1, 6)
        )
    )
    return (
        *score(tiny_qwen2_dir, data, tmp / "run", "--instruction", "Show your work."),
        tmp / "run",
    )


@pytest.mark.parametrize(
    "case", [("jsonl", "gsm8k"), ("verl-parquet", "math"), ("json-array", "math"), "templated"]
)
def test_scored_tokens_are_what_verl_renders_from_prompt(
    runs: dict, templated_run, qwen_tokenizer, case
) -> None:
    rows, manifest, out = templated_run if case == "templated" else runs[case]
    assert manifest["signal"]["conversation"]["trained_differs"] is False
    shards = [str(out / s["path"]) for s in manifest["shards"]]
    config = OmegaConf.create(
        {
            "prompt_key": "prompt",
            "max_prompt_length": 1024,
            "filter_overlong_prompts": True,
            "truncation": "error",
            "filter_overlong_prompts_workers": 1,
        }
    )
    dataset = RLHFDataset(data_files=shards, tokenizer=qwen_tokenizer, config=config)
    assert len(dataset) == len(rows)  # none filtered: verl measured every prompt as we did
    prepared = pq.read_table(out / ".gain-curate" / "prepared" / "rows.parquet").to_pylist()
    for i in range(len(dataset)):
        item = dataset[i]
        verl_ids = verl_prompt_ids(qwen_tokenizer, list(item["raw_prompt"]))
        ran = prepared[
            item["extra_info"]["index"]
        ]  # what the scorer ran: tokens up to the question's end
        assert ran["total_tokens"] == len(verl_ids)
        assert verl_ids[: len(ran["input_ids"])] == ran["input_ids"]
        # the rest (instruction, end of turn, generation prompt) as the scorer rendered it
        text, start, end = render_chat(qwen_tokenizer, list(item["raw_prompt"]), ran["question"])
        assert (
            start >= 0 and qwen_tokenizer(text, add_special_tokens=False)["input_ids"] == verl_ids
        )
