"""`score --keep-states`' prompt_end@L<k>: the residual stream after k decoder layers at the
last token of the whole rendered prompt (generation prompt included).

Reference in plain sight: the tokenizer's own `apply_chat_template(...,
add_generation_prompt=True)`, tokenized with add_special_tokens=False, through a plain
untruncated `AutoModel` with `output_hidden_states=True`: `hidden_states[k][0, -1]`, one
prompt at a time, no cache, no batch, no prefix sharing. The stored float16 vectors must
equal it cast to float16; the forward-level values must equal it in float32 (1e-4). Real
models: a tiny random Qwen2 and SmolLM2 (both full attention), prompts of different lengths
in one batch, rows after the shared prefix and rows that run whole.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner

from gain_curate.cli import main
from gain_curate.errors import InputError
from gain_curate.executor.launch import run_score
from gain_curate.inputs.conversation import Segments
from gain_curate.runfolder.store import STATES, read_npz
from gain_curate.runtime.models import load_tokenizer, resolve_model
from gain_curate.runtime.truncated import load_model
from gain_curate.scoring import forward, prompt_end
from gain_curate.scoring.config import ScoreConfig
from gain_curate.scoring.probe_layers import default_probe_layers, resolve_probe_layers

PENS = "A shop sells {} pens at 3 dollars each and 4 rulers at 2 dollars each. What do they cost?"
QUESTIONS = [
    PENS.format(12),  # one digit more or less: lengths within the planner's 5% padding, so
    PENS.format(120),  # these batch together with a pad or two in the middle of the cache
    "Its own system prompt: this conversation does not start with the shared prefix.",
    PENS.format(1200),
    "What is 7 times 8?",
    "James writes a 3-page letter to 2 different friends twice a week. How many pages a year? "
    "Count every week of the year, and both friends.",
]
ALONE = 2  # another system prompt: this row runs whole even when the prefix is shared
INSTRUCTION = 'Let\'s think step by step and output the final answer after "####".'


def chats() -> list[list[dict[str, str]]]:
    return [
        [
            {"role": "system", "content": "Solve it." if i != ALONE else "Think, then answer."},
            {"role": "user", "content": f"{q} {INSTRUCTION}"},
        ]
        for i, q in enumerate(QUESTIONS)
    ]


@pytest.fixture(params=["tiny_qwen2_dir", "smollm2_dir"], ids=["qwen2", "smollm2"])
def model_dir(request) -> Path:
    return request.getfixturevalue(request.param)


def reference(model_dir: Path, layers: list[int]) -> list[np.ndarray]:
    """Per chat: (K, d) fp32 hidden_states[k][0, -1] of one plain forward of the whole prompt."""
    from transformers import AutoModel

    tok = load_tokenizer(resolve_model(str(model_dir)))
    model = AutoModel.from_pretrained(model_dir, dtype=torch.float32).eval()
    out = []
    for chat in chats():
        text = tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
        ids = tok(text, add_special_tokens=False)["input_ids"]
        with torch.inference_mode():
            hs = model(torch.tensor([ids]), output_hidden_states=True).hidden_states
        out.append(torch.stack([hs[k][0, -1] for k in layers]).numpy())
    return out


def assert_float16_equal(got: np.ndarray, ref: np.ndarray, what: str) -> None:
    """float16 storage: within an ulp or so of the fp32 reference rounded to float16."""
    ref16 = ref.astype(np.float16).astype(np.float32)
    atol = 1e-5 * float(np.abs(ref).max())  # near-zero entries: fp32 noise, not a ulp
    np.testing.assert_allclose(got.astype(np.float32), ref16, rtol=2e-3, atol=atol, err_msg=what)


@pytest.mark.parametrize("share", [True, False], ids=["shared-prefix", "unshared"])
def test_stored_prompt_end_equals_hidden_states_of_a_plain_forward(
    model_dir: Path, tmp_path: Path, share: bool
) -> None:
    data = tmp_path / "q.jsonl"
    data.write_text("".join(json.dumps({"prompt": c, "answer": "1"}) + "\n" for c in chats()))
    out = tmp_path / "run"
    cfg = ScoreConfig(
        data=str(data),
        model=str(model_dir),
        out=out,
        device="cpu",
        dtype="float32",
        token_budget=2000,  # padding under 5% of it: rows of other lengths batch together
        share_prefix=share,
        keep_states=True,
    )
    res = run_score(cfg)
    entry, n = res.manifest["states"], res.manifest["model"]["num_layers"]
    layers = default_probe_layers(n, res.manifest["model"]["layer"])
    assert layers == ([2, 3] if n == 4 else [15, 20, 25])
    names = [f"prompt_end@L{k}" for k in layers]
    assert entry["probe_layers"] == layers
    assert entry["features"] == ["question_mean", "last_token", *names]
    st = read_npz(out / STATES)
    assert sorted(st) == sorted(["row", "gain_uid", *entry["features"]])
    # the batches hold prompts of different lengths together, and both paths ran
    prepared = pq.read_table(out / ".gain-curate" / "prepared" / "rows.parquet").to_pydict()
    batches = pq.read_table(out / ".gain-curate" / "prepared" / "batches.parquet").to_pydict()
    widths = [
        {len(prepared["tail"][r]) + len(prepared["input_ids"][r]) for r in b}
        for b in batches["rows"]
    ]
    assert any(len(w) > 1 for w in widths), widths
    shared = res.manifest["prefill"]["prompts_sharing_prefix"]
    assert (0 < shared < len(QUESTIONS)) if share else shared == 0
    assert res.manifest["prefill"]["prompt_end_tokens"] == sum(len(t) for t in prepared["tail"])
    for r, want in enumerate(reference(model_dir, layers)):
        for j, name in enumerate(names):
            assert st[name].dtype == np.float16 and st[name].shape[0] == len(QUESTIONS)
            assert_float16_equal(st[name][r], want[j], f"row {r} {name}")


def test_prompt_end_in_float32_equals_a_plain_forward(model_dir: Path) -> None:
    """Forward level, before the float16 cast, on the shared-prefix path: rows of different
    lengths in one batch (pads in the middle of the cache) and a row whose tail is empty
    (its prompt ends at its question: read from the question pass)."""
    from transformers import AutoModel

    ref_model = resolve_model(str(model_dir))
    tok = load_tokenizer(ref_model)
    lm = load_model(ref_model, dtype=torch.float32, device=torch.device("cpu"), layer=None)
    full = AutoModel.from_pretrained(model_dir, dtype=torch.float32).eval()
    layers = default_probe_layers(lm.num_layers, lm.layer)
    prompts = [c for i, c in enumerate(chats()) if i != ALONE]
    ids = [
        tok(
            tok.apply_chat_template(c, add_generation_prompt=True, tokenize=False),
            add_special_tokens=False,
        )["input_ids"]
        for c in prompts
    ]
    p = next(i for i in range(min(map(len, ids))) if len({s[i] for s in ids}) > 1)
    cut = [p + 3 + 2 * i for i in range(len(ids))]  # question ends: every row another length
    cut[-1] = len(ids[-1])  # the last row's "question" runs to the end: no tail
    segs = [Segments(s[:c], p, len(s), s[c:]) for s, c in zip(ids, cut)]
    prefix = forward.run_prefix(lm, ids[0][:p], "torch")
    cache = forward.new_cache(lm)
    qs, tails = [s.input_ids[p:] for s in segs], [s.tail for s in segs]
    with prompt_end.question_ends(lm, layers, tails, [len(q) for q in qs]) as at_q:
        forward.question_batch(lm, prefix, qs, pad_id=0, cache=cache)
    got = prompt_end.prompt_end(lm, cache, [p + len(q) for q in qs], tails, 0, layers, at_q)
    assert got.shape == (len(ids), len(layers), lm.hidden_size) and not tails[-1]
    for r, s in enumerate(ids):
        with torch.inference_mode():
            hs = full(torch.tensor([s]), output_hidden_states=True).hidden_states
        want = torch.stack([hs[k][0, -1] for k in layers])
        scale = want.abs().max()
        assert torch.allclose(got[r], want, rtol=1e-4, atol=1e-5 * scale), (
            r,
            (got[r] - want).abs().max(),
        )


def test_default_probe_layers_follow_the_depth_and_the_scored_layer() -> None:
    assert default_probe_layers(24, 23) == [12, 16, 20]
    assert default_probe_layers(30, 29) == [15, 20, 25]
    assert default_probe_layers(30, 16) == [15, 16]  # a truncated model: clamped, deduplicated
    assert default_probe_layers(4, 3) == [2, 3]
    assert default_probe_layers(30, 0) == []  # layer 0's MLP stops the model: no layer runs whole
    assert resolve_probe_layers((20, 12, 16, 12), 24, 23) == [12, 16, 20]
    for bad in ((0,), (24,), (17,)):
        with pytest.raises(InputError, match="`probe_layers`"):
            resolve_probe_layers(bad, 24, 16)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--probe-layers", "12,x"], "comma-separated list of layer numbers"),
        (["--probe-layers", "12"], "--probe-layers needs --keep-states"),
        (["--keep-states", "--probe-layers", "4"], "1 <= k <= 3"),
    ],
)
def test_bad_probe_layers_are_one_line(
    tiny_qwen2_dir: Path, tmp_path: Path, args: list[str], says: str
) -> None:
    data = tmp_path / "q.jsonl"
    data.write_text(json.dumps({"question": QUESTIONS[1], "answer": "1"}) + "\n")
    cmd = [
        "score",
        "--model",
        str(tiny_qwen2_dir),
        "--data",
        str(data),
        "--out",
        str(tmp_path / "o"),
    ]
    res = CliRunner().invoke(main, [*cmd, "--device", "cpu", *args])
    assert res.exit_code != 0 and res.exception is None or isinstance(res.exception, SystemExit)
    assert says in res.output and "Traceback" not in res.output, res.output
    assert not (tmp_path / "o" / "gain_manifest.json").exists()
