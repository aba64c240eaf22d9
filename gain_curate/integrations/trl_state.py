"""The TRL adapter's sampler and checkpoint state: GainRepeatSampler (RepeatSampler's
contract with the curriculum choosing each chunk's prompts) and GainCheckpoints, the part of
GainGRPOTrainer (gain_curate.integrations.trl) that saves and resumes both.

Checkpoints: every checkpoint folder gets `gain_curate_state.json` (the schedule's
state_dict, how far training has read the sampler's stream, and the chunks already drawn
but not yet trained), written before transformers saves the rest of the folder, and
`train(resume_from_checkpoint=...)` loads it where transformers loads the optimizer. The
resumed sampler continues the stream at the first batch not trained; transformers then
skips the batches it believes were trained in the current dataloader epoch (unless
`ignore_data_skip`), so the sampler yields that many placeholder batches first, which the
skip discards: nothing is drawn twice, skipped twice or drawn again at another mu.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
from torch.utils.data import Sampler
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from gain_curate.curriculum.schedule import GainSchedule
from gain_curate.curriculum.state import ScheduleState
from gain_curate.integrations._common import LOG
from gain_curate.runfolder.store import write_bytes_atomic

STATE_FILE = "gain_curate_state.json"  # in every checkpoint folder
STATE_VERSION = 1


class SamplerState(TypedDict):
    """GainRepeatSampler.state_dict(): its shape, how far training read the stream, and the
    drawn chunks not yet wholly trained (chunk number -> rank positions; JSON keys)."""

    batch_size: int
    mini_repeat_count: int
    repeat_count: int
    trained: int
    draws: int
    chunks: dict[str, list[int]]


class CheckpointState(TypedDict):
    """gain_curate_state.json in every checkpoint folder (version 1)."""

    version: int
    schedule: ScheduleState
    sampler: SamplerState | None


class GainRepeatSampler(Sampler[int]):
    """RepeatSampler's contract with the curriculum choosing each chunk's prompts.

    The sampler is one stream over all of training: chunk k (batch_size prompts drawn with
    the schedule's plan for draw k, repeated as RepeatSampler repeats) fills stream indices
    [k L, (k + 1) L), L = batch_size * mini_repeat_count * repeat_count; every `__iter__` (a
    dataloader epoch) yields the next len(self) indices of it. `trained` is how far training
    has read it (the trainer moves it), so `state_dict` holds what a resumed run needs."""

    def __init__(
        self,
        data_source: Any,
        mini_repeat_count: int,
        batch_size: int,
        repeat_count: int,
        schedule: GainSchedule,
        rows: list[int],
    ) -> None:
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

    def state_dict(self) -> SamplerState:
        first = self.trained // self.chunk_len
        return {
            "batch_size": self.batch_size,
            "mini_repeat_count": self.mini_repeat_count,
            "repeat_count": self.repeat_count,
            "trained": self.trained,
            "draws": self.draws,
            "chunks": {
                str(k): [int(r) for r in c] for k, c in sorted(self._chunks.items()) if k >= first
            },
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


class GainCheckpoints:
    """GainGRPOTrainer's checkpoints, TRL's own pattern (its entropy controller saves and
    loads the same way): a mixin placed before GRPOTrainer, whose trainer sets
    `gain_schedule` and `_gain_sampler`."""

    gain_schedule: GainSchedule
    _gain_sampler: GainRepeatSampler | None

    def gain_state_dict(self) -> CheckpointState:
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
            if (
                self._gain_sampler is not None
                and self._gain_sampler.trained % self._gain_sampler.chunk_len
            ):
                LOG.warning(
                    f"gain-curate: checkpoint {folder} falls inside a generation batch "
                    "(save_steps not a multiple of steps_per_generation * num_iterations / "
                    "gradient_accumulation_steps): on resume TRL generates that batch again "
                    "and mu takes one extra step"
                )
        super()._save_checkpoint(model, trial)

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is not None:
            self._gain_resume(checkpoint)

    def _gain_resume(self, checkpoint: str) -> None:
        path = os.path.join(checkpoint, STATE_FILE)
        if not os.path.isfile(path):
            LOG.warning(
                f"gain-curate: {checkpoint} has no {STATE_FILE} (not saved by "
                "GainGRPOTrainer): the curriculum starts over at mu0"
            )
            return
        with open(path) as f:
            state = json.load(f)
        if int(state.get("version", 1)) > STATE_VERSION:
            raise ValueError(
                f"{path} is version {state['version']}, newer than this gain-curate reads "
                f"({STATE_VERSION}): upgrade gain-curate"
            )
        self.gain_schedule.load_state_dict(state["schedule"])
        if state.get("sampler") is not None and self._gain_sampler is not None:
            self._gain_sampler.load_state_dict(
                state["sampler"], lead_batches=self._gain_data_skip(self._gain_sampler)
            )
        LOG.info(
            f"gain-curate: resumed from {checkpoint} at schedule epoch "
            f"{self.gain_schedule.epoch}, mu {self.gain_schedule.mu:.1f}"
        )

    def _gain_data_skip(self, sampler: GainRepeatSampler) -> int:
        """The batches transformers' Trainer skips on resume in the current dataloader epoch
        (its rule: global_step % update steps per epoch, times gradient_accumulation_steps)."""
        if self.args.ignore_data_skip:
            return 0
        per_epoch = len(sampler) // sampler.batch_len  # batches per process and dataloader epoch
        ga = self.args.gradient_accumulation_steps
        updates = max(per_epoch // ga + int(per_epoch % ga > 0), 1)
        return (self.state.global_step % updates) * ga
