"""Write the mixed-difficulty arithmetic set that the README's RL-side table was measured
on: reasoning-gym's `basic_arithmetic` generator at six difficulty levels (terms x digits),
the same number of problems at each, seeded. Integer answers, checked by math-verify.

    pip install reasoning-gym==0.1.25
    python benchmarks/rollout_set.py --out runs/arith.jsonl
    gain-curate validate --model smollm2 --data runs/arith.jsonl --sample 64 --rollouts 8 \
        --max-new-tokens 128 --out runs/validate-arith
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

# (terms, digits) from easy to hard; `level` is the position in this list (1 = easiest)
LEVELS = [(2, 1), (3, 1), (2, 2), (4, 1), (3, 2), (4, 2)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--per-level", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    import reasoning_gym

    rows = []
    for level, (terms, digits) in enumerate(LEVELS, 1):
        ds = reasoning_gym.create_dataset(
            "basic_arithmetic",
            size=args.per_level,
            seed=args.seed + level,
            min_terms=terms,
            max_terms=terms,
            min_digits=digits,
            max_digits=digits,
        )
        rows += [{"question": e["question"], "answer": e["answer"], "level": level} for e in ds]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"{len(rows)} problems at {len(LEVELS)} levels: {args.out}")


if __name__ == "__main__":
    main()
