"""verl 0.9+ V1 trainer (the default, `trainer.use_v1=true`): the closed loop.

The V1 trainer never calls a dataset's `on_batch_end`; its plug-in point is the replay
buffer that hands each step its finished trajectories. GainReplayBuffer is verl's own sync
ReplayBuffer, plus one thing: after `sample()` picks the step's trajectories it reads their
`extra_info.gain_uid` and `rm_scores` from TransferQueue (a read; the trainer reads them again)
and reports per-prompt accuracy (score > 0) to the schedule that GainRLHFDataset draws from,
in the same process (the TaskRunner actor), so the next step's prompts move with mu:

    python -m verl.trainer.main_ppo \\
        data.train_files="[runs/gsm8k/data/train-00000-of-00001.parquet]" \\
        data.custom_cls.path=pkg://gain_curate.integrations.verl \\
        data.custom_cls.name=GainRLHFDataset \\
        data.shuffle=False data.dataloader_num_workers=0 \\
        trainer.v1.sampler.custom_sampler.path=pkg://gain_curate.integrations.verl_v1 \\
        trainer.v1.sampler.custom_sampler.name=GainReplayBuffer \\
        +data.gain.sigma=1000 ...

What verl hands a custom sampler (0.9.1, `PPOTrainer._build_replay_buffer`): the sampler
settings and `refill_fn`, the trainer's own `_add_prompts_to_generate`. Through that bound
method the buffer reaches its trainer: the config, and (from the first `sample()` on, once
the trainer has built it) `train_dataset`, the GainRLHFDataset whose schedule it moves. No
module globals.

DAPO dynamic sampling (`algorithm.filter_groups.enable=True`): verl gives its built-in buffer
the filter settings and batch sizes but a custom one none of them ("custom implementations
own their filtering"), which would silently turn filtering off. GainReplayBuffer resolves them
from the trainer exactly as verl does for its own buffer (`builtin_kwargs`), so verl's own
filtering code runs: zero-variance groups are evicted and replaced (2 per eviction), and the
same trajectories are kept. The replacement prompts continue the step's draw order (the same
Gaussian, without replacement). The step's accuracy counts every group rolled out for it,
kept or filtered out (or discarded as surplus): the filtered all-right groups are exactly
what tells the rule the model has outgrown these prompts, and counting only the kept
(mixed) groups would hold acc near 0.5 and mu still.

One schedule epoch is one trainer step. With `+trainer.v1.sync.parameter_sync_step=k` verl's
`PPOTrainer.step` draws the step's train_batch_size prompts once and then calls `sample()` k
times (train_batch_size / k groups each, one actor update after each): the buffer gathers the
results of all k calls and moves mu once, after the k-th. A trajectory is right when its
reward manager's `reward_extra_info.acc` says so (verl's naive manager sets it to the score),
else when its reward (`rm_scores`) is positive.

The schedule's state is the dataset's state_dict, which verl's V1 checkpoint saves inside the
train dataloader's state (data.pt) when data.dataloader_num_workers=0, so a resumed run
continues the same plan. gain/* metrics join the step's metrics. Rewards must be computed
before sampling (rule-based rewards, or a reward model on its own resource pool); with a
colocated reward model the trajectories carry no score yet, and the step is reported as
unscored (no update) with one warning. Sync trainer mode only: verl's async trainers call
methods only its async buffer has, and draw ahead of the results.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypedDict

try:
    from verl.trainer.ppo.v1.replay_buffer import ReplayBuffer
except ModuleNotFoundError as e:  # no verl, or a verl before the V1 trainer: one line
    if e.name is None or not e.name.startswith("verl"):
        raise
    raise ImportError(
        "gain_curate.integrations.verl_v1 is verl 0.9's V1 replay buffer, and this Python has "
        f"no {e.name}: install verl 0.9 (pip install 'verl>=0.9,<0.10'), or on verl 0.5-0.8 use "
        "gain_curate.integrations.verl"
    ) from None

from gain_curate.integrations._common import per_prompt
from gain_curate.integrations.verl import GainRLHFDataset, _Follower

LOG = logging.getLogger("gain_curate")
FLAGS = (
    "data.custom_cls.path=pkg://gain_curate.integrations.verl data.custom_cls.name=GainRLHFDataset"
)


class BufferKwargs(TypedDict):
    """The keywords verl's ReplayBuffer takes for DAPO filtering and batching."""

    filter_groups_metric: str | None
    sync_refill_failed_groups: bool
    train_batch_size: int
    gen_batch_size: int
    max_inflight_gen_batches: int


def builtin_kwargs(trainer: Any) -> BufferKwargs:
    """The keyword arguments verl 0.9.1's `_build_replay_buffer` gives its built-in sync
    ReplayBuffer and withholds from a custom one: DAPO's filter metric (resolved and checked
    by verl's own `_resolve_filter_groups_metric`), the batch sizes, in-flight bound, and
    failed-group refill."""
    config = trainer.config
    metric = trainer._resolve_filter_groups_metric()
    refill_failed = bool(config.trainer.v1.sampler.get("sync_refill_failed_groups", False))
    train_batch_size = config.data.train_batch_size
    inflight = (
        1 if metric is None else config.algorithm.filter_groups.get("max_inflight_gen_batches", 1)
    )
    gen = (
        1
        if metric is not None or refill_failed
        else (config.data.get("gen_batch_size", None) or train_batch_size)
    )
    return {
        "filter_groups_metric": metric,
        "sync_refill_failed_groups": refill_failed,
        "train_batch_size": train_batch_size,
        "gen_batch_size": gen,
        "max_inflight_gen_batches": inflight,
    }


def _correct(reward: Any, extra_fields: Any) -> float:
    """One trajectory right (1.0) or not: the reward manager's `acc` (what verl's naive manager
    sets from the score; DAPO's sets it apart from its penalties), else reward > 0."""
    fields = getattr(extra_fields, "data", extra_fields)  # TransferQueue may hand NonTensorData
    info = fields.get("reward_extra_info") if isinstance(fields, dict) else None
    acc = info.get("acc") if isinstance(info, dict) else None
    if acc is not None:
        return min(max(float(acc), 0.0), 1.0)
    return float(float(reward.sum()) > 0)


def trajectory_results(keys: list[str], partition_id: str) -> tuple[list[str], list[float]] | None:
    """Trajectories' (gain_uid, correct) from TransferQueue, one entry per trajectory, from the
    fields verl's agent loop writes: `extra_info` (the dataset row's), `rm_scores` (the reward
    at the last response token) and `extra_fields.reward_extra_info` (the reward manager's)."""
    import transfer_queue as tq

    if not keys:
        return [], []
    try:
        data = tq.kv_batch_get(
            keys=keys,
            partition_id=partition_id,
            select_fields=["extra_info", "rm_scores", "extra_fields"],
        )
    except (KeyError, ValueError, RuntimeError):  # no rm_scores yet: a colocated reward model
        return None
    uids = [(e or {}).get("gain_uid") for e in data["extra_info"]]
    if any(u is None for u in uids):
        return None
    scores = data["rm_scores"]  # (T,) per trajectory; nested (jagged) across puts
    rows = scores.unbind(0) if scores.is_nested else list(scores)
    return uids, [_correct(r, f) for r, f in zip(rows, data["extra_fields"], strict=True)]


class GainReplayBuffer(ReplayBuffer):
    """verl's V1 sync ReplayBuffer (with DAPO filtering when configured, as verl's own) that
    also feeds each training step's results to the schedule."""

    def __init__(
        self,
        trainer_mode: str,
        trainer_config: Any,
        max_off_policy_threshold: int | None,
        max_off_policy_strategy: str,
        sampler_kwargs: Any,
        poll_interval: float = 2.0,
        refill_fn: Callable[[int], int] | None = None,
        **kwargs: Any,
    ) -> None:
        self._trainer = getattr(refill_fn, "__self__", None)
        if getattr(self._trainer, "config", None) is None:
            raise ValueError(
                "GainReplayBuffer is built by verl's V1 trainer "
                "(trainer.v1.sampler.custom_sampler), whose refill_fn leads it to the trainer's "
                f"config and train dataset; this refill_fn ({refill_fn!r}) is no trainer's method"
            )
        if trainer_mode != "sync":
            raise ValueError(
                "GainReplayBuffer runs in verl's sync V1 trainer, "
                f"not trainer.v1.trainer_mode={trainer_mode}: set trainer.v1.trainer_mode=sync, "
                "or train on the open-loop plan in OUT/export/verl/plan.parquet (`gain-curate "
                "export` writes it)"
            )
        # verl passes a custom sampler none of these (0.9.1); should a later verl, its win
        kwargs = {**builtin_kwargs(self._trainer), **kwargs}
        # verl's step() calls sample() parameter_sync_step times (trainer_base, the same lookup)
        self.sync_steps = int((trainer_config or {}).get("parameter_sync_step", 1))
        if self.sync_steps > 1 and kwargs["filter_groups_metric"] is not None:
            raise ValueError(
                "verl's sync DAPO filter (algorithm.filter_groups.enable=True) keeps no buffer: "
                "the first of a step's sample() calls discards the step's other groups and the "
                f"next waits for groups that never come, so trainer.v1.sync.parameter_sync_step="
                f"{self.sync_steps} would hang: set it to 1, or turn filter_groups off"
            )
        super().__init__(
            trainer_mode=trainer_mode,
            trainer_config=trainer_config,
            max_off_policy_threshold=max_off_policy_threshold,
            max_off_policy_strategy=max_off_policy_strategy,
            sampler_kwargs=sampler_kwargs,
            poll_interval=poll_interval,
            refill_fn=refill_fn,
            **kwargs,
        )
        self._calls = 0  # sample() calls of the current step so far
        self._uids: list[str] = []  # the current step's trajectories, kept or cleared
        self._correct: list[float] = []
        self._scored = True

    def _follower(self) -> _Follower:
        ds = getattr(self._trainer, "train_dataset", None)
        if not isinstance(ds, GainRLHFDataset):
            raise ValueError(
                f"GainReplayBuffer reports each step to GainRLHFDataset, but the train dataset is "
                f"{type(ds).__name__}: set {FLAGS}"
            )
        if ds.follower is None:
            raise ValueError(
                "GainReplayBuffer reports each step to GainRLHFDataset, but the train dataset "
                "passes through (data.gain.passthrough=true, or data.train_files equal to "
                "data.val_files): unset it, or drop trainer.v1.sampler.custom_sampler"
            )
        return ds.follower

    def _clear_groups(self, partition_id: str, uids: set[str]) -> None:
        """verl clears a group it filters out (DAPO), or drops as surplus: read its results
        first, so the step's accuracy counts every group rolled out for it."""
        if partition_id == "train" and uids:
            keys = [k for k in self.partitions[partition_id] if k.split("_")[0] in uids]
            self._gather(trajectory_results(keys, partition_id))
        super()._clear_groups(partition_id, uids)

    def _gather(self, got: tuple[list[str], list[float]] | None) -> None:
        if got is None:
            self._scored = False
        else:
            self._uids += got[0]
            self._correct += got[1]

    def sample(self, global_steps: int, partition_id: str, batch_size: int) -> tuple[Any, dict]:
        if partition_id != "train":
            return super().sample(
                global_steps=global_steps, partition_id=partition_id, batch_size=batch_size
            )
        follower = self._follower()
        if self._calls == 0:  # the step's first sample(): its results start here
            follower.close_loop()  # this step ends with its results; refills continue its draws
            self._uids, self._correct, self._scored = [], [], True
        meta, metrics = super().sample(
            global_steps=global_steps, partition_id=partition_id, batch_size=batch_size
        )
        kept = trajectory_results(meta.keys, partition_id)
        self._gather(None if kept is not None and not kept[0] else kept)
        self._calls += 1
        if self._calls < self.sync_steps:  # more of this step to come: mu moves once, at its end
            return meta, metrics
        self._calls = 0
        if not self._scored:
            LOG.warning(
                "gain-curate: step %s: trajectories carry no gain_uid/score; "
                "the schedule did not move",
                global_steps,
            )
            follower.skip()
            return meta, metrics
        return meta, {**metrics, **follower.results(*per_prompt(self._uids, self._correct))}
