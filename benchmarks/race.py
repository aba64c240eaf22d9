"""A measured race of curricula on TRL's real GRPOTrainer: uniform sampling, the GAIN-RL angle
schedule and the online learnability mode, same model, data, sizes and seeds.

Data: reasoning-gym's basic_arithmetic at the six levels of benchmarks/rollout_set.py, a
train set and a held-out set drawn with another seed. The train set is scored with
`gain-curate score --keep-states` (the run the curriculum arms draw over; `--run` reuses
one); the held-out set is scored too, only for its conversations. The conversation is one
user turn, the question alone (`--no-system-prompt --few-shot none`: short prompts, and
SmolLM2-135M does not follow an answer-tag format anyway). Reward: 1 when the last integer
in the completion equals the answer, else 0 (`last_integer_reward`).

Per step, arm and seed it logs the share of zero-variance groups served (all completions of
a prompt the same reward) and the mean reward; at the end the held-out accuracy (greedy).
Everything goes to OUT/race.json (runs already there are skipped, so a second call adds
arms), OUT/race.md (the table) and OUT/race.png (both curves per arm, seeds' mean and spread).

    pip install reasoning-gym==0.1.25              # into the venv with TRL (.venv-integrations)
    python benchmarks/race.py --out runs/race --seeds 0 1 --steps 30
    python benchmarks/race.py --out runs/race --report   # table and plot from race.json only

On a GPU machine: a larger model and sizes, e.g.
    python benchmarks/race.py --out runs/race-gpu --model Qwen/Qwen2.5-0.5B-Instruct \
        --steps 200 --prompts 32 --completions 8 --train-per-level 500 --max-completion-length 256
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ARMS = ("uniform", "angle", "online")
SCORE_FLAGS = ["--no-system-prompt", "--few-shot", "none"]  # the question as the one user turn
_INT = re.compile(r"-?\d+")


def last_integer_reward(completion: str, answer: str) -> float:
    """1.0 when the completion's last integer equals the (integer) answer, else 0.0."""
    found = _INT.findall(completion)
    return float(bool(found) and int(found[-1]) == int(answer))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="folder for data, runs, race.json")
    ap.add_argument("--model", default="smollm2", help="smollm2 (embedded) or a model folder/id")
    ap.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--prompts", type=int, default=8, help="distinct prompts per step")
    ap.add_argument("--completions", type=int, default=4, help="completions per prompt")
    ap.add_argument("--max-completion-length", type=int, default=64)
    ap.add_argument("--train-per-level", type=int, default=40)
    ap.add_argument("--heldout-per-level", type=int, default=10)
    ap.add_argument("--heldout-seed", type=int, default=1000)
    ap.add_argument("--learning-rate", type=float, default=1e-5)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--run", type=Path, help="a scored run (score --keep-states) of the train set")
    ap.add_argument("--report", action="store_true", help="only render race.json's table, plot")
    args = ap.parse_args(argv)
    for name in ("steps", "prompts", "completions", "max_completion_length", "train_per_level"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.completions < 2:
        ap.error("--completions must be at least 2 (GRPO compares completions of one prompt)")
    return args


# -- bookkeeping: one record per generation batch (one optimizer step here)


@dataclass
class Step:
    groups: int  # distinct prompts served
    zero_var: float  # share of them whose completions all got the same reward
    mean_reward: float


def step_of(uids: list[str], rewards: list[float]) -> Step:
    """(B*G,) rewards keyed by prompt uid -> the step's record (groups by uid, not order)."""
    if len(uids) != len(rewards) or not uids:
        raise ValueError(
            f"a step needs one reward per completion: {len(uids)} uids, {len(rewards)}"
        )
    by: dict[str, list[float]] = {}
    for u, r in zip(uids, rewards):
        by.setdefault(u, []).append(float(r))
    flat = sum(1 for rs in by.values() if max(rs) == min(rs))
    return Step(len(by), flat / len(by), sum(rewards) / len(rewards))


@dataclass
class RunResult:
    steps: list[Step] = field(default_factory=list)
    heldout: float | None = None
    wall_s: float = 0.0


# -- the table and the plot


def _per_seed(values: list[float], fmt: str = "{:.2f}") -> str:
    return " / ".join(fmt.format(v) for v in values)


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def render_table(results: dict[str, dict[str, Any]]) -> str:
    """race.json's "arms" -> Markdown: per arm the seeds, and per seed the step means of the
    zero-variance share and reward, the held-out accuracy and the wall time."""
    lines = [
        "| arm | seeds | zero-variance share, steps 1-N mean (per seed) "
        "| mean reward (per seed) | held-out accuracy (per seed) | wall time (per seed) |",
        "|---|---|---|---|---|---|",
    ]
    for arm in ARMS:
        runs = results.get(arm) or {}
        if not runs:
            continue
        seeds = sorted(runs, key=int)
        zv = [_mean([s["zero_var"] for s in runs[k]["steps"]]) for k in seeds]
        rw = [_mean([s["mean_reward"] for s in runs[k]["steps"]]) for k in seeds]
        ho = [runs[k]["heldout"] for k in seeds]
        wall = [runs[k]["wall_s"] / 60 for k in seeds]
        lines.append(
            f"| {arm} | {', '.join(seeds)} | {_per_seed(zv)} (mean {_mean(zv):.2f}) "
            f"| {_per_seed(rw, '{:.3f}')} (mean {_mean(rw):.3f}) "
            f"| {_per_seed(ho)} (mean {_mean(ho):.2f}) | {_per_seed(wall, '{:.0f}')} min |"
        )
    return "\n".join(lines) + "\n"


def plot(results: dict[str, dict[str, Any]], path: Path) -> None:
    """Two panels (zero-variance share, mean reward) by step; per arm the seeds' mean as a
    line and their min-max as a band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), dpi=90)
    for arm in ARMS:
        runs = list((results.get(arm) or {}).values())
        if not runs:
            continue
        n = min(len(r["steps"]) for r in runs)
        x = list(range(1, n + 1))
        for ax, key in zip(axes, ("zero_var", "mean_reward")):
            ys = [[r["steps"][i][key] for r in runs] for i in range(n)]
            (line,) = ax.plot(x, [_mean(y) for y in ys], label=f"{arm} ({len(runs)} seeds)")
            ax.fill_between(
                x, [min(y) for y in ys], [max(y) for y in ys], color=line.get_color(), alpha=0.2
            )
    axes[0].set(title="zero-variance share of groups served", xlabel="step", ylim=(-0.02, 1.02))
    axes[1].set(title="mean reward", xlabel="step")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# -- data, scoring, training, evaluation (TRL and torch are imported here only)


def make_sets(args: argparse.Namespace) -> tuple[Path, Path]:
    """The train run folder (scored with states) and the held-out run folder."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from rollout_set import write_set

    train, held = args.out / "train.jsonl", args.out / "heldout.jsonl"
    write_set(train, args.train_per_level, seed=0)
    write_set(held, args.heldout_per_level, seed=args.heldout_seed)
    run = args.run or args.out / "run-train"
    folders = [(held, args.out / "run-heldout", [])]
    if args.run is None:
        folders.append((train, run, ["--keep-states"]))
    for data, out, extra in folders:
        if not (out / "gain_manifest.json").is_file():
            cmd = [str(Path(sys.executable).parent / "gain-curate"), "score", "--model", args.model]
            cmd += ["--data", str(data), "--out", str(out), *SCORE_FLAGS, *extra]
            subprocess.run(cmd, check=True)
    return run, args.out / "run-heldout"


def model_path(name: str) -> str:
    if name != "smollm2":
        return name
    from gain_curate.runtime.gguf import ensure_embedded_smollm2
    from gain_curate.runtime.models import default_cache_dir

    return str(ensure_embedded_smollm2(default_cache_dir()))


def load_shards(run: Path) -> Any:
    from datasets import load_dataset

    return load_dataset(
        "parquet", data_files=sorted(str(p) for p in (run / "data").glob("*.parquet"))
    )["train"]


def train_one(args: argparse.Namespace, arm: str, seed: int, run: Path, held: Path) -> RunResult:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from gain_curate.integrations.trl import GainGRPOTrainer

    torch.manual_seed(seed)
    path = model_path(args.model)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    res = RunResult()

    def reward_correct(
        completions: list[Any], reward_model: list[Any], extra_info: list[Any], **kw: Any
    ) -> list[float]:
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        out = [last_integer_reward(t, g["ground_truth"]) for t, g in zip(texts, reward_model)]
        res.steps.append(step_of([e["gain_uid"] for e in extra_info], out))
        return out

    gpu = torch.cuda.is_available()
    batch = args.prompts * args.completions  # one step = one generation batch of B*G rows
    cfg = GRPOConfig(
        output_dir=str(args.out / "trainer" / f"{arm}-{seed}"),
        use_cpu=not gpu,
        bf16=gpu,  # fp32 on CPU (this race); bf16 on a GPU machine
        per_device_train_batch_size=batch,
        num_generations=args.completions,
        max_completion_length=args.max_completion_length,
        max_steps=args.steps,
        learning_rate=args.learning_rate,
        temperature=args.temperature,
        seed=seed,
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        gradient_checkpointing=False,  # TRL turns it on; memory is not the limit at 135M
    )
    common = dict(model=model, reward_funcs=reward_correct, args=cfg, processing_class=tok)
    dataset = load_shards(run)
    t0 = time.perf_counter()
    if arm == "uniform":
        trainer = GRPOTrainer(train_dataset=dataset, **common)
    else:
        gain = {} if arm == "angle" else {"rank_by": "learnability-online", "states": str(run)}
        trainer = GainGRPOTrainer(train_dataset=dataset, gain_params=gain, **common)
    trainer.train()
    res.wall_s = time.perf_counter() - t0
    res.heldout = heldout_accuracy(
        trainer.model, tok, load_shards(held), args.max_completion_length
    )
    return res


def heldout_accuracy(model: Any, tok: Any, ds: Any, max_new: int, batch: int = 16) -> float:
    """Greedy completions of the held-out conversations, graded by last_integer_reward."""
    import torch

    model.eval()
    tok.padding_side = "left"
    right = 0.0
    for i in range(0, len(ds), batch):
        rows = ds[i : i + batch]
        text = [
            tok.apply_chat_template(p, tokenize=False, add_generation_prompt=True)
            for p in rows["prompt"]
        ]
        enc = tok(text, return_tensors="pt", padding=True, add_special_tokens=False)
        enc = enc.to(model.device)
        with torch.no_grad():
            out = model.generate(
                **enc, max_new_tokens=max_new, do_sample=False, pad_token_id=tok.pad_token_id
            )
        done = tok.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
        right += sum(
            last_integer_reward(t, g["ground_truth"]) for t, g in zip(done, rows["reward_model"])
        )
    return right / len(ds)


def base_accuracy(args: argparse.Namespace, held: Path) -> float:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = model_path(args.model)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model.to("cuda" if torch.cuda.is_available() else "cpu")
    tok = AutoTokenizer.from_pretrained(path)
    return heldout_accuracy(model, tok, load_shards(held), args.max_completion_length)


def save(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "race.json"
    data = json.loads(path.read_text()) if path.is_file() else {"arms": {}}
    if not args.report:
        run, held = make_sets(args)
        data["config"] = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
        if "base_heldout" not in data:  # the untrained model on the same held-out set
            data["base_heldout"] = base_accuracy(args, held)
            save(path, data)
        for seed in args.seeds:
            for arm in args.arms:
                if str(seed) in data["arms"].get(arm, {}):
                    continue
                r = train_one(args, arm, seed, run, held)
                data["arms"].setdefault(arm, {})[str(seed)] = asdict(r)
                save(path, data)
                print(f"{arm} seed {seed}: held-out {r.heldout:.3f}, {r.wall_s:.0f} s", flush=True)
    (args.out / "race.md").write_text(render_table(data["arms"]))
    plot(data["arms"], args.out / "race.png")
    print(render_table(data["arms"]))


if __name__ == "__main__":
    main()
