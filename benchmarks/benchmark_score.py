"""Time three ways of scoring the same prompts with the same model on the same device.

    (a) reference: the published way, re-done from its description: one prompt at a time,
        the full causal LM with logits, a hook on the last MLP input, a dense n x n cosine
        matrix per prompt (with the correct slicing, so the scores are comparable);
    (b) hf-batched: a plain batched HF forward (length-sorted, padded, output_hidden_states
        =True, logits computed) with the same hook and dense cosines per prompt;
    (c) gain-curate: `score` end to end (truncated prefill, shared prefix, batching,
        segment sums), writing its shards.

Run with `make bench` (or `python benchmarks/benchmark_score.py --help`). Prints a table
and appends it to benchmarks/RESULTS.md. Ratios compare methods within one run; absolute
times mean something only on a GPU, with the device named.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
SHARED = ROOT.parent / "shared" / "data"

from gain_curate.executor.launch import run_score  # noqa: E402
from gain_curate.executor.score import ScoreConfig  # noqa: E402
from gain_curate.inputs.conversation import render  # noqa: E402
from gain_curate.inputs.template import ScoringTemplate  # noqa: E402
from gain_curate.runtime.models import load_tokenizer, resolve_model  # noqa: E402
from gain_curate.scoring.angles import naive_angle_concentration  # noqa: E402
from gain_curate.stats import spearman  # noqa: E402

TEMPLATES = {
    "default": ScoringTemplate(),
    "oneline": ScoringTemplate(
        system_prompt="You are a careful math tutor.", few_shot=(), few_shot_name="none"
    ),
}


@dataclass
class Timing:
    method: str
    seconds: float
    scores: np.ndarray  # C_intra + C_inter per prompt, input order
    tokens_run: int
    forward_seconds: float = 0.0  # (c): the prefill's own device time


def load_questions(n: int) -> list[str]:
    path = SHARED / "gsm8k" / "train.jsonl"
    if not path.is_file():
        sys.exit(
            f"benchmark data not found: {path} (the shared data folder must sit beside the repo)"
        )
    return [json.loads(line)["question"] for line in path.read_text().splitlines()[:n]]


def _dense_scores(h: torch.Tensor, p: int, q_end: int) -> float:
    intra, inter = naive_angle_concentration(h[p:q_end], h[:p])
    return intra + inter


def _segments(tok, template: ScoringTemplate, question: str) -> tuple[list[int], int, int]:
    """Token ids of the whole rendered conversation, first and one-past-last Q token."""
    text, start, end = render(tok, template, question)
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    q = [i for i, (s, e) in enumerate(enc["offset_mapping"]) if e > s and s < end and e > start]
    return enc["input_ids"], q[0], q[-1] + 1


def _causal_lm(ref, dtype: torch.dtype, device: torch.device):
    from transformers import AutoModelForCausalLM

    from gain_curate.runtime.transformers_compat import from_pretrained_kwargs, quiet_transformers

    with quiet_transformers():
        model = AutoModelForCausalLM.from_pretrained(
            ref.path, **from_pretrained_kwargs(dtype, ref.revision)
        )
    return model.to(device).eval()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


@torch.inference_mode()
def run_reference(ref, questions, template, dtype, device) -> Timing:
    t0 = time.perf_counter()
    tok = load_tokenizer(ref)
    model = _causal_lm(ref, dtype, device)
    grabbed: list[torch.Tensor] = []
    model.model.layers[-1].mlp.register_forward_pre_hook(lambda m, a: grabbed.append(a[0]))
    out, tokens = [], 0
    for question in questions:
        ids, p, q_end = _segments(tok, template, question)
        grabbed.clear()
        model(input_ids=torch.tensor([ids], device=device))  # logits and all
        out.append(_dense_scores(grabbed[0][0].float(), p, q_end))
        tokens += len(ids)
    _sync(device)
    return Timing("(a) reference", time.perf_counter() - t0, np.array(out), tokens)


@torch.inference_mode()
def run_hf_batched(ref, questions, template, dtype, device, budget: int) -> Timing:
    from gain_curate.scoring.batching import length_sorted_batches
    from gain_curate.scoring.forward import right_pad

    t0 = time.perf_counter()
    tok = load_tokenizer(ref)
    model = _causal_lm(ref, dtype, device)
    grabbed: list[torch.Tensor] = []
    model.model.layers[-1].mlp.register_forward_pre_hook(lambda m, a: grabbed.append(a[0]))
    segs = [_segments(tok, template, q) for q in questions]
    out = np.zeros(len(questions))
    tokens = 0
    for batch in length_sorted_batches([len(s[0]) for s in segs], budget):
        ids, mask = right_pad([segs[i][0] for i in batch], tok.pad_token_id or 0)
        grabbed.clear()
        model(input_ids=ids.to(device), attention_mask=mask.to(device), output_hidden_states=True)
        for r, i in enumerate(batch):
            out[i] = _dense_scores(grabbed[0][r].float(), segs[i][1], segs[i][2])
        tokens += int(mask.sum())
    _sync(device)
    return Timing("(b) hf-batched", time.perf_counter() - t0, out, tokens)


def run_gain_curate(
    model: str, questions, template, dtype_name: str, device, budget: int | None
) -> Timing:
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "q.jsonl"
        data.write_text("".join(json.dumps({"question": q}) + "\n" for q in questions))
        t0 = time.perf_counter()
        res = run_score(
            ScoreConfig(
                data=str(data),
                model=model,
                out=Path(tmp) / "out",
                template=template,
                dtype=dtype_name,
                device=str(device),
                token_budget=budget,
            )
        )
        _sync(device)
        seconds = time.perf_counter() - t0
        import pyarrow.parquet as pq

        rows = pq.read_table(Path(tmp) / "out" / res.manifest["shards"][0]["path"]).to_pylist()
    scores = np.zeros(len(questions))
    for r in rows:
        scores[r["extra_info"]["index"]] = r["gain_c_intra"] + r["gain_c_inter"]
    pre = res.manifest["prefill"]
    return Timing(
        "(c) gain-curate", seconds, scores, pre["tokens_run"], pre.get("forward_seconds", 0.0)
    )


def prefill_flops_per_token(model_path: str) -> float:
    """2 x the parameters the truncated prefill multiplies per token: every decoder layer
    up to the last, less the last layer's MLP (attention-score FLOPs left out)."""
    from transformers import AutoConfig, AutoModel

    from gain_curate.runtime.transformers_compat import decoder_layers

    with torch.device("meta"):
        model = AutoModel.from_config(AutoConfig.from_pretrained(model_path))
    layers = decoder_layers(model)
    n = sum(p.numel() for p in layers.parameters()) - sum(
        p.numel() for p in layers[-1].mlp.parameters()
    )
    return 2.0 * n


def mfu(t: Timing, device: torch.device, model_path: str) -> str:
    """FLOPs of the truncated prefill over its own device time (forward + reduction, CUDA
    events; not model loading, tokenization or Parquet) and the GPU's exact bf16 peak."""
    from gain_curate.runtime.hardware import gpu_peaks

    if device.type != "cuda" or not t.method.startswith("(c)"):
        return "not measured (CPU)" if device.type != "cuda" else "-"
    peaks = gpu_peaks(torch.cuda.get_device_name(device))
    if peaks is None or not t.forward_seconds:
        return "unknown peak" if peaks is None else "-"
    return (
        f"{prefill_flops_per_token(model_path) * t.tokens_run / t.forward_seconds / peaks[0]:.0%}"
    )


def device_name(device: torch.device) -> str:
    """The CPU model and its matrix units, or the GPU model: every row names its machine."""
    from gain_curate.runtime.hardware import device_label

    return device_label(device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--prompts", type=int, default=500)
    ap.add_argument("--templates", default="default,oneline")
    ap.add_argument("--methods", default="a,b,c")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--budget", type=int, default=None, help="token budget for (b) and (c)")
    ap.add_argument("--no-append", action="store_true", help="print only; do not touch RESULTS.md")
    args = ap.parse_args()

    device = torch.device(
        args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    )
    from gain_curate.runtime.models import resolve_dtype

    dtype = resolve_dtype(args.dtype, device)
    dtype_name = str(dtype).removeprefix("torch.")
    ref = resolve_model(args.model)
    questions = load_questions(args.prompts)
    budget = args.budget or (32768 if device.type == "cuda" else 2048)
    tok = load_tokenizer(ref)
    rows = []
    for name in args.templates.split(","):
        template = TEMPLATES[name]
        total_tokens = sum(len(_segments(tok, template, q)[0]) for q in questions)
        timings = []
        if "a" in args.methods:
            timings.append(run_reference(ref, questions, template, dtype, device))
        if "b" in args.methods:
            timings.append(run_hf_batched(ref, questions, template, dtype, device, budget))
        if "c" in args.methods:
            timings.append(
                run_gain_curate(ref.path, questions, template, dtype_name, device, budget)
            )
        base = timings[0]
        for t in timings:
            agree = spearman(t.scores, base.scores)
            rows.append(
                {
                    "date": date.today().isoformat(),
                    "device": device_name(device),
                    "model": ref.name,
                    "dtype": dtype_name,
                    "template": name,
                    "method": t.method,
                    "prompts": len(questions),
                    "tokens": total_tokens,
                    "tokens run": t.tokens_run,
                    "wall s": f"{t.seconds:.1f}",
                    "prompts/s": f"{len(questions) / t.seconds:.1f}",
                    "tokens/s": f"{total_tokens / t.seconds:,.0f}",
                    f"x vs {base.method.split()[0]}": f"{base.seconds / t.seconds:.2f}",
                    "rank agreement": "-" if t is base else f"{agree:.4f}",
                    "MFU": mfu(t, device, ref.path),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    table = _markdown(rows)
    print(table)
    if not args.no_append:
        with RESULTS.open("a", encoding="utf-8") as f:
            f.write(
                f"\n### {date.today().isoformat()} "
                f"`{' '.join(sys.argv[1:]) or '(defaults)'}`\n\n{table}\n"
            )
        print(f"appended to {RESULTS}")


def _markdown(rows: list[dict]) -> str:
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(r.get(k, "")) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
