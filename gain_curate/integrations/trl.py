"""TRL adapter: GRPOTrainer sampling by GAIN-RL's curriculum, fed by its own rewards.

    from gain_curate.integrations.trl import GainGRPOTrainer
    from gain_curate.schedule import ScheduleParams
    dataset = load_dataset("parquet", data_files="runs/gsm8k/data/*.parquet")["train"]
    trainer = GainGRPOTrainer(model=..., reward_funcs=..., args=GRPOConfig(...),
                              train_dataset=dataset, gain_params={"sigma": 1000})
    trainer.train()

One schedule epoch is one generation batch: generation_batch_size // num_generations
distinct prompts drawn at the current mu, each repeated num_generations times in a row and
the chunk repeated num_iterations * steps_per_generation times, exactly RepeatSampler's
contract. Rewards are gathered across processes before they reach the schedule, so every
rank moves mu identically and draws the same plan. A completion is correct when ONE reward
function's reward is above a threshold (gain_params `correct_reward`, default the first
function, and `correct_threshold`, default 0): a format reward added as another function
never makes a wrong answer correct. The dataloader prefetches one batch, so a result moves
mu for the batch after next (the draw counter, not mu, keys each chunk's random stream).

Checkpoints: every checkpoint folder gets `gain_curate_state.json` (the schedule's
state_dict, how far training has read the sampler's stream, and the chunks already drawn
but not yet trained), written before transformers saves the rest of the folder, and
`train(resume_from_checkpoint=...)` loads it where transformers loads the optimizer. The
resumed sampler continues the stream at the first batch not trained; transformers then
skips the batches it believes were trained in the current dataloader epoch (unless
`ignore_data_skip`), so the sampler yields that many placeholder batches first, which the
skip discards: nothing is drawn twice, skipped twice or drawn again at another mu.

The angle term is measured online (gain_curate.online): generation's prefill runs each
step's prompts through the policy, and hooks on it compute their C_intra + w C_inter with
the weights of that step, cut into P and Q as `score` cuts them; rows the prefill did not
show (vLLM generation, or ids that did not match) get one prompt-only forward. "change"
(default) feeds the rule the shift of that value from the prompts' offline scores, "level"
(paper mode) the value itself, "off" nothing. mu, acc, ang and the online level are logged
as `gain/*`.

Without this class (an IterableDataset, TRL's experimental AsyncGRPOTrainer, which iterates
its dataset in order without a sampler, or any other GRPO trainer): export the open-loop
plan, `gain-curate export OUT --format verl`, and train on OUT/export/verl/plan.parquet in
file order (`GRPOConfig(shuffle_dataset=False)`); the plan then chooses every prompt.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Sampler
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from trl import GRPOTrainer

from gain_curate.integrations._common import (
    LOG,
    build_schedule,
    offline_scores,
    per_prompt,
    rank_by_of,
    rank_keys,
    schedule_params,
    step_metrics,
)
from gain_curate.online import Capture, OnlineAngles, question_of
from gain_curate.schedule import GainSchedule
from gain_curate.store import write_bytes_atomic

STATE_FILE = "gain_curate_state.json"  # in every checkpoint folder
STATE_VERSION = 1


class GainRepeatSampler(Sampler[int]):
    """RepeatSampler's contract with the curriculum choosing each chunk's prompts.

    The sampler is one stream over all of training: chunk k (batch_size prompts drawn with
    the schedule's plan for draw k, repeated as RepeatSampler repeats) fills stream indices
    [k L, (k + 1) L), L = batch_size * mini_repeat_count * repeat_count; every `__iter__` (a
    dataloader epoch) yields the next len(self) indices of it. `trained` is how far training
    has read it (the trainer moves it), so `state_dict` holds what a resumed run needs."""

    def __init__(self, data_source: Any, mini_repeat_count: int, batch_size: int, repeat_count: int,
                 schedule: GainSchedule, rows: list[int]) -> None:  # fmt: skip
        self.data_source = data_source
        self.mini_repeat_count, self.batch_size, self.repeat_count = (
            mini_repeat_count,
            batch_size,
            repeat_count,
        )
        self.schedule, self.rows = schedule, rows
        self.batch_len = batch_size * mini_repeat_count  # one generation batch, all processes
        self.chunk_len = self.batch_len * repeat_count
        self.draws = 0  # chunks drawn so far: draw k is keyed by k in the schedule's stream
        self.position = 0  # stream indices handed out (the dataloader reads ahead of training)
        self.trained = 0  # stream indices training has consumed
        self._chunks: dict[int, np.ndarray] = {}  # drawn chunks not yet wholly trained
        self._lead = 0  # placeholder indices to yield first (a resumed trainer skips them)

    def __len__(self) -> int:
        return (
            (len(self.rows) // self.batch_size)
            * self.batch_size
            * self.mini_repeat_count
            * self.repeat_count
        )

    def __iter__(self) -> Iterator[int]:
        lead, self._lead = min(self._lead, len(self)), 0
        for _ in range(lead):
            yield self.rows[0]  # never loaded: transformers' data skip discards these indices
        for _ in range(len(self) - lead):
            k, j = divmod(self.position, self.chunk_len)
            self.position += 1
            yield self.rows[int(self.chunk(k)[(j % self.batch_len) // self.mini_repeat_count])]

    def chunk(self, k: int) -> np.ndarray:
        """Chunk k's rank positions, drawn at the schedule's current mu when first needed."""
        if k not in self._chunks:
            self._chunks[k] = np.asarray(self.schedule.plan_epoch(epoch=k))
            self.draws = max(self.draws, k + 1)
            first = self.trained // self.chunk_len
            for old in [c for c in self._chunks if c < first]:
                del self._chunks[old]
        return self._chunks[k]

    def current_chunk(self) -> np.ndarray | None:
        """The chunk training is reading now (None before the dataloader drew it)."""
        return self._chunks.get(self.trained // self.chunk_len)

    def mark_trained(self) -> None:
        """Training consumed one more (per-process) batch: one generation batch of the stream."""
        self.trained += self.batch_len

    def state_dict(self) -> dict[str, Any]:
        first = self.trained // self.chunk_len
        return {
            "batch_size": self.batch_size,
            "mini_repeat_count": self.mini_repeat_count,
            "repeat_count": self.repeat_count,
            "trained": self.trained,
            "draws": self.draws,
            "chunks": {
                str(k): [int(r) for r in c] for k, c in sorted(self._chunks.items()) if k >= first
            },  # fmt: skip
        }

    def load_state_dict(self, state: Mapping[str, Any], *, lead_batches: int = 0) -> None:
        """Continue the stream where training stopped; the first `lead_batches` batches of
        the next `__iter__` are placeholders for the batches the trainer will skip."""
        shape = ("batch_size", "mini_repeat_count", "repeat_count")
        if any(state[k] != getattr(self, k) for k in shape):
            saved = ", ".join(f"{k} {state[k]}" for k in shape)
            now = ", ".join(f"{k} {getattr(self, k)}" for k in shape)
            raise ValueError(
                f"the checkpoint's curriculum sampler had {saved}, this trainer has {now}: resume "
                "with the same num_generations, generation batch size, steps_per_generation and "
                "num_iterations"
            )
        self.trained = self.position = int(state["trained"])
        self.draws = int(state["draws"])
        self._chunks = {int(k): np.asarray(v, dtype=np.int64) for k, v in state["chunks"].items()}
        self._lead = lead_batches * self.batch_len


def refuse_iterable(dataset: Any) -> None:
    """TRL 1.x feeds an IterableDataset without calling the sampler: the curriculum could
    not choose a single prompt, so say so and point at the open-loop plan instead."""
    import datasets
    import torch.utils.data

    if isinstance(dataset, datasets.IterableDataset | torch.utils.data.IterableDataset):
        raise ValueError(
            "GainGRPOTrainer needs a map-style train_dataset (TRL feeds an IterableDataset "
            "without a sampler, so the curriculum cannot choose prompts): load the shards "
            "without streaming, or train a plain GRPOTrainer(args=GRPOConfig(shuffle_dataset=False)) "
            "on `gain-curate export OUT --format verl`, the plan in order"
        )


def correct_column(choice: Any, names: Sequence[str]) -> int | None:
    """gain_params `correct_reward` -> the reward function's column (None: "weighted", the
    weighted sum of all functions, as TRL's advantage uses)."""
    if choice == "weighted":
        return None
    if isinstance(choice, int | np.integer) and not isinstance(choice, bool):
        if -len(names) <= choice < len(names):
            return int(choice) % len(names)
    elif isinstance(choice, str) and choice in names:
        if list(names).count(choice) > 1:
            raise ValueError(f"gain_params correct_reward={choice!r} names more than one reward function: pass its index")  # fmt: skip
        return list(names).index(choice)
    raise ValueError(
        f"gain_params correct_reward={choice!r} is not a reward function: an index 0..{len(names) - 1}, "
        f"a name ({', '.join(names)}) or 'weighted'"
    )


def completion_correct(rewards_per_func: torch.Tensor, weights: torch.Tensor, column: int | None,
                       threshold: float) -> list[float | None]:  # fmt: skip
    """Per completion 1.0 / 0.0 (the chosen reward > threshold), or None where that reward is
    missing (a TRL reward function returned None: it does not apply to the row)."""
    if column is None:
        r = (rewards_per_func * weights.to(rewards_per_func.device).unsqueeze(0)).nansum(dim=1)
        r[torch.isnan(rewards_per_func).all(dim=1)] = torch.nan
    else:
        r = rewards_per_func[:, column]
    return [None if np.isnan(v) else float(v > threshold) for v in r.float().cpu().tolist()]


class GainGRPOTrainer(GRPOTrainer):
    """GRPOTrainer whose train sampler follows the GAIN-RL schedule; `gain_params` takes the
    schedule's parameters by name (sigma as a number or '0.05N', mu0, n, alpha, beta,
    adj_min, adj_max, seed, angle, at_end, mode="paper"), `rank_by` for the order it draws
    over ("angle", the default; "learnability" after `gain-curate predict`; "length"), `layer` / `inter_weight` for the
    online angle measurement (defaults: the last layer and 1, as `score`'s defaults; use the
    values the shards were scored with), and `correct_reward` / `correct_threshold` for what
    counts as correct (default: the first reward function's reward > 0; an index, a
    function's name as TRL logs it, or "weighted" for the weighted sum of all functions).

    The angle term is measured online: generation's prefill of each step's prompts passes
    through hooks that cut P and Q as `score` does, with the weights of that step. The
    schedule and the sampler's place travel in every checkpoint (`gain_curate_state.json`)."""

    def __init__(
        self, *args: Any, gain_params: Mapping[str, Any] | None = None, **kwargs: Any
    ) -> None:
        refuse_iterable(kwargs.get("train_dataset"))
        super().__init__(*args, **kwargs)
        refuse_iterable(self.train_dataset)
        gain = {"seed": self.args.seed, **(gain_params or {})}
        chunk = self.args.generation_batch_size // self.num_generations
        params = schedule_params(gain, chunk)
        self.gain_correct_column = correct_column(gain.get("correct_reward", 0), self.reward_func_names)  # fmt: skip
        self.gain_correct_threshold = float(gain.get("correct_threshold", 0.0))
        ds = self.train_dataset
        w = float(gain.get("inter_weight", 1.0))
        extra = ds["extra_info"]
        rank_by = rank_by_of(gain)
        self.gain_schedule, self._gain_rows = build_schedule(extra, offline_scores(ds, w), params, rank_by, rank_keys(ds, rank_by))  # fmt: skip
        self._gain_uid_at = [extra[i]["gain_uid"] for i in self._gain_rows]  # by rank position
        self.gain_angles = None
        if params.angle != "off":
            self.gain_angles = OnlineAngles(
                self.accelerator.unwrap_model(self.model), self.processing_class,
                layer=gain.get("layer"), inter_weight=w,
                render_kwargs={"tools": self.tools or None, "chat_template": self.chat_template, **self.chat_template_kwargs},
            )  # fmt: skip
        self._gain_capture: Capture | None = None
        self._gain_segments: list[Any] = []
        self._gain_sampler: GainRepeatSampler | None = None
        self._gain_warned = False

    def _get_train_sampler(self, dataset: Any = None) -> Sampler:
        self._gain_sampler = GainRepeatSampler(
            dataset if dataset is not None else self.train_dataset,
            mini_repeat_count=self.num_generations,
            batch_size=self.args.generation_batch_size // self.num_generations,
            repeat_count=self.num_iterations * self.args.steps_per_generation,
            schedule=self.gain_schedule,
            rows=self._gain_rows,
        )
        return self._gain_sampler

    # -- checkpoints: TRL's own pattern (its entropy controller saves and loads the same way)

    def gain_state_dict(self) -> dict[str, Any]:
        s = self._gain_sampler
        return {
            "version": STATE_VERSION,
            "schedule": self.gain_schedule.state_dict(),
            "sampler": None if s is None else s.state_dict(),
        }

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        if self.args.should_save:  # before the folder is pushed or rotated
            folder = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            path = Path(self._get_output_dir(trial=trial)) / folder / STATE_FILE
            write_bytes_atomic(path, json.dumps(self.gain_state_dict(), default=float).encode())
            if self._gain_sampler is not None and self._gain_sampler.trained % self._gain_sampler.chunk_len:  # fmt: skip
                LOG.warning(f"gain-curate: checkpoint {folder} falls inside a generation batch (save_steps not a multiple of steps_per_generation * num_iterations / gradient_accumulation_steps): on resume TRL generates that batch again and mu takes one extra step")  # fmt: skip
        super()._save_checkpoint(model, trial)

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is not None:
            self._gain_resume(checkpoint)

    def _gain_resume(self, checkpoint: str) -> None:
        path = os.path.join(checkpoint, STATE_FILE)
        if not os.path.isfile(path):
            LOG.warning(f"gain-curate: {checkpoint} has no {STATE_FILE} (not saved by GainGRPOTrainer): the curriculum starts over at mu0")  # fmt: skip
            return
        with open(path) as f:
            state = json.load(f)
        if int(state.get("version", 1)) > STATE_VERSION:
            raise ValueError(f"{path} is version {state['version']}, newer than this gain-curate reads ({STATE_VERSION}): upgrade gain-curate")  # fmt: skip
        self.gain_schedule.load_state_dict(state["schedule"])
        if state.get("sampler") is not None and self._gain_sampler is not None:
            self._gain_sampler.load_state_dict(state["sampler"], lead_batches=self._gain_data_skip(self._gain_sampler))  # fmt: skip
        LOG.info(f"gain-curate: resumed from {checkpoint} at schedule epoch {self.gain_schedule.epoch}, mu {self.gain_schedule.mu:.1f}")  # fmt: skip

    def _gain_data_skip(self, sampler: GainRepeatSampler) -> int:
        """The batches transformers' Trainer skips on resume in the current dataloader epoch
        (its rule: global_step % update steps per epoch, times gradient_accumulation_steps)."""
        if self.args.ignore_data_skip:
            return 0
        per_epoch = len(sampler) // sampler.batch_len  # batches per process and dataloader epoch
        ga = self.args.gradient_accumulation_steps
        updates = max(per_epoch // ga + int(per_epoch % ga > 0), 1)
        return (self.state.global_step % updates) * ga

    # -- training

    def training_step(self, model: Any, inputs: Any, num_items_in_batch: Any = None) -> Any:
        out = super().training_step(model, inputs, num_items_in_batch)
        if self._gain_sampler is not None:
            self._gain_sampler.mark_trained()
        return out

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        if self.gain_angles is None or not self.model.training:
            return super()._generate_and_score_completions(inputs)
        # The prefill of generation runs these prompts through the policy: measure them there.
        self._gain_segments = self.gain_angles.segments([x["prompt"] for x in inputs], [question_of(x) for x in inputs])  # fmt: skip
        with self.gain_angles.capture(self._gain_segments) as cap:
            self._gain_capture = cap
            try:
                return super()._generate_and_score_completions(inputs)
            finally:
                self._gain_capture = None

    def _online_angles(self, uids: list[str]) -> tuple[list[str], list[float]]:
        """This process's measured prompts, once each: (uids, online score). Rows the capture
        did not match (all of them with vLLM generation, where the policy's forward does not
        run here; some when a row's ids differ) get one prompt-only forward."""
        cap = self._gain_capture
        if cap is None:
            return [], []
        segs = self._gain_segments
        values = list(cap.values) if cap.values is not None else [None] * len(segs)
        missing = [i for i, v in enumerate(values) if v is None and i < len(segs) and segs[i] is not None]  # fmt: skip
        if missing:
            model = self.accelerator.unwrap_model(self.model)
            again = self.gain_angles.measure(model, [segs[i] for i in missing], self.processing_class.pad_token_id)  # fmt: skip
            for i, v in zip(missing, again):
                values[i] = v
        seen: dict[str, float] = {}
        for u, v in zip(uids, values):
            if v is not None and u not in seen:
                seen[u] = v[2]
        return list(seen), list(seen.values())

    def _gain_check_chunk(self, uids: Sequence[str]) -> None:
        """The prompts generated on are the chunk the sampler planned for this place of the
        stream; warn once if not (a data skip on resume that did not line up)."""
        chunk = None if self._gain_sampler is None else self._gain_sampler.current_chunk()
        if chunk is None or self._gain_warned:
            return
        if set(uids) != {self._gain_uid_at[int(r)] for r in chunk}:
            self._gain_warned = True
            LOG.warning("gain-curate: this generation batch is not the chunk the curriculum planned for it (a resume whose data skip did not line up?): the schedule still moves, but the draws no longer follow the uninterrupted run")  # fmt: skip

    def _calculate_rewards(self, inputs: list[dict[str, Any]], *args: Any, **kwargs: Any) -> Any:
        rewards_per_func = super()._calculate_rewards(
            inputs, *args, **kwargs
        )  # gathered: (global B*G, funcs)
        if self.model.training:
            from accelerate.utils import gather_object

            local = [x["extra_info"]["gain_uid"] for x in inputs]
            uids = gather_object(local)
            self._gain_check_chunk(uids)
            correct = completion_correct(rewards_per_func, self.reward_weights, self.gain_correct_column, self.gain_correct_threshold)  # fmt: skip
            scored = [(u, c) for u, c in zip(uids, correct) if c is not None]
            if scored:
                self.gain_schedule.observe(*per_prompt([u for u, _ in scored], [c for _, c in scored]))  # fmt: skip
            ang_uids, online = self._online_angles(local)
            ang_uids, online = gather_object(ang_uids), gather_object(online)
            first = dict(
                zip(reversed(ang_uids), reversed(online))
            )  # a prompt measured twice counts once
            self.gain_schedule.observe_angles(list(first), list(first.values()))
            rec = self.gain_schedule.end_epoch()
            for k, v in step_metrics(rec, float(np.mean(online)) if online else None).items():
                self._metrics["train"][k].append(v)
        return rewards_per_func
