"""verl adapters: train on GAIN-RL's curriculum inside verl's PPO/GRPO trainer.

verl 0.5-0.7 have a curriculum-sampler hook (`data.sampler`):

    data.train_files=[runs/gsm8k/data/train-00000-of-00001.parquet]
    data.sampler.class_path=pkg://gain_curate.integrations.verl
    data.sampler.class_name=GainCurriculumSampler
    data.dataloader_num_workers=0        # verl asserts this for curriculum samplers
    +data.gain.sigma=1000 +data.gain.seed=0   # optional: mu0 n alpha beta adj_min adj_max
    +data.gain.rank_by=learnability      # optional: angle (default), learnability, length

verl 0.8+ removed that hook upstream; a custom dataset follows the plan instead and hears
each step's results through `on_batch_end`:

    data.custom_cls.path=pkg://gain_curate.integrations.verl
    data.custom_cls.name=GainRLHFDataset
    data.shuffle=False data.dataloader_num_workers=0
    trainer.use_v1=false                 # verl 0.9+: only the v0 trainer calls on_batch_end

One schedule epoch is one training step: B = data.gen_batch_size or data.train_batch_size
prompts drawn at the current mu; after the step, accuracy (the reward's `acc`, else
token_level_scores.sum(-1) > 0) moves mu. No angle term: verl's actor runs in Ray workers
this process cannot hook, so none is measured and the offline score is never used in its
place. Each step is logged as one `gain-curate step ...` line, and as gain/* metrics in
verl's logger on the sampler path (through the one shim below: verl 0.5-0.7 offer a
sampler no way to report metrics). Rows are identified by extra_info["gain_uid"], the one
per-row field that reaches the trainer's batch in every verl version.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Mapping
from types import FrameType
from typing import Any

import numpy as np

try:
    from verl.utils.dataset.rl_dataset import RLHFDataset
except ModuleNotFoundError as e:  # verl itself absent (not one of its own imports): one line
    if e.name != "verl":
        raise
    raise ImportError(
        "gain_curate.integrations.verl runs inside verl's own environment, and this Python "
        "has no verl: install verl 0.5 to 0.9 there (pip install 'verl>=0.5,<0.10')"
    ) from None

from gain_curate.curriculum.schedule import GainSchedule
from gain_curate.curriculum.state import NoState, ScheduleState
from gain_curate.integrations._common import (
    build_schedule,
    offline_scores,
    per_prompt,
    rank_by_of,
    rank_keys,
    schedule_params,
    step_metrics,
)

try:  # verl 0.5-0.7
    from verl.experimental.dataset.sampler import AbstractCurriculumSampler
except ImportError:  # verl 0.8+, or verl absent: the sampler class is not defined
    AbstractCurriculumSampler = None  # type: ignore[assignment,misc]


def batch_results(batch: Any) -> tuple[list[str], list[float]]:
    """A verl DataProto after the reward -> per-prompt (gain_uid, fraction correct)."""
    nt = batch.non_tensor_batch
    uids = [e["gain_uid"] for e in nt["extra_info"]]
    if "acc" in nt:
        correct = np.asarray(nt["acc"], dtype=np.float64)
    else:
        correct = (batch.batch["token_level_scores"].sum(-1) > 0).float().cpu().numpy()
    return per_prompt(uids, correct.clip(0.0, 1.0).tolist())


def _batch_size(data_config: Mapping[str, Any]) -> int:
    return int(data_config.get("gen_batch_size") or data_config["train_batch_size"])


def _gain_cfg(data_config: Mapping[str, Any]) -> Mapping[str, Any] | None:
    g = data_config.get("gain")
    if g is not None and not isinstance(g, dict):  # OmegaConf DictConfig -> plain dict
        from omegaconf import OmegaConf

        g = OmegaConf.to_container(g, resolve=True)
    return g


class _Follower:
    """The state both adapters share: the schedule, row mapping, and lazy drawing.

    Open loop by default: after B draws the next draw starts a new epoch, so a step whose
    results never came still advances. verl 0.9's V1 replay buffer closes the loop
    (`close_loop`): then the step's results end the epoch, and draws past B (prompts that
    replace groups DAPO filtered out) continue the same epoch's order."""

    def __init__(self, frame: Any, data_config: Mapping[str, Any]) -> None:
        b = _batch_size(data_config)
        gain = _gain_cfg(data_config) or {}
        params = schedule_params(gain, b)
        scores = offline_scores(frame, float(gain.get("inter_weight", 1.0)))
        rank_by = rank_by_of(gain)  # the order the schedule draws over (_common)
        self.schedule, self.rows = build_schedule(
            frame["extra_info"], scores, params, rank_by, rank_keys(frame, rank_by), gain
        )
        self.batch_size = b
        self.length = (len(self.rows) // b) * b  # constant: verl derives its step count from it
        self.closed_loop = False

    def close_loop(self) -> None:
        self.closed_loop = True

    def next_row(self) -> int:
        """The dataset row of the next draw: O(1), the epoch's order is planned once."""
        s = self.schedule
        if (s.consumed >= self.batch_size and not self.closed_loop) or s.consumed >= s.n_prompts:
            s.end_epoch(move=False)  # the step's results never came: mu stays
        return self.rows[int(s.take(1, extend=True)[0])]

    def update(self, batch: Any) -> dict[str, float]:
        return self.results(*batch_results(batch))

    def results(self, uids: list[str], correct: list[float]) -> dict[str, float]:
        """One step's per-prompt results -> the rule; gain/* metrics of the step."""
        self.schedule.observe(uids, correct)
        return step_metrics(self.schedule.end_epoch(), schedule=self.schedule)

    def skip(self) -> None:
        """End a step whose results never came: mu stays, next epoch."""
        self.schedule.end_epoch(move=False)


def _add_to_fit_metrics(metrics: dict[str, float], caller: FrameType | None) -> bool:
    """THE SHIM (verl 0.5-0.7): `AbstractCurriculumSampler.update(batch)` is verl's only call
    into a sampler and has no way to return metrics. Its one caller, `RayPPOTrainer.fit`,
    calls it and then `logger.log(data=metrics, ...)` on its local dict `metrics` (the
    experimental separation trainer: `self.metrics`), so gain/* joins that dict.
    tests/integrations/test_verl.py reads verl's source and fails when this stops being so."""
    if caller is None:
        return False
    target = caller.f_locals.get("metrics")
    if not isinstance(target, dict):
        target = getattr(caller.f_locals.get("self"), "metrics", None)
    if isinstance(target, dict):
        target.update(metrics)
        return True
    return False


if AbstractCurriculumSampler is not None:

    class GainCurriculumSampler(AbstractCurriculumSampler):  # type: ignore[misc,valid-type]
        """verl 0.5-0.7 curriculum sampler (`data.sampler.class_name=GainCurriculumSampler`)."""

        def __init__(self, data_source: Any, data_config: Any) -> None:
            self._f = _Follower(data_source.dataframe, data_config)

        @property
        def schedule(self) -> GainSchedule:
            return self._f.schedule

        def __len__(self) -> int:
            return self._f.length

        def __iter__(self) -> Iterator[int]:
            for _ in range(self._f.length):
                yield self._f.next_row()

        def update(self, batch: Any) -> None:
            frame = inspect.currentframe()
            _add_to_fit_metrics(self._f.update(batch), frame.f_back if frame else None)

        def state_dict(self) -> ScheduleState:
            return self._f.schedule.state_dict()

        def load_state_dict(self, state: ScheduleState) -> None:
            self._f.schedule.load_state_dict(state)


def _same_files(a: Any, b: Any) -> bool:
    def norm(x: Any) -> list[str]:
        return sorted(str(v) for v in ([x] if isinstance(x, str) else list(x or [])))

    return bool(a) and bool(b) and norm(a) == norm(b)


class GainRLHFDataset(RLHFDataset):
    """verl `data.custom_cls`: row i of an epoch is the schedule's i-th draw.

    Pass-through (plain RLHFDataset order) for the validation set, recognised by its files
    being `data.val_files`, or when `data.gain.passthrough=true`.
    """

    def __init__(
        self, data_files: Any, tokenizer: Any, config: Any, processor: Any = None, **kwargs: Any
    ) -> None:
        super().__init__(
            data_files=data_files, tokenizer=tokenizer, config=config, processor=processor, **kwargs
        )
        gain = _gain_cfg(config) or {}
        self.passthrough = bool(gain.get("passthrough")) or _same_files(
            data_files, config.get("val_files")
        )
        self._f = None if self.passthrough else _Follower(self.dataframe, config)
        if self._f is not None:
            workers = int(config.get("dataloader_num_workers") or 0)
            if workers:
                raise ValueError(
                    f"GainRLHFDataset follows a schedule that hears each step's results, but "
                    f"data.dataloader_num_workers={workers} would give each worker its own copy: "
                    "set data.dataloader_num_workers=0"
                )

    @property
    def schedule(self) -> GainSchedule | None:
        return None if self._f is None else self._f.schedule

    @property
    def follower(self) -> _Follower | None:
        """What verl 0.9's V1 replay buffer (verl_v1.py) reports each step's results to; it
        reaches this dataset as its trainer's `train_dataset`."""
        return self._f

    def __len__(self) -> int:
        return super().__len__() if self._f is None else self._f.length

    def __getitem__(self, item: int) -> dict[str, Any]:
        # RLHFDataset's row, as verl's collate_fn reads it: whatever columns the files have
        if self._f is None:
            return super().__getitem__(item)
        return super().__getitem__(self._f.next_row())

    def on_batch_end(self, batch: Any) -> None:
        if self._f is not None:
            self._f.update(batch)

    def state_dict(self) -> ScheduleState | NoState:
        """What verl's checkpoint saves with the dataloader (data.pt): the schedule's state,
        empty for a pass-through dataset."""
        return NoState() if self._f is None else self._f.schedule.state_dict()

    def load_state_dict(self, state: ScheduleState | NoState) -> None:
        if self._f is not None and state:
            self._f.schedule.load_state_dict(state)
