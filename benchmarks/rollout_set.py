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


def write_set(out: Path, per_level: int, seed: int = 0) -> int:
    """`per_level` problems at each level (level i drawn with seed + i) -> `out` as JSONL."""
    import reasoning_gym

    rows = []
    for level, (terms, digits) in enumerate(LEVELS, 1):
        ds = reasoning_gym.create_dataset(
            "basic_arithmetic",
            size=per_level,
            seed=seed + level,
            min_terms=terms,
            max_terms=terms,
            min_digits=digits,
            max_digits=digits,
        )
        rows += [{"question": e["question"], "answer": e["answer"], "level": level} for e in ds]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return len(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--per-level", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    n = write_set(args.out, args.per_level, args.seed)
    print(f"{n} problems at {len(LEVELS)} levels: {args.out}")


if __name__ == "__main__":
    main()
