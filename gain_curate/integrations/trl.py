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
rank moves mu identically and draws the same plan. A completion counts as correct when its
weighted reward is > 0. The dataloader prefetches one batch, so a result moves mu for the
batch after next (the draw counter, not mu, keys each batch's random stream).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from torch.utils.data import Sampler
from trl import GRPOTrainer

from gain_curate.integrations._common import build_schedule, per_prompt, schedule_params
from gain_curate.schedule import GainSchedule


class GainRepeatSampler(Sampler[int]):
    """RepeatSampler's contract with the curriculum choosing each chunk's prompts."""

    def __init__(self, data_source: Any, mini_repeat_count: int, batch_size: int, repeat_count: int,
                 schedule: GainSchedule, rows: list[int]) -> None:  # fmt: skip
        self.data_source = data_source
        self.mini_repeat_count, self.batch_size, self.repeat_count = (
            mini_repeat_count,
            batch_size,
            repeat_count,
        )
        self.schedule, self.rows = schedule, rows
        self.draws = 0  # chunks drawn so far: keys the random stream of each chunk

    def __len__(self) -> int:
        return (
            (len(self.rows) // self.batch_size)
            * self.batch_size
            * self.mini_repeat_count
            * self.repeat_count
        )

    def __iter__(self) -> Iterator[int]:
        for _ in range(len(self.rows) // self.batch_size):
            chunk = [self.rows[int(p)] for p in self.schedule.plan_epoch(epoch=self.draws)]
            self.draws += 1
            for _ in range(self.repeat_count):
                for row in chunk:
                    for _ in range(self.mini_repeat_count):
                        yield row


class GainGRPOTrainer(GRPOTrainer):
    """GRPOTrainer whose train sampler follows the GAIN-RL schedule; `gain_params` takes the
    schedule's parameters by name (sigma as a number or '0.05N', mu0, n, alpha, beta,
    adj_min, adj_max, seed)."""

    def __init__(
        self, *args: Any, gain_params: Mapping[str, Any] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        chunk = self.args.generation_batch_size // self.num_generations
        params = schedule_params({"seed": self.args.seed, **(gain_params or {})}, chunk)
        ds = self.train_dataset
        scores = ds["gain_score"] if "gain_score" in ds.column_names else None
        self.gain_schedule, self._gain_rows = build_schedule(ds["extra_info"], scores, params)

    def _get_train_sampler(self, dataset: Any = None) -> Sampler:
        return GainRepeatSampler(
            dataset if dataset is not None else self.train_dataset,
            mini_repeat_count=self.num_generations,
            batch_size=self.args.generation_batch_size // self.num_generations,
            repeat_count=self.num_iterations * self.args.steps_per_generation,
            schedule=self.gain_schedule,
            rows=self._gain_rows,
        )

    def _calculate_rewards(self, inputs: list[dict[str, Any]], *args: Any, **kwargs: Any) -> Any:
        rewards_per_func = super()._calculate_rewards(
            inputs, *args, **kwargs
        )  # gathered: (global B*G, funcs)
        if self.model.training:
            from accelerate.utils import gather_object

            uids = gather_object([x["extra_info"]["gain_uid"] for x in inputs])
            weights = self.reward_weights.to(rewards_per_func.device).unsqueeze(0)
            correct = ((rewards_per_func * weights).nansum(dim=1) > 0).float().tolist()
            self.gain_schedule.observe(*per_prompt(uids, correct))
            self.gain_schedule.end_epoch()
        return rewards_per_func
