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

The angle term is measured online (gain_curate.online): generation's prefill runs each
step's prompts through the policy, and hooks on it compute their C_intra + w C_inter with
the weights of that step, cut into P and Q as `score` cuts them; "change" (default) feeds
the rule the shift of that value from the prompts' offline scores, "level" (paper mode) the
value itself, "off" nothing. mu, acc, ang and the online level are logged as `gain/*`.

Without this class (an IterableDataset, TRL's experimental AsyncGRPOTrainer, which iterates
its dataset in order without a sampler, or any other GRPO trainer): export the open-loop
plan, `gain-curate export OUT --format verl`, and train on OUT/export/verl/plan.parquet in
file order (`GRPOConfig(shuffle_dataset=False)`); the plan then chooses every prompt.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
from torch.utils.data import Sampler
from trl import GRPOTrainer

from gain_curate.integrations._common import (
    build_schedule,
    offline_scores,
    per_prompt,
    schedule_params,
    step_metrics,
)
from gain_curate.online import Capture, OnlineAngles, question_of
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


class GainGRPOTrainer(GRPOTrainer):
    """GRPOTrainer whose train sampler follows the GAIN-RL schedule; `gain_params` takes the
    schedule's parameters by name (sigma as a number or '0.05N', mu0, n, alpha, beta,
    adj_min, adj_max, seed, angle, at_end, mode="paper"), and `layer` / `inter_weight` for the
    online angle measurement (defaults: the last layer and 1, as `score`'s defaults; use the
    values the shards were scored with).

    The angle term is measured online: generation's prefill of each step's prompts passes
    through hooks that cut P and Q as `score` does, with the weights of that step."""

    def __init__(
        self, *args: Any, gain_params: Mapping[str, Any] | None = None, **kwargs: Any
    ) -> None:
        refuse_iterable(kwargs.get("train_dataset"))
        super().__init__(*args, **kwargs)
        refuse_iterable(self.train_dataset)
        gain = {"seed": self.args.seed, **(gain_params or {})}
        chunk = self.args.generation_batch_size // self.num_generations
        params = schedule_params(gain, chunk)
        ds = self.train_dataset
        w = float(gain.get("inter_weight", 1.0))
        self.gain_schedule, self._gain_rows = build_schedule(ds["extra_info"], offline_scores(ds, w), params)  # fmt: skip
        self.gain_angles = None
        if params.angle != "off":
            self.gain_angles = OnlineAngles(
                self.accelerator.unwrap_model(self.model), self.processing_class,
                layer=gain.get("layer"), inter_weight=w,
                render_kwargs={"tools": self.tools or None, "chat_template": self.chat_template, **self.chat_template_kwargs},
            )  # fmt: skip
        self._gain_capture: Capture | None = None
        self._gain_segments: list[Any] = []

    def _get_train_sampler(self, dataset: Any = None) -> Sampler:
        return GainRepeatSampler(
            dataset if dataset is not None else self.train_dataset,
            mini_repeat_count=self.num_generations,
            batch_size=self.args.generation_batch_size // self.num_generations,
            repeat_count=self.num_iterations * self.args.steps_per_generation,
            schedule=self.gain_schedule,
            rows=self._gain_rows,
        )

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
        """This process's measured prompts, once each: (uids, online score)."""
        cap = self._gain_capture
        if cap is None:
            return [], []
        values = cap.values
        if values is None:  # generation did not run the policy here (vLLM): one forward
            model = self.accelerator.unwrap_model(self.model)
            values = self.gain_angles.measure(model, self._gain_segments, self.processing_class.pad_token_id)  # fmt: skip
        seen: dict[str, float] = {}
        for u, v in zip(uids, values):
            if v is not None and u not in seen:
                seen[u] = v[2]
        return list(seen), list(seen.values())

    def _calculate_rewards(self, inputs: list[dict[str, Any]], *args: Any, **kwargs: Any) -> Any:
        rewards_per_func = super()._calculate_rewards(
            inputs, *args, **kwargs
        )  # gathered: (global B*G, funcs)
        if self.model.training:
            from accelerate.utils import gather_object

            local = [x["extra_info"]["gain_uid"] for x in inputs]
            uids = gather_object(local)
            weights = self.reward_weights.to(rewards_per_func.device).unsqueeze(0)
            correct = ((rewards_per_func * weights).nansum(dim=1) > 0).float().tolist()
            self.gain_schedule.observe(*per_prompt(uids, correct))
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
