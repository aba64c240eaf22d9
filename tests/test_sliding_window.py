"""Sliding-window attention (Mistral, Gemma 2, Gemma 3) with a shared prefix longer than
the window: the shared-prefix path must equal the unshared one.

The prefix (default system prompt + few-shot turn, 156 Qwen2.5 tokens) is ~10x the
16-token window, and the questions range from shorter than the window to several windows
long. Tiny random models, built here, with the real Qwen2.5 tokenizer saved beside them.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gain_curate.inputs.conversation import Segments, segment_batch
from gain_curate.inputs.template import ScoringTemplate
from gain_curate.runtime.models import resolve_model
from gain_curate.runtime.truncated import LoadedModel, load_model
from gain_curate.scoring import forward
from gain_curate.scoring.angles import angle_scores
from gain_curate.scoring.prefill import PrefillStats, segment_sums

WINDOW = 16
QUESTIONS = [
    "What is 7 times 8?",
    "Hi there",
    "Weng earns $12 an hour for babysitting. How much did she earn for 50 minutes?",
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips "
    "in May. How many clips did Natalia sell altogether in April and May?",
    "A train leaves the station at 9:15 and travels at 80 km/h for 2 hours and 45 minutes, "
    "then stops for 20 minutes and travels another 130 km at 65 km/h. At what time does it "
    "arrive, and how far has it travelled in total? Give both answers with units.",
]
COMMON = dict(
    vocab_size=151936,  # Qwen2.5's padded vocab: every real token id fits
    hidden_size=64,
    intermediate_size=128,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    max_position_embeddings=4096,
    initializer_range=0.2,  # peaked attention: the window changes the hidden states a lot
    tie_word_embeddings=True,
    bos_token_id=151643,
    eos_token_id=151645,
    pad_token_id=151643,
)
# Gemma 3: sliding, sliding, full, sliding. Gemma 2 alternates sliding / full by default.
GEMMA3_LAYERS = ["sliding_attention", "sliding_attention", "full_attention", "sliding_attention"]


def _build(family: str):
    import transformers as tf

    if family == "mistral":
        return tf.MistralForCausalLM(
            tf.MistralConfig(**COMMON, num_hidden_layers=3, sliding_window=WINDOW)
        )
    if family == "gemma2":
        return tf.Gemma2ForCausalLM(
            tf.Gemma2Config(**COMMON, num_hidden_layers=4, sliding_window=WINDOW)
        )
    config = tf.Gemma3TextConfig(
        **COMMON, num_hidden_layers=4, sliding_window=WINDOW, layer_types=GEMMA3_LAYERS
    )
    return tf.Gemma3ForCausalLM(config)


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory, qwen_tokenizer) -> dict[str, Path]:
    dirs = {}
    for family in ("mistral", "gemma2", "gemma3"):
        torch.manual_seed(0)
        folder = tmp_path_factory.mktemp(f"tiny-{family}")
        _build(family).eval().save_pretrained(folder)
        qwen_tokenizer.save_pretrained(folder)
        dirs[family] = folder
    return dirs


@pytest.fixture(scope="module")
def segments(qwen_tokenizer) -> list[Segments]:
    segs = segment_batch(qwen_tokenizer, ScoringTemplate(), QUESTIONS)
    # and one prompt under another system prompt: it cannot share the prefix and runs whole
    segs += segment_batch(
        qwen_tokenizer, ScoringTemplate(system_prompt="Be brief."), QUESTIONS[3:4]
    )
    assert all(s is not None for s in segs)
    p = segs[0].p
    assert p > 8 * WINDOW  # the shared prefix is many windows long
    qs = sorted(s.q for s in segs[:-1])
    assert qs[0] < WINDOW < qs[-2] and qs[-1] > 3 * WINDOW  # shorter and longer than it
    return segs


def _load(model_dirs: dict[str, Path], family: str, layer: int | None) -> LoadedModel:
    ref = resolve_model(str(model_dirs[family]))
    return load_model(ref, dtype=torch.float32, device=torch.device("cpu"), layer=layer)


def _sums(lm: LoadedModel, segs: list[Segments], share: bool, stats: PrefillStats | None = None):
    out = {}
    for b in segment_sums(lm, segs, token_budget=10_000, share_prefix=share, stats=stats):
        for i, s_p, s_q in zip(b.indices, b.s_p, b.s_q):
            out[i] = (s_p, s_q)
    return out


# (family, --layer): the hooked layer's own attention and the ones before it.
CASES = [
    ("mistral", None),  # every layer sliding
    ("gemma2", None),  # last layer full, after a sliding one
    ("gemma2", 0),  # the first (sliding) layer alone
    ("gemma3", None),  # last layer sliding, after a full one
    ("gemma3", 1),  # sliding layers only
    ("gemma3", 2),  # a full layer after two sliding ones
]


@pytest.mark.parametrize(("family", "layer"), CASES)
def test_shared_prefix_equals_unshared_path(model_dirs, segments, family, layer) -> None:
    lm = _load(model_dirs, family, layer)
    stats = PrefillStats()
    fast, plain = _sums(lm, segments, True, stats), _sums(lm, segments, False)
    assert stats.prompts_sharing_prefix == len(segments) - 1  # all but the last
    assert sorted(fast) == sorted(plain) == list(range(len(segments)))
    for i in range(len(segments)):
        torch.testing.assert_close(fast[i][0], plain[i][0], rtol=0, atol=1e-5)
        torch.testing.assert_close(fast[i][1], plain[i][1], rtol=0, atol=1e-5)
    q = torch.tensor([float(s.q) for s in segments])
    p = torch.tensor([float(s.p) for s in segments])
    a = angle_scores(
        torch.stack([fast[i][1] for i in range(len(segments))]),
        q,
        torch.stack([fast[i][0] for i in range(len(segments))]),
        p,
        1.0,
    )
    b = angle_scores(
        torch.stack([plain[i][1] for i in range(len(segments))]),
        q,
        torch.stack([plain[i][0] for i in range(len(segments))]),
        p,
        1.0,
    )
    torch.testing.assert_close(a.score, b.score, rtol=0, atol=1e-5, equal_nan=True)


@pytest.mark.parametrize("family", ["mistral", "gemma2", "gemma3"])
def test_padded_question_batch_equals_whole_runs(model_dirs, segments, family) -> None:
    """One right-padded batch of questions of every length against the shared prefix: each
    row equals that prompt's own whole run (the padding and the window do not interact)."""
    lm = _load(model_dirs, family, None)
    segs = segments[:-1]
    p = segs[0].p
    prefix = forward.run_prefix(lm, segs[0].input_ids[:p], "torch")
    # every layer keeps the whole prefix, so the cache length is p on every layer
    assert [k.shape[-2] for k, _ in prefix.kv] == [p] * len(prefix.kv)
    qs = [s.input_ids[p:] for s in segs]
    h = forward.question_batch(lm, prefix, qs, pad_id=0)
    for i, s in enumerate(segs):
        whole = forward.full_batch(lm, [s.input_ids], pad_id=0)[0, p:]
        torch.testing.assert_close(h[i, : s.q], whole, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("family", ["mistral", "gemma3"])
def test_the_window_is_in_effect(model_dirs, segments, family) -> None:
    """Guard against a vacuous pass: with the window lifted the unshared sums change a lot."""
    lm = _load(model_dirs, family, None)
    windowed = _sums(lm, segments, False)
    lm.model.config.sliding_window = 10**6
    unwindowed = _sums(lm, segments, False)
    longest = max(range(len(segments) - 1), key=lambda i: segments[i].q)
    assert (windowed[longest][1] - unwindowed[longest][1]).abs().max() > 0.1
