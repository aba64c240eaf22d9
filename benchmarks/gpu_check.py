"""The GPU check: one script that checks the kernel, the scores and the speed on a bare GPU.

    python3 benchmarks/gpu_check.py --out benchmarks/gpu-check          # `make gpu-check`
    python3 benchmarks/gpu_check.py --device cpu --quick --out /tmp/gc  # CPU mode (the test)

It needs only what the GPU machines have (torch, triton, transformers with tokenizers,
pyarrow, click, rich, numpy): no venv, no install, no network, nothing from ../shared, and
gain_curate imported from this checkout. Everything it scores is made in code: a byte-level
BPE tokenizer trained in memory, random-init models, generated questions.

1. kernel: the Triton segment sums against the torch reference (fp32/bf16/fp16, d = 1 ..
   8192, length-1 and empty segments, empty input; N x d past 2^31 when memory allows);
2. score: `gain-curate score` itself (fp32, bf16, a middle layer) against a float64 CPU
   reference that runs every conversation whole and averages the cosines densely;
3. sliding window: a 16-token window under a ~140-token shared prefix (mistral: every layer
   windowed; gemma3: windowed and full layers alternate), with and without prefix sharing;
4. speed: random-init Qwen2.5-0.5B and -7B shapes in bf16 through the library's truncated
   prefill: tokens/s, MFU, the kernel's fraction of HBM bandwidth, peak memory.

Writes OUT/gpu_check.json (every figure, pass/fail, versions, imported modules) and
OUT/gpu_check.md (rows for benchmarks/RESULTS.md); exit status 1 if any check fails. About
3 minutes on an H200. On CPU (--quick) shapes are small and Triton runs interpreted.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import itertools
import json
import math
import os
import platform
import random
import sys
import tempfile
import time
import traceback
from datetime import date
from pathlib import Path
from types import SimpleNamespace

T0 = time.perf_counter()
ROOT = Path(__file__).resolve().parents[1]
os.environ["HF_HUB_OFFLINE"] = "1"  # nothing here may touch the network
os.environ["TRANSFORMERS_OFFLINE"] = "1"
# gain_curate from this checkout (it is not installed there); then the root leaves sys.path
# again, or its kernels/ folder would pass for the Hugging Face kernel-hub package named
# `kernels`, which transformers probes for and imports (docs/design.md, "The kernel").
sys.path.insert(0, str(ROOT))
import gain_curate  # noqa: E402

sys.path.remove(str(ROOT))

# The kernel reads the same stored values as its reference and upcasts them, so every dtype
# differs only in fp32 summation order; atol grows with sqrt(segment length).
KERNEL_RTOL = {"float32": 1e-5, "bfloat16": 1e-5, "float16": 1e-5}
SCORE_TOL = {"float32": 1e-5, "bfloat16": 2e-2}  # |value - float64 value|, each of 3 values
WINDOW = 16  # the sliding window of the tiny mistral and gemma3: far shorter than the prefix
SPEED_BUDGET_S = 300  # a speed row starting later than this is skipped (8 minutes in all)
CHATML = (
    "{%- for m in messages %}"
    "{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{%- endif %}"
)
TINY = dict(
    vocab_size=512,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=4096,
    initializer_range=0.1,
    bos_token_id=0,
    eos_token_id=2,
    pad_token_id=0,
)
# The published shapes (config.json of Qwen2.5-0.5B-Instruct and Qwen2.5-7B-Instruct).
QWEN25 = {
    "Qwen2.5-0.5B": dict(
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        vocab_size=151936,
    ),
    "Qwen2.5-7B": dict(
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        vocab_size=152064,
    ),
}
WORDS = (
    "apples",
    "train",
    "leaves",
    "at",
    "noon",
    "how",
    "many",
    "the",
    "farmer",
    "sells",
    "each",
    "basket",
    "for",
    "dollars",
    "if",
    "she",
    "has",
    "twelve",
    "boxes",
    "of",
    "eggs",
    "what",
    "is",
    "total",
    "cost",
    "after",
    "a",
    "discount",
    "percent",
    "speed",
    "miles",
)


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:6.1f} s] {msg}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def quiet():
    """No load reports or progress bars from transformers (gain_curate's own silencer)."""
    from gain_curate.runtime.transformers_compat import quiet_transformers

    with quiet_transformers():
        yield


# ---------------------------------------------------------------- inputs built in code
def questions(n: int = 40) -> list[str]:
    """Math-like questions of very different lengths (1 .. ~250 words): one is a single
    token (unscored: q < 2), one has non-ASCII text and newlines."""
    rng = random.Random(0)
    out = ["7", "Compute 3 + 4.", "Ünïcödé: what is 漢字 × 2?\nAnswer in\n\ttwo lines."]
    while len(out) < n:
        words = [rng.choice(WORDS) for _ in range(int(2 + 250 * rng.random() ** 2))]
        out.append(" ".join(words).capitalize() + f" {rng.randint(2, 999)}?")
    return out


def build_tokenizer(corpus: list[str]):
    """A byte-level BPE (character offsets, any text) trained in memory, ChatML template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=500,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],  # ids 0, 1, 2
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(corpus, trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        model_max_length=4096,
    )
    tok.chat_template = CHATML
    return tok


def save_tiny_model(folder: Path, kind: str, tok) -> Path:
    """A random-init tiny model and the tokenizer, saved: qwen2 (plain causal), mistral
    (every layer windowed) or gemma3 (windowed and full-attention layers alternate)."""
    import torch
    import transformers as tf

    torch.manual_seed(0)
    if kind == "qwen2":
        model = tf.Qwen2ForCausalLM(tf.Qwen2Config(**TINY))
    elif kind == "mistral":
        model = tf.MistralForCausalLM(tf.MistralConfig(**TINY, head_dim=16, sliding_window=WINDOW))
    else:
        layers = ["sliding_attention", "full_attention"] * 2
        config = tf.Gemma3TextConfig(
            **{**TINY, "num_hidden_layers": len(layers)},
            head_dim=16,
            sliding_window=WINDOW,
            layer_types=layers,
        )
        model = tf.Gemma3ForCausalLM(config)
    with quiet():
        model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


# ---------------------------------------------------------------- 1. kernel
def compare_sums(name: str, dtype: str, got, want, lengths: list[int], d: int) -> dict:
    rtol = KERNEL_RTOL[dtype]
    atol = rtol * max(1, *lengths) ** 0.5
    err = (got - want).abs()
    empty_zero = all(bool((got[i] == 0).all()) for i, n in enumerate(lengths) if n == 0)
    ok = got.shape == want.shape and bool((err <= atol + rtol * want.abs()).all()) and empty_zero
    return {
        "kind": "kernel",
        "name": name,
        "dtype": dtype,
        "d": d,
        "rows": sum(lengths),
        "segments": len(lengths),
        "max_abs_err": float(err.max()) if err.numel() else 0.0,
        "rtol": rtol,
        "atol": atol,
        "pass": ok,
    }


def kernel_case(
    name: str, lengths: list[int], d: int, dtype, device, chunk_rows: int | None = None
) -> dict:
    """(sum lengths, d) rows with a shared offset (cosines far from 0) on the device,
    against the torch reference on CPU (index_add_ in row order there)."""
    import torch

    from gain_curate.kernels.naive import naive_segment_unit_sums
    from gain_curate.kernels.segment_sum import CHUNK_ROWS, segment_unit_sums_fwd

    g = torch.Generator().manual_seed(d + len(lengths))
    x = torch.randn(sum(lengths), d, generator=g) + 0.5 * torch.randn(1, d, generator=g)
    x = x.to(dtype)
    offsets = torch.tensor([0, *itertools.accumulate(lengths)], dtype=torch.int64)
    got = segment_unit_sums_fwd(x.to(device), offsets, chunk_rows=chunk_rows or CHUNK_ROWS).cpu()
    want = naive_segment_unit_sums(x, offsets)
    return compare_sums(name, str(dtype).removeprefix("torch."), got, want, lengths, d)


def kernel_checks(device, quick: bool) -> list[dict]:
    import torch

    out = []
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        for d in (1, 63, 896, 3584, 8192):
            lengths = [1, 2, 130, 1, 0, 17, 64, 65, 1] if d < 896 else [1, 5, 1, 70, 0, 3, 1]
            if quick and d >= 896:  # the interpreter walks wide rows slowly
                lengths = [1, 5, 0, 9, 1]
            out.append(kernel_case(f"odd shapes d={d}", lengths, d, dtype, device))
    many = [(i * 7) % 5 for i in range(60 if quick else 300)]  # many segments, some empty
    out.append(kernel_case("many short segments, chunk_rows=4", many, 63, torch.float32, device, 4))
    out.append(kernel_case("empty input (N = 0)", [0, 0, 0], 896, torch.float32, device))
    return out


def kernel_past_2_31(device) -> dict:
    """bf16 rows of d = 8192, N x d past 2^31 elements (offsets must be 64-bit): segments of
    4096 rows, the last ones wholly past element 2^31; the reference runs 8 segments at a
    time on the GPU."""
    import torch

    from gain_curate.kernels.naive import naive_segment_unit_sums
    from gain_curate.kernels.segment_sum import segment_unit_sums_fwd

    d, seg = 8192, 4096
    rows = 2**31 // d + seg + 77
    need = rows * d * 2 + 2 * 8 * seg * d * 4  # x, and one reference block's fp32 copies
    free = torch.cuda.mem_get_info(device)[0]
    if free < need + (8 << 30):
        why = f"needs {need / 2**30:.0f} GiB free, {free / 2**30:.0f} GiB are"
        return {
            "kind": "kernel",
            "name": "N x d > 2^31",
            "dtype": "bfloat16",
            "pass": True,
            "skipped": why,
        }
    torch.manual_seed(0)
    x = torch.randn(rows, d, device=device, dtype=torch.bfloat16)
    lengths = [min(seg, rows - a) for a in range(0, rows, seg)]
    offsets = torch.tensor([0, *itertools.accumulate(lengths)], dtype=torch.int64)
    got = segment_unit_sums_fwd(x, offsets).cpu()
    want = []
    for i in range(0, len(lengths), 8):
        block = offsets[i : i + 9]
        a, b = int(block[0]), int(block[-1])
        want.append(naive_segment_unit_sums(x[a:b], block - a).cpu())
    del x
    torch.cuda.empty_cache()
    rec = compare_sums("N x d > 2^31", "bfloat16", got, torch.cat(want), lengths, d)
    return {**rec, "elements": rows * d}


# ---------------------------------------------------------------- 2. and 3. score
def setup(work: Path, device: str, kernel: str) -> SimpleNamespace:
    """What every score check shares: the questions as a .jsonl input, the tokenizer."""
    from gain_curate.inputs.template import DEFAULT_SYSTEM_PROMPT, GAINRL_FEW_SHOT

    qs = questions()
    data = work / "questions.jsonl"
    lines = [json.dumps({"question": q, "answer": str(i)}) + "\n" for i, q in enumerate(qs)]
    data.write_text("".join(lines), encoding="utf-8")
    tok = build_tokenizer(qs + [DEFAULT_SYSTEM_PROMPT, *itertools.chain(*GAINRL_FEW_SHOT)] * 4)
    return SimpleNamespace(work=work, qs=qs, data=data, tok=tok, device=device, kernel=kernel)


def score(ctx: SimpleNamespace, model: Path, dtype: str, *flags: str) -> dict[int, dict]:
    """`gain-curate score` in this process (so the import checks cover it), with a small
    token budget and parts (several padded batches, several parts merged); the shards'
    rows keyed by input row."""
    from gain_curate.cli import main as cli

    out = ctx.work / f"run-{model.name}-{dtype}{''.join(flags)}"
    args = [
        "score",
        "--model",
        str(model),
        "--data",
        str(ctx.data),
        "--out",
        str(out),
        "--device",
        ctx.device,
        "--dtype",
        dtype,
        "--kernel",
        ctx.kernel,
        "--token-budget",
        "1024",
        "--part-rows",
        "16",
        "--json",
        "--overwrite",
        *flags,
    ]
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            cli.main(args=args, prog_name="gain-curate", standalone_mode=False)
    except Exception:
        for log_file in out.glob(".gain-curate/*.log"):  # the CLI's traceback, before tmp goes
            print(log_file.read_text(encoding="utf-8", errors="replace"), file=sys.stderr)
        raise
    import pyarrow.parquet as pq

    cols = [
        "extra_info",
        "gain_score",
        "gain_c_intra",
        "gain_c_inter",
        "gain_tokens_prefix",
        "gain_tokens_question",
    ]
    shards = sorted((out / "data").glob("*.parquet"))
    rows = itertools.chain.from_iterable(pq.read_table(f, columns=cols).to_pylist() for f in shards)
    return {r["extra_info"]["index"]: r for r in rows}


def reference_scores(
    folder: Path, qs: list[str], layers: list[int], window: int | None = None
) -> dict[int, list]:
    """Float64 on CPU with HF's eager attention (which applies the config's windows), every
    conversation whole, cosines averaged densely (the paper's definition). Per layer, one
    (score, c_intra, c_inter, p, q) per question, score None where q < 2 or p = 0.
    `window` replaces the config's sliding window (to measure what the window changes)."""
    import torch
    from transformers import AutoConfig, AutoModel

    from gain_curate.inputs.conversation import segment_batch
    from gain_curate.inputs.template import ScoringTemplate
    from gain_curate.runtime.models import load_tokenizer, resolve_model

    config = AutoConfig.from_pretrained(folder)
    if window is not None:
        config.sliding_window = window
    with quiet():
        model = AutoModel.from_pretrained(
            folder, config=config, dtype=torch.float64, attn_implementation="eager"
        ).eval()
    grabbed: dict[int, torch.Tensor] = {}
    for i in layers:  # the MLP input = the post-attention norm's output, (n, d)
        hook = lambda m, a, i=i: grabbed.__setitem__(i, a[0][0])  # noqa: E731
        model.layers[i].mlp.register_forward_pre_hook(hook)
    out: dict[int, list] = {i: [] for i in layers}
    tok = load_tokenizer(resolve_model(str(folder)))  # as `score` loads it
    for s in segment_batch(tok, ScoringTemplate(), qs):
        p, q = s.p, s.q
        with torch.no_grad():
            model(input_ids=torch.tensor([s.input_ids]))
        for i in layers:
            u = grabbed[i] / grabbed[i].norm(dim=-1, keepdim=True)
            cos = u @ u.T  # (n, n)
            if q < 2 or p == 0:
                out[i].append((None, None, None, p, q))
                continue
            intra = cos[p:, p:][~torch.eye(q, dtype=torch.bool)].mean().item()
            inter = cos[p:, :p].mean().item()
            out[i].append((intra + inter, intra, inter, p, q))
    return out


def compare_scores(
    kind: str, name: str, got: dict[int, dict], want: list, dtype: str, **extra
) -> dict:
    """Every row: the same P and Q token counts, scored iff the reference is, and score,
    C_intra and C_inter each within the dtype's tolerance of the float64 value."""
    err, problems = 0.0, []
    for i, (value, intra, inter, p, q) in enumerate(want):
        r = got.get(i)
        if r is None or (r["gain_tokens_prefix"], r["gain_tokens_question"]) != (p, q):
            problems.append(f"row {i}: segments differ from the reference")
        elif (r["gain_score"] is None) != (value is None):
            problems.append(f"row {i}: score {r['gain_score']}, reference {value}")
        elif value is not None:
            pairs = (
                (r["gain_score"], value),
                (r["gain_c_intra"], intra),
                (r["gain_c_inter"], inter),
            )
            diffs = [
                abs(a - b) if a is not None and math.isfinite(a) else math.inf for a, b in pairs
            ]
            err = max(err, *diffs)
    tol = SCORE_TOL[dtype]
    if err > tol:
        problems.append(f"max abs error {err:.1e} > {tol:g}")
    return {
        "kind": kind,
        "name": name,
        "dtype": dtype,
        "rows": len(want),
        "scored": sum(w[0] is not None for w in want),
        "max_abs_err": err,
        "tol": tol,
        "problems": problems[:5],
        "pass": not problems,
        **extra,
    }


def score_checks(ctx: SimpleNamespace) -> list[dict]:
    """A plain causal qwen2, the default template (shared prefix): fp32 and bf16 at the last
    layer, fp32 at layer 1 (a truncated model), against one float64 reference."""
    model = save_tiny_model(ctx.work / "tiny-qwen2", "qwen2", ctx.tok)
    last = TINY["num_hidden_layers"] - 1
    ref = reference_scores(model, ctx.qs, [1, last])
    runs = [
        ("last layer", "float32", (), last),
        ("last layer", "bfloat16", (), last),
        ("--layer 1", "float32", ("--layer", "1"), 1),
    ]
    return [
        compare_scores(
            "score",
            f"score vs float64: tiny qwen2, {where}, --kernel {ctx.kernel}",
            score(ctx, model, dtype, *flags),
            ref[layer],
            dtype,
        )
        for where, dtype, flags, layer in runs
    ]


def sliding_window_checks(ctx: SimpleNamespace) -> list[dict]:
    """A 16-token window under a shared prefix many windows long, fp32, shared prefix and
    --no-prefix-sharing, against the float64 reference. `window_effect` (how far a
    reference without the window lies) shows that a leaking window would be seen."""
    checks = []
    for kind, what in (("mistral", "every layer windowed"), ("gemma3", "windowed/full layers")):
        model = save_tiny_model(ctx.work / f"tiny-{kind}-window{WINDOW}", kind, ctx.tok)
        last = (4 if kind == "gemma3" else TINY["num_hidden_layers"]) - 1
        ref = reference_scores(model, ctx.qs, [last])[last]
        wide = reference_scores(model, ctx.qs, [last], window=1 << 20)[last]
        effect = max(abs(a[0] - b[0]) for a, b in zip(ref, wide) if a[0] is not None)
        for how, flags in (
            ("shared prefix", ()),
            ("--no-prefix-sharing", ("--no-prefix-sharing",)),
        ):
            name = f"window {WINDOW} vs float64: tiny {kind} ({what}), {how}"
            checks.append(
                compare_scores(
                    "sliding_window",
                    name,
                    score(ctx, model, "float32", *flags),
                    ref,
                    "float32",
                    prefix_tokens=ref[1][3],
                    window=WINDOW,
                    window_effect=effect,
                )
            )
    return checks


# ---------------------------------------------------------------- 4. speed
def random_prefill_model(config, device, dtype):
    """The library's truncated prefill model built on the device, random-init, no disk:
    the LoadedModel and the MLP pre-hook that stops the forward, as truncated.load_model
    makes them (layer = the last)."""
    import torch
    from transformers import AutoModel

    from gain_curate.runtime import truncated
    from gain_curate.runtime.transformers_compat import decoder_layers

    with torch.device(device):
        model = AutoModel.from_config(config, dtype=dtype).eval().requires_grad_(False)
    layer, captured = config.num_hidden_layers - 1, []

    def hook(_module, args):
        captured.append(args[0])
        raise truncated._StopForward

    decoder_layers(model)[layer].mlp.register_forward_pre_hook(hook)
    return truncated.LoadedModel(
        model,
        layer,
        config.num_hidden_layers,
        config.hidden_size,
        torch.device(device),
        dtype,
        captured,
    )


def flops_per_token(lm) -> float:
    """2 x the parameters the truncated prefill multiplies per token: every layer up to the
    hooked one, less its MLP (attention-score FLOPs left out, as in benchmark_score.py)."""
    from gain_curate.runtime.transformers_compat import decoder_layers

    layers = decoder_layers(lm.model)[: lm.layer + 1]
    n = sum(p.numel() for p in layers.parameters())
    return 2.0 * (n - sum(p.numel() for p in layers[-1].mlp.parameters()))


def kernel_bandwidth(d: int, device) -> dict:
    """The segment-sum kernels alone (plan built once) on ~65k bf16 rows in question-like
    segments of 20..200 rows: bytes of x read once + the sums written, over HBM peak."""
    import torch
    import triton.testing

    from gain_curate.kernels.segment_sum import plan_segments, segment_unit_sums_launch
    from gain_curate.runtime.hardware import gpu_peaks

    rng = random.Random(d)
    lengths = [rng.randint(20, 200) for _ in range(600)]
    x = torch.randn(sum(lengths), d, device=device, dtype=torch.bfloat16)
    plan = plan_segments(torch.tensor([0, *itertools.accumulate(lengths)]), x.device)
    ms = triton.testing.do_bench(lambda: segment_unit_sums_launch(x, plan))
    nbytes = x.numel() * x.element_size() + len(lengths) * d * 4
    peak = (gpu_peaks(torch.cuda.get_device_name(device)) or (None, None))[1]
    return {
        "kernel_rows": x.shape[0],
        "kernel_us": ms * 1e3,
        "kernel_GBps": nbytes / ms / 1e6,
        "kernel_hbm_fraction": nbytes / (ms * 1e-3) / peak if peak else None,
    }


def speed_row(name: str, shape: dict, device, prompts: int, prefix: int = 150) -> dict:
    """Random token ids: a shared prefix, then GSM8K-like questions of 20..200 tokens, at
    score's default token budget; one warm-up pass (CUDA context, cuBLAS, Triton compile)."""
    import torch
    from transformers import Qwen2Config

    from gain_curate.inputs.conversation import Segments
    from gain_curate.runtime.hardware import gpu_peaks
    from gain_curate.scoring.prefill import PrefillStats, segment_sums

    cuda = device.type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    config = Qwen2Config(**{"max_position_embeddings": 4096, "rms_norm_eps": 1e-6, **shape})
    torch.manual_seed(0)
    lm = random_prefill_model(config, device, dtype)
    rng = random.Random(1)
    head = [rng.randrange(config.vocab_size) for _ in range(prefix)]
    segs = []
    for _ in range(prompts):
        q = [rng.randrange(config.vocab_size) for _ in range(rng.randint(20, 200))]
        segs.append(Segments(input_ids=head + q, p=prefix, total_tokens=prefix + len(q) + 5))
    kernel, budget = ("triton", 32768) if cuda else ("torch", 2048)
    for _ in segment_sums(lm, segs[:16], token_budget=budget, kernel=kernel):
        pass
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    stats, t0 = PrefillStats(), time.perf_counter()
    for _ in segment_sums(lm, segs, token_budget=budget, kernel=kernel, stats=stats):
        pass
    wall = time.perf_counter() - t0
    tokens, flops = sum(len(s.input_ids) for s in segs), flops_per_token(lm)
    row = {
        "kind": "speed",
        "name": f"{name} (random init)",
        "dtype": str(dtype).removeprefix("torch."),
        "prompts": prompts,
        "prefix_tokens": prefix,
        "tokens": tokens,
        "tokens_run": stats.tokens_run,
        "token_budget": budget,
        "prefill_s": stats.seconds,
        "wall_s": wall,
        "tokens_per_s": tokens / stats.seconds,
        "tokens_run_per_s": stats.tokens_run / stats.seconds,
        "flops_per_token": flops,
        "mfu": None,
        "peak_memory_GiB": None,
        "pass": True,
    }
    del lm
    gc.collect()
    if cuda:
        row["peak_memory_GiB"] = torch.cuda.max_memory_allocated(device) / 2**30
        torch.cuda.empty_cache()
        peaks = gpu_peaks(torch.cuda.get_device_name(device))
        row["mfu"] = flops * stats.tokens_run / stats.seconds / peaks[0] if peaks else None
        row.update(kernel_bandwidth(config.hidden_size, device))
    return row


# ---------------------------------------------------------------- report
def machine_label(device) -> str:
    """The GPU (model, compute capability, memory) or the CPU (model, threads, matrix units)."""
    import torch

    from gain_curate.runtime.hardware import device_label

    if device.type != "cuda":
        return device_label(device)
    p = torch.cuda.get_device_properties(device)
    return f"{p.name} (sm_{p.major}{p.minor}, {p.total_memory / 2**30:.0f} GiB, bf16 tensor cores)"


def markdown(report: dict) -> str:
    """Rows for benchmarks/RESULTS.md: exactness (the kernel's shapes folded into one row per
    dtype), then speed."""
    head = f"| {report['date']} | {report['device']} |"
    lines = [
        f"### {report['date']} `python3 benchmarks/gpu_check.py {report['argv']}`",
        "",
        "| date | device | check | dtype | cases | max abs error | tolerance | result |",
        "|---" * 8 + "|",
    ]
    groups: dict[tuple[str, str], list[dict]] = {}
    for c in report["checks"]:
        name = c["name"]
        if c["kind"] == "kernel":
            what = "N x d > 2^31" if "2^31" in name else "d = 1..8192, length-1/empty segments"
            name = f"kernel vs torch reference ({what})"
        if c["kind"] != "speed":
            groups.setdefault((name, c.get("dtype", "-")), []).append(c)
    for (name, dtype), recs in groups.items():
        cases = (
            f"{len(recs)} shape{'s' * (len(recs) > 1)}"
            if recs[0]["kind"] == "kernel"
            else f"{recs[0].get('scored', '-')} prompts"
        )
        err = max(r.get("max_abs_err", 0.0) for r in recs)
        tol = f"{recs[0]['tol']:g}" if "tol" in recs[0] else f"rtol {KERNEL_RTOL.get(dtype, 0):g}"
        bad = [r.get("error") or "; ".join(r.get("problems") or []) for r in recs if not r["pass"]]
        result = f"skipped: {recs[0]['skipped']}" if "skipped" in recs[0] else "pass"
        result = f"**FAIL** {bad[0]}" if bad else result
        lines.append(f"{head} {name} | {dtype} | {cases} | {err:.1e} | {tol} | {result} |")
    lines += [
        "",
        "| date | device | model | dtype | prompts | tokens | tokens run | prefill s "
        "| tokens/s | tokens run/s | MFU | kernel HBM | peak memory |",
        "|---" * 13 + "|",
    ]
    cpu = "not measured (CPU)"
    for r in (c for c in report["checks"] if c["kind"] == "speed"):
        if "skipped" in r or not r["pass"]:
            why = f"skipped: {r['skipped']}" if "skipped" in r else f"**FAIL** {r['error']}"
            lines.append(f"{head} {r['name']} |" + " - |" * 9 + f" {why} |")
            continue
        on_gpu = "kernel_us" in r
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "unknown peak" if on_gpu else cpu
        frac = r.get("kernel_hbm_fraction")
        hbm = f"{frac:.0%}" if frac is not None else "unknown peak" if on_gpu else cpu
        hbm += f" ({r['kernel_GBps']:,.0f} GB/s)" if on_gpu else ""
        mem = "-" if r["peak_memory_GiB"] is None else f"{r['peak_memory_GiB']:.1f} GiB"
        lines.append(
            f"{head} {r['name']} | {r['dtype']} | {r['prompts']} | {r['tokens']:,} "
            f"| {r['tokens_run']:,} | {r['prefill_s']:.2f} | {r['tokens_per_s']:,.0f} "
            f"| {r['tokens_run_per_s']:,.0f} | {mfu} | {hbm} | {mem} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu")
    ap.add_argument("--quick", action="store_true", help="small shapes, one small speed row")
    ap.add_argument("--skip-speed", action="store_true", help="exactness checks only")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "gpu-check")
    args = ap.parse_args()
    if not args.device.startswith("cuda"):  # before triton is imported: it decides then
        os.environ["TRITON_INTERPRET"] = "1"
    import torch
    import transformers
    import triton

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_check: torch sees no CUDA device; try --device cpu --quick", file=sys.stderr)
        return 2
    cuda = device.type == "cuda"
    if not cuda:  # tiny shapes gain nothing from threads, and on a busy CPU OpenMP's waiting
        torch.set_num_threads(1)  # made each tiny matmul ~100x slower (0.05 -> 7 ms measured)
    checks: list[dict] = []
    seconds: dict[str, float] = {}

    def step(name: str, kind: str, fn, *fn_args) -> None:
        """One check; an exception fails it (one line in the report, the traceback on
        stderr) and the others still run."""
        log(f"{name} ...")
        t0 = time.perf_counter()
        try:
            out = fn(*fn_args)
            recs = out if isinstance(out, list) else [out]
        except Exception as e:
            traceback.print_exc()
            line = str(e).strip().splitlines()[0] if str(e).strip() else ""
            recs = [
                {"kind": kind, "name": name, "pass": False, "error": f"{type(e).__name__}: {line}"}
            ]
        checks.extend(recs)
        seconds[name] = round(time.perf_counter() - t0, 1)
        log(f"{name}: {'pass' if all(r['pass'] for r in recs) else 'FAIL'} ({seconds[name]} s)")

    with tempfile.TemporaryDirectory(prefix="gain-gpu-check-") as tmp:
        os.environ["GAIN_CURATE_CACHE"] = str(Path(tmp) / "cache")  # throwaway folder hashes
        step("kernel", "kernel", kernel_checks, device, args.quick)
        if cuda and not args.quick:
            step("kernel N x d > 2^31", "kernel", kernel_past_2_31, device)
        # --kernel triton, not auto: a Triton that cannot run on the GPU fails here instead of
        # falling back to torch; on CPU it runs interpreted (the GPU's path, ~2 s a run).
        ctx = setup(Path(tmp), str(device), "triton")
        step("score", "score", score_checks, ctx)
        step("sliding window", "sliding_window", sliding_window_checks, ctx)
    rows = {} if args.skip_speed else {"tiny": (TINY, 48)}
    if cuda and not args.skip_speed:
        rows = {"Qwen2.5-0.5B": (QWEN25["Qwen2.5-0.5B"], 256 if args.quick else 4096)}
        if not args.quick:
            rows["Qwen2.5-7B"] = (QWEN25["Qwen2.5-7B"], 2048)
    for name, (shape, n) in rows.items():
        if time.perf_counter() - T0 > SPEED_BUDGET_S:
            late = f"started after {SPEED_BUDGET_S} s"
            checks.append(
                {"kind": "speed", "name": f"{name} (random init)", "pass": True, "skipped": late}
            )
            continue
        step(f"{name} (random init)", "speed", speed_row, name, shape, device, n)
    report = {
        "date": date.today().isoformat(),
        "device": machine_label(device),
        "argv": " ".join(sys.argv[1:]),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "triton": triton.__version__,
            "transformers": transformers.__version__,
            "gain_curate": gain_curate.__version__,
        },
        "gain_curate_path": str(Path(gain_curate.__file__).resolve().parent),
        "tolerances": {"kernel_rtol": KERNEL_RTOL, "score_abs": SCORE_TOL},
        "pass": all(c["pass"] for c in checks),
        "wall_s": round(time.perf_counter() - T0, 1),
        "seconds": seconds,
        "checks": checks,
        "imported_modules": sorted({m.split(".")[0] for m in sys.modules}),
        # Hugging Face's kernel-hub package when Transformers imported it (5.25 and newer do);
        # never this repository's kernels/ folder, which is gain_curate.kernels only
        "kernels_module": getattr(sys.modules.get("kernels"), "__file__", None),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    text = markdown(report)
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (args.out / "gpu_check.md").write_text(text, encoding="utf-8")
    print(text)
    failed = [c["name"] for c in checks if not c["pass"]]
    verdict = f"FAILED: {', '.join(failed)}" if failed else "all checks pass"
    print(f"gpu_check: {verdict} ({report['wall_s']} s); {args.out / 'gpu_check.json'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
