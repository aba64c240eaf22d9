"""verl 0.9+ V1 trainer (the default, `trainer.use_v1=true`): the closed loop.

The V1 trainer never calls a dataset's `on_batch_end`; its plug-in point is the replay
buffer that hands each step its finished trajectories. GainReplayBuffer is verl's own
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

The schedule's state is the dataset's state_dict, which verl's V1 checkpoint saves inside the
train dataloader's state (data.pt) when data.dataloader_num_workers=0, so a resumed run
continues the same plan. gain/* metrics join the step's metrics. Rewards must be computed
before sampling (rule-based rewards, or a reward model on its own resource pool); with a
colocated reward model the trajectories carry no score yet, and the step is reported as
unscored (no update) with one warning.
"""

from __future__ import annotations

import logging
from typing import Any

from verl.trainer.ppo.v1.replay_buffer import ReplayBuffer

from gain_curate.integrations._common import per_prompt
from gain_curate.integrations.verl import ACTIVE

LOG = logging.getLogger("gain_curate")


def trajectory_results(meta: Any) -> tuple[list[str], list[float]] | None:
    """The sampled trajectories' (gain_uid, correct) from TransferQueue, per prompt."""
    import torch
    import transfer_queue as tq

    if not meta.keys:
        return None
    try:
        data = tq.kv_batch_get(keys=meta.keys, partition_id=meta.partition_id, select_fields=["extra_info", "rm_scores"])  # fmt: skip
    except (KeyError, ValueError, RuntimeError):  # no rm_scores yet: a colocated reward model
        return None
    infos = list(data["extra_info"])
    scores = data["rm_scores"]  # per token, the score at the last position; jagged across puts
    totals = (
        torch.stack([r.sum() for r in scores.unbind(0)]) if scores.is_nested else scores.sum(-1)
    )
    uids = [(e or {}).get("gain_uid") for e in infos]
    if any(u is None for u in uids):
        return None
    return per_prompt(uids, (totals > 0).float().tolist())


class GainReplayBuffer(ReplayBuffer):
    """verl's V1 ReplayBuffer that also feeds each training step's results to the schedule."""

    def sample(self, global_steps: int, partition_id: str, batch_size: int) -> tuple[Any, dict]:
        meta, metrics = super().sample(global_steps=global_steps, partition_id=partition_id, batch_size=batch_size)  # fmt: skip
        follower = ACTIVE[0]
        if partition_id != "train" or follower is None:
            return meta, metrics
        results = trajectory_results(meta)
        if results is None:
            LOG.warning("gain-curate: step %s: trajectories carry no gain_uid/score; the schedule did not move", global_steps)  # fmt: skip
            return meta, metrics
        return meta, {**metrics, **follower.results(*results)}
