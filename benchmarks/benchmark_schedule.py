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

    python benchmarks/benchmark_schedule.py --online [--n 1000000 --dim 576 --steps 10]

`--online` times the online learnability mode instead (rank_by learnability-online,
gain_curate.curriculum.learning) over random float16 states of N prompts x `--dim` values
(576: SmolLM2-135M's hidden size; 896: Qwen2.5-0.5B's), written to and read back from a
states.npz the way `score --keep-states` writes it: the file's size, the schedule's resident
memory for the states, the B draws of a step (one at a time), the whole step without its
refit (the draws, observe, end the epoch: the step's groups added to the probe, O(B d^2)),
and a refit (the d x d solve and re-predicting
all N prompts). Targets: a refit under 1 s, a step under 50 ms.
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


def online(n: int, b: int, dim: int, steps: int) -> str:
    """One row for the online learnability mode (module docstring)."""
    import os
    import tempfile
    from pathlib import Path

    import torch

    from gain_curate.curriculum.learning import LearnabilitySchedule, LearningParams
    from gain_curate.curriculum.states import load_states
    from gain_curate.runfolder.store import write_npz_atomic

    rng = np.random.default_rng(0)
    uids = [f"u{i}" for i in range(n)]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "states.npz"
        states = rng.standard_normal((n, dim), dtype=np.float32).astype(np.float16)
        truth = 1 / (1 + np.exp(-(states[:, :8].astype(np.float32).sum(1))))  # a pass rate
        write_npz_atomic(path, {"gain_uid": np.array(uids), "prompt_end@L16": states})
        del states
        disk = os.path.getsize(path)
        t0 = time.perf_counter()
        x, _ = load_states(path, uids)
        load = time.perf_counter() - t0
    lp = LearningParams(min_groups=0, refit_every=10**9)  # refits timed apart from steps
    s = LearnabilitySchedule(n, ScheduleParams(batch_size=b), uids=uids, states=x, learning=lp)
    step_times, draw_times, refit_times = [], [], []
    for _ in range(steps):
        t0 = time.perf_counter()
        drawn = [int(s.take(1)[0]) for _ in range(b)]
        draw_times.append(time.perf_counter() - t0)
        got = rng.binomial(4, truth[drawn]) / 4
        s.observe([uids[r] for r in drawn], got)
        s.end_epoch()
        step_times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        s.probe.refit()
        s._set_weights()
        refit_times.append(time.perf_counter() - t0)
    step, refit = statistics.median(step_times), statistics.median(refit_times)
    draws = statistics.median(draw_times)
    return (
        f"| {date.today().isoformat()} | {cpu_label(torch.get_num_threads())} | online "
        f"learnability, N = {n:,}, B = {b:,}, d = {dim} float16 | states.npz "
        f"{disk / 2**30:.2f} GiB on disk, {x.nbytes / 2**30:.2f} GiB in memory (read in "
        f"{load:.1f} s) | draws {draws * 1e3:.1f} ms, "
        f"whole step {step * 1e3:.1f} ms (medians of {steps}; max {max(step_times) * 1e3:.1f}: "
        f"draws, observe, the step's groups into the probe) | refit {refit * 1e3:.0f} ms "
        f"(median of {steps}, max {max(refit_times) * 1e3:.0f}; penalty {s.probe.alpha:g}) |"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=20, help="steps timed for 'after'")
    ap.add_argument("--naive-draws", type=int, default=16, help="draws timed for 'before'")
    ap.add_argument("--online", action="store_true", help="time the online learnability mode")
    ap.add_argument("--dim", type=int, default=576, help="--online: values per prompt state")
    args = ap.parse_args()
    n, b = args.n, args.batch_size
    if args.online:
        print(online(n, b, args.dim, args.steps))
        return
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
