"""Per-step cost of the GAIN-RL schedule at scale, before and after planning once per epoch.

    python benchmarks/benchmark_schedule.py [--n 1000000 --batch-size 1024 --steps 20]

One step is what a trainer adapter does per training step: plan the epoch, hand out its B
draws one at a time (verl's dataset asks for one row per `__getitem__`), observe B results
by gain_uid, end the epoch. "after" is `GainSchedule` (the epoch's order planned once and
cached, O(1) per draw); "before" is `naive_step`, the previous code path (every draw re-ran
the epoch's plan: p(r) over N, then numpy's `choice(p=...)`), timed on `--naive-draws` draws
of one step and scaled to B (its plan dominates and costs the same at every draw). Both in
one run, on one core (numpy here is single-threaded). Prints one row; appends nothing.
Target: < 50 ms per step at N = 1,000,000, B = 1,024.
"""

from __future__ import annotations

import argparse
import statistics
import time
from datetime import date

import numpy as np

from gain_curate.curriculum.schedule import GainSchedule, ScheduleParams
from gain_curate.runtime.hardware import cpu_label


def naive_plan(s: GainSchedule) -> np.ndarray:
    """The previous `plan_epoch`: p(r) over all N (tails floored), numpy's choice(p=...)."""
    r = np.arange(s.n_prompts, dtype=np.float64)
    logits = -((r - s.mu) ** 2) / (2.0 * s.sigma**2)
    w = np.exp(logits - logits.max())
    if np.count_nonzero(w) < s.params.batch_size:
        w = np.maximum(w, np.finfo(np.float64).tiny)
    rng = np.random.default_rng([s.params.seed, s.epoch])
    return rng.choice(s.n_prompts, size=s.params.batch_size, replace=False, p=w / w.sum())


def naive_draws(s: GainSchedule, k: int) -> float:
    """Seconds for k single draws the previous way (`take(1)` re-planned the epoch)."""
    t0 = time.perf_counter()
    for i in range(k):
        naive_plan(s)[i : i + 1]
    return time.perf_counter() - t0


def step(s: GainSchedule, uids: list[str], acc: float) -> float:
    """Seconds for one step: plan, B draws one by one, observe, end the epoch."""
    b = s.params.batch_size
    t0 = time.perf_counter()
    drawn = [int(s.take(1)[0]) for _ in range(b)]
    s.observe([uids[r] for r in drawn], [acc] * b)
    s.end_epoch()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=20, help="steps timed for 'after'")
    ap.add_argument("--naive-draws", type=int, default=16, help="draws timed for 'before'")
    args = ap.parse_args()
    n, b = args.n, args.batch_size
    uids = [f"u{i}" for i in range(n)]
    s = GainSchedule(n, ScheduleParams(batch_size=b), uids=uids)  # paper defaults, sigma 1000

    per_draw = naive_draws(s, args.naive_draws) / args.naive_draws
    t0 = time.perf_counter()
    s.observe(uids[:b], [0.8] * b)
    s.end_epoch()
    before = per_draw * b + (time.perf_counter() - t0)

    s = GainSchedule(n, ScheduleParams(batch_size=b), uids=uids)
    times = [step(s, uids, 0.8) for _ in range(args.steps)]  # acc 0.8: mu walks +268 a step
    after = statistics.median(times)
    row = (
        f"| {date.today().isoformat()} | {cpu_label(1)} | schedule step, N = {n:,}, B = {b:,} "
        f"| before {before * 1e3:,.0f} ms (per-draw re-plan, {per_draw * 1e3:.1f} ms x {b:,}; "
        f"{args.naive_draws} draws timed) | after {after * 1e3:.1f} ms (median of {args.steps} "
        f"steps, max {max(times) * 1e3:.1f}; mu 0 -> {s.mu:,.0f}) | {before / after:,.0f}x |"
    )
    print(row)


if __name__ == "__main__":
    main()
