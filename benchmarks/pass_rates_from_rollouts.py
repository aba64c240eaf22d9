"""Pass rates of a `validate --rollouts` folder's finished batches, as a `--pass-rates` file.

`validate --rollouts K` saves each generated batch (token ids of K completions per prompt)
under OUT/rollouts/ before it rewards them; this grades the batches that are there with the
default reward (gain_curate.checks.rewards.math_reward, the one validate uses) and writes
one JSON line per prompt: question, pass_rate, k. That file calibrates any scored run of
the same prompts: `gain-curate validate --run RUN --pass-rates FILE --pass-rate-k-key k`.

    python benchmarks/pass_rates_from_rollouts.py runs/validate --model qwen2.5-coder-0.5b \
        --out runs/validate/pass_rates.jsonl
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path, help="validate's --out (holds sample.jsonl, rollouts/)")
    ap.add_argument("--model", required=True, help="the model validate generated with")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    from gain_curate.checks.rewards import math_reward
    from gain_curate.inputs.answers import gsm8k_numbers
    from gain_curate.runtime.models import resolve_model

    rows = [json.loads(x) for x in (args.folder / "sample.jsonl").read_text().splitlines()]
    answers = gsm8k_numbers([r["answer"] for r in rows]) or [r["answer"] for r in rows]
    from gain_curate.runtime.models import load_tokenizer

    tok = load_tokenizer(resolve_model(args.model))
    lines = []
    for batch in sorted((args.folder / "rollouts").glob("batch-*.json")):
        saved = json.loads(batch.read_text())
        k = len(saved["completions"]) // len(saved["rows"])
        for j, i in enumerate(saved["rows"]):
            texts = tok.batch_decode(
                saved["completions"][j * k : (j + 1) * k], skip_special_tokens=True
            )
            rewards = [math_reward(t, answers[i]) for t in texts]
            lines.append({"question": rows[i]["question"], "pass_rate": sum(rewards) / k, "k": k})
    args.out.write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")
    mean = sum(x["pass_rate"] for x in lines) / max(1, len(lines))
    print(f"{len(lines)} prompts graded, mean pass rate {mean:.3f}: {args.out}")


if __name__ == "__main__":
    main()
