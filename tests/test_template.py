"""Where the question segment is, for every chat template: inside the LAST user turn, found
from character offsets. The Llama-3, Qwen3 and Gemma 3 templates in tests/chat_templates/
are written by this project (text, no hub), each reproducing its family's rendering rules:
trimmed content, earlier turns rewritten by content, no system role.

The invariant most tests lean on: P (every token before the question) does not depend on
the question. A question found in the wrong place (a role name in the generation prompt,
a copy in a few-shot turn) gives a different P."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from gain_curate.inputs.conversation import render_chat, segment_batch
from gain_curate.inputs.template import ScoringTemplate

TEMPLATES = Path(__file__).parent / "chat_templates"
FAMILIES = ["qwen2.5", "llama3", "qwen3", "gemma3"]
TRIMS = {"llama3", "gemma3"}  # these templates strip each turn's content
QUESTIONS = [
    "What is 2 + 2?",
    "A train leaves at 3 pm and travels 120 km at 60 km/h. When does it arrive?",
    "assistant",  # a role name, also in the generation prompt
    "user",
    "system",
    "model",  # Gemma's name for the assistant
    "<think>",  # in the few-shot answer
]


# Each family's turn markers are single special tokens in its own tokenizer; added here to a
# copy of the Qwen2.5 tokenizer so that `?<|eot_id|>` does not merge into one BPE token.
SPECIAL = {
    "llama3": ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
    "qwen3": [],
    "gemma3": ["<bos>", "<start_of_turn>", "<end_of_turn>"],
}
ADDED = {"qwen3": ["<think>", "</think>"]}  # Qwen3's added (not special) tokens


@pytest.fixture(scope="module")
def tokenizers(qwen_tokenizer) -> dict:
    """The real Qwen2.5 tokenizer (ids and offsets) rendering each family's chat template."""
    out = {"qwen2.5": qwen_tokenizer}
    for family in FAMILIES[1:]:
        tok = copy.deepcopy(qwen_tokenizer)
        tok.add_special_tokens({"additional_special_tokens": SPECIAL[family]})
        tok.add_tokens(ADDED.get(family, []))
        tok.chat_template = (TEMPLATES / f"{family}.jinja").read_text()
        out[family] = tok
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_question_span_is_in_the_last_user_turn(tokenizers, family: str) -> None:
    tok = tokenizers[family]
    template = ScoringTemplate()
    starts = set()
    for q in QUESTIONS:
        text, start, end = render_chat(tok, template.messages(q), q)
        assert text[start:end] == q
        assert text.startswith(render_chat(tok, template.messages("x"), "x")[0][:start])
        starts.add(start)
    assert len(starts) == 1, (
        starts
    )  # the question always starts where the last user turn's content does


@pytest.mark.parametrize("family", FAMILIES)
def test_prefix_does_not_depend_on_the_question(tokenizers, family: str) -> None:
    tok = tokenizers[family]
    segs = segment_batch(tok, ScoringTemplate(), QUESTIONS)
    prefixes = {tuple(s.input_ids[: s.p]) for s in segs}
    assert len(prefixes) == 1
    for q, s in zip(QUESTIONS, segs):
        assert tok.decode(s.input_ids[s.p :]).strip() == q


def test_role_name_question_is_not_found_in_the_generation_prompt(tokenizers) -> None:
    """The issue's case: with `rfind` over the whole text, `assistant` was found in the
    generation prompt (p = 160, not 156); the question must be the user turn's content."""
    tok = tokenizers["qwen2.5"]
    [s, ref] = segment_batch(tok, ScoringTemplate(), ["assistant", "What is 2 + 2?"])
    assert s.p == ref.p and s.q == 1 and tok.decode(s.input_ids[s.p :]) == "assistant"
    text = tok.apply_chat_template(
        ScoringTemplate().messages("assistant"), tokenize=False, add_generation_prompt=True
    )
    assert (
        text.rfind("assistant")
        > render_chat(tok, ScoringTemplate().messages("assistant"), "assistant")[1]
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_question_repeated_in_a_few_shot_turn(tokenizers, family: str) -> None:
    """The few-shot example asks the very question being scored: the segment is the copy
    in the last user turn, and the few-shot copy lies inside P."""
    tok = tokenizers[family]
    q = "How many legs do 3 spiders have?"
    template = ScoringTemplate(few_shot=((q, "24"),))
    text, start, _ = render_chat(tok, template.messages(q), q)
    assert 0 <= text.find(q) < start
    [s, other] = segment_batch(tok, template, [q, "What is 2 + 2?"])
    assert s.input_ids[: s.p] == other.input_ids[: other.p]
    assert q in tok.decode(s.input_ids[: s.p]) and tok.decode(s.input_ids[s.p :]).strip() == q


@pytest.mark.parametrize("family", FAMILIES)
def test_instruction_suffix_stays_outside_the_question(tokenizers, family: str) -> None:
    tok = tokenizers[family]
    q = "What is 12 times 3?"
    plain = segment_batch(tok, ScoringTemplate(), [q])[0]
    [s] = segment_batch(tok, ScoringTemplate(instruction="Put the final answer in \\boxed{}."), [q])
    # P unchanged; Q the same tokens but its last, which may merge the question's last
    # character with the text after it (`?` + `\n\n` is one token): it still overlaps Q
    assert (s.p, s.q) == (plain.p, plain.q) and s.input_ids[:-1] == plain.input_ids[:-1]
    assert tok.decode(s.input_ids[s.p :]).strip() == q and "boxed" not in tok.decode(s.input_ids)
    assert s.total_tokens > plain.total_tokens  # the instruction is counted, never run


@pytest.mark.parametrize("family", FAMILIES)
def test_strip_fallback_for_templates_that_trim(tokenizers, family: str) -> None:
    tok = tokenizers[family]
    q = "  What is 2 + 2?\n\n"
    text, start, end = render_chat(tok, ScoringTemplate().messages(q), q)
    assert text[start:end] == (q.strip() if family in TRIMS else q)
    [s] = segment_batch(tok, ScoringTemplate(), [q])
    assert tok.decode(s.input_ids[s.p :]).strip() == q.strip()


def test_qwen3_rewrites_the_few_shot_turn_and_the_question_is_still_found(tokenizers) -> None:
    """Qwen3 drops <think> reasoning from assistant turns before the last user turn: the
    rendered prefix differs from a naive concatenation, the segment is still right."""
    tok = tokenizers["qwen3"]
    q = "What is 2 + 2?"
    text, start, _ = render_chat(tok, ScoringTemplate().messages(q), q)
    assert "12 boxes of 8 muffins" not in text and "<answer> 101 </answer>" in text[:start]


# --- every unscored reason, produced by a real input -------------------------------------


def score_rows_of(
    tmp_path: Path, model: Path, questions: list[str], *flags: str
) -> dict[str, str | None]:
    from click.testing import CliRunner

    from gain_curate.cli import main

    data = tmp_path / "q.jsonl"
    data.write_text("".join(json.dumps({"question": q, "answer": "1"}) + "\n" for q in questions))
    out = tmp_path / "out"
    argv = [
        "score",
        "--model",
        str(model),
        "--data",
        str(data),
        "--out",
        str(out),
        "--overwrite",
        *flags,
    ]
    result = CliRunner().invoke(main, argv)
    assert result.exit_code == 0, result.output
    return {
        r["extra_info"]["question"]: r["gain_unscored_reason"]
        for r in pq.read_table(out / "data").to_pylist()
    }


def test_question_too_short(tiny_qwen2_dir: Path, tmp_path: Path) -> None:
    reasons = score_rows_of(tmp_path, tiny_qwen2_dir, ["7", "What is 2 + 2?"])
    assert reasons == {"7": "question_too_short", "What is 2 + 2?": None}


def test_no_prefix(tiny_qwen2_dir: Path, tmp_path: Path) -> None:
    """A template that renders the user's text first, with no system prompt or few-shot."""
    bare = tmp_path / "bare.jinja"
    bare.write_text("{% for m in messages %}{{ m['content'] }}\n{% endfor %}")
    reasons = score_rows_of(
        tmp_path,
        tiny_qwen2_dir,
        ["What is 2 + 2?"],
        "--chat-template",
        str(bare),
        "--no-system-prompt",
        "--few-shot",
        "none",
    )
    assert reasons == {"What is 2 + 2?": "no_prefix"}


def test_question_not_found_in_template(tiny_qwen2_dir: Path, tmp_path: Path) -> None:
    """A template that changes the text it renders: the question is nowhere in it."""
    shouting = tmp_path / "upper.jinja"
    shouting.write_text(
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] | upper }}\n{% endfor %}"
    )
    reasons = score_rows_of(
        tmp_path,
        tiny_qwen2_dir,
        ["what is two plus two?", "WHAT IS 2 + 2?"],
        "--chat-template",
        str(shouting),
    )
    assert reasons == {
        "what is two plus two?": "question_not_found_in_template",
        "WHAT IS 2 + 2?": None,
    }


def test_non_finite_hidden_states(tiny_qwen2_dir: Path, qwen_tokenizer, tmp_path: Path) -> None:
    """A checkpoint whose embedding of one token is NaN: the prompts holding that token get
    NaN hidden states and no score; the others are scored as usual."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    model = tmp_path / "nan-model"
    shutil.copytree(tiny_qwen2_dir, model)
    weights = load_file(model / "model.safetensors")
    [name] = [k for k in weights if k.endswith("embed_tokens.weight")]
    for token in qwen_tokenizer(" zebra", add_special_tokens=False)["input_ids"]:
        weights[name][token] = torch.nan
    save_file(weights, model / "model.safetensors", metadata={"format": "pt"})
    reasons = score_rows_of(tmp_path, model, ["How many stripes has a zebra?", "What is 2 + 2?"])
    assert reasons == {
        "How many stripes has a zebra?": "non_finite_hidden_states",
        "What is 2 + 2?": None,
    }


# --- one conversation: what is scored is what the trainer renders from `prompt` ------------


def test_data_source_defaults_are_verls_own_preprocessing() -> None:
    from gain_curate.inputs.template import (
        BOXED_INSTRUCTION,
        GSM8K_INSTRUCTION,
        data_source_template,
        resolve_template,
    )

    gsm8k = data_source_template("openai/gsm8k")
    q = "Natalia sold clips to 48 of her friends in April. How many?"
    # examples/data_preprocess/gsm8k.py: question + " " + instruction, one user turn
    assert gsm8k.messages(q) == [{"role": "user", "content": q + " " + GSM8K_INSTRUCTION}]
    for name in ("DigitalLearningGmbH/MATH-lighteval", "lighteval/MATH", "HuggingFaceH4/MATH-500"):
        assert data_source_template(name).instruction == BOXED_INSTRUCTION
    assert data_source_template("my/own") == ScoringTemplate()  # R1-style + one worked example
    # flags win field by field; an explicit instruction keeps the "\n\n" separator
    given = ScoringTemplate(system_prompt="Be brief.", instruction="Answer with a number.")
    t = resolve_template(given, ("system_prompt",), "openai/gsm8k")
    assert (t.system_prompt, t.few_shot, t.instruction) == ("Be brief.", (), GSM8K_INSTRUCTION)
    t = resolve_template(given, ("instruction",), "openai/gsm8k")
    assert t.user_content("Q?") == "Q?\n\nAnswer with a number." and t.system_prompt is None
    assert resolve_template(given, None, "openai/gsm8k") is given  # library callers: as given


def test_conversations_per_mode() -> None:
    from gain_curate.inputs.conversation import conversations, split_instruction
    from gain_curate.inputs.template import GSM8K_INSTRUCTION

    t = ScoringTemplate(instruction="Answer briefly.")
    plain = conversations(t, ["What is 2+2?", None], None)
    assert plain[1] is None and plain[0].scored == plain[0].trained == t.messages("What is 2+2?")
    assert not plain[0].differs and not plain[0].from_input
    bare = conversations(t, ["What is 2+2?"], None, train_prompt="question")[0]
    assert bare.scored == t.messages("What is 2+2?") and bare.differs
    assert bare.trained == [{"role": "user", "content": "What is 2+2?\n\nAnswer briefly."}]
    chat = [{"role": "user", "content": "What is 2+2? " + GSM8K_INSTRUCTION}]
    own = conversations(t, [chat[0]["content"]], [chat])[0]
    assert own.scored is chat and own.trained is chat and own.from_input and not own.differs
    assert own.question == "What is 2+2?"  # the instruction is in no segment
    other = conversations(t, [chat[0]["content"]], [chat], train_prompt="question")[0]
    assert other.scored == t.messages("What is 2+2?") and other.trained is chat and other.differs
    assert split_instruction("Why? Answer briefly.", ["Answer briefly."]) == "Why?"
    assert (
        split_instruction("Answer briefly.", ["Answer briefly."]) == "Answer briefly."
    )  # nothing before it
    from gain_curate.errors import InputError

    with pytest.raises(InputError, match="`train_prompt` 'bare'"):
        conversations(t, ["q"], None, train_prompt="bare")


def test_scored_ids_equal_apply_chat_template_of_prompt(
    tiny_qwen2_dir: Path, qwen_tokenizer, tmp_path: Path
) -> None:
    """The one-conversation rule at the token level, Qwen2.5 template: the ids the scorer ran
    are the start of `apply_chat_template(prompt, add_generation_prompt=True)` (what verl's
    RLHFDataset and agent loop render), and the whole conversations are as long."""
    questions = [
        "A crate holds 4 rows of 7 jars. How many jars?",
        "Tom has 3 apples and eats one. How many are left?",
    ]
    for flags in ([], ["--instruction", "Show your work."], ["--data-source", "openai/gsm8k"]):
        score_rows_of(tmp_path, tiny_qwen2_dir, questions, *flags)
        out = tmp_path / "out"
        manifest = json.loads((out / "gain_manifest.json").read_text())
        assert manifest["signal"]["conversation"]["trained_differs"] is False
        prepared = pq.read_table(out / ".gain-curate" / "prepared" / "rows.parquet").to_pylist()
        for row in pq.read_table(out / "data").to_pylist():
            ids = qwen_tokenizer.apply_chat_template(
                row["prompt"], add_generation_prompt=True, tokenize=True
            )
            ids = list(
                ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "input_ids") else ids
            )
            ran = prepared[row["extra_info"]["index"]]
            assert (
                ids[: len(ran["input_ids"])] == ran["input_ids"] and len(ids) == ran["total_tokens"]
            )
        if flags == ["--data-source", "openai/gsm8k"]:
            assert all(len(r["prompt"]) == 1 for r in pq.read_table(out / "data").to_pylist())
        else:
            assert [m["role"] for m in row["prompt"]] == ["system", "user", "assistant", "user"]


def test_conversations_and_their_segments_are_the_same_in_chunks(qwen_tokenizer) -> None:
    """A million rows take minutes to render and tokenize, so both report progress as they
    go, chunk by chunk: the result does not depend on the chunk, and the progress adds up
    to every row once."""
    from gain_curate.inputs.conversation import conversation_segments, conversations

    questions = [f"What is {i} times {i + 7}?" for i in range(23)] + [None, "Why?"]
    done: list[int] = []
    convs = conversations(ScoringTemplate(), questions, None, advance=done.append)
    assert sum(done) == len(questions)
    rows = [c for c in convs if c is not None]
    whole, steps = conversation_segments(qwen_tokenizer, rows), []
    assert conversation_segments(qwen_tokenizer, rows, steps.append, chunk=4) == whole
    assert steps == [4, 4, 4, 4, 4, 4] and len(whole) == 24 and None not in whole
