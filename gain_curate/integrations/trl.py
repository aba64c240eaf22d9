"""TRL adapter: GRPOTrainer sampling by GAIN-RL's curriculum, fed by its own rewards.

    from gain_curate.integrations.trl import GainGRPOTrainer
    from gain_curate.curriculum.schedule import ScheduleParams
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

Checkpoints carry the schedule and the sampler's place (gain_curate_state.json in every
checkpoint folder): gain_curate.integrations.trl_state.

The angle term is measured online (gain_curate.curriculum.online): generation's prefill runs each
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

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Sampler

from gain_curate.curriculum.online import Capture, OnlineAngles, question_of
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
from gain_curate.integrations.trl_state import GainCheckpoints, GainRepeatSampler

try:
    from trl import GRPOTrainer
except ModuleNotFoundError as e:  # TRL itself absent (not one of its own imports): one line
    if e.name != "trl":
        raise
    raise ImportError(
        "gain_curate.integrations.trl needs TRL, which this Python does not have: "
        "pip install 'gain-curate[trl]' (TRL 1.16 or newer)"
    ) from None


def refuse_iterable(dataset: Any) -> None:
    """TRL 1.x feeds an IterableDataset without calling the sampler: the curriculum could
    not choose a single prompt, so say so and point at the open-loop plan instead."""
    import datasets
    import torch.utils.data

    if isinstance(dataset, datasets.IterableDataset | torch.utils.data.IterableDataset):
        raise ValueError(
            "GainGRPOTrainer needs a map-style train_dataset (TRL feeds an IterableDataset "
            "without a sampler, so the curriculum cannot choose prompts): load the shards "
            "without streaming, or train a plain "
            "GRPOTrainer(args=GRPOConfig(shuffle_dataset=False)) on "
            "OUT/export/verl/plan.parquet, the plan in order (`gain-curate export` writes it)"
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
            raise ValueError(
                f"gain_params correct_reward={choice!r} names more than one reward function: "
                "pass its index"
            )
        return list(names).index(choice)
    raise ValueError(
        f"gain_params correct_reward={choice!r} is not a reward function: "
        f"an index 0..{len(names) - 1}, "
        f"a name ({', '.join(names)}) or 'weighted'"
    )


def completion_correct(
    rewards_per_func: torch.Tensor, weights: torch.Tensor, column: int | None, threshold: float
) -> list[float | None]:
    """Per completion 1.0 / 0.0 (the chosen reward > threshold), or None where that reward is
    missing (a TRL reward function returned None: it does not apply to the row)."""
    if column is None:
        r = (rewards_per_func * weights.to(rewards_per_func.device).unsqueeze(0)).nansum(dim=1)
        r[torch.isnan(rewards_per_func).all(dim=1)] = torch.nan
    else:
        r = rewards_per_func[:, column]
    return [None if np.isnan(v) else float(v > threshold) for v in r.float().cpu().tolist()]


class GainGRPOTrainer(GainCheckpoints, GRPOTrainer):
    """GRPOTrainer whose train sampler follows the GAIN-RL schedule; `gain_params` takes the
    schedule's parameters by name (sigma as a number or '0.05N', mu0, n, alpha, beta,
    adj_min, adj_max, seed, angle, at_end, mode="paper"), `rank_by` for the order it draws
    over ("angle", the default; "learnability" after `gain-curate predict`; "length";
    "uniform"; "learnability-online" with `states`, the run folder scored with
    `--keep-states`: the pass-rate probe refit from these rewards, gain_curate.curriculum
    .learning, with `probe`, `refit_every`, `half_life`, `target`, `width`, `min_groups`),
    `layer` / `inter_weight` for the online angle measurement (defaults: the last layer and
    1, as `score`'s defaults; use the values the shards were scored with), and
    `correct_reward` / `correct_threshold` for what counts as correct (default: the first
    reward function's reward > 0; an index, a function's name as TRL logs it, or "weighted"
    for the weighted sum of all functions).

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
        self.gain_correct_column = correct_column(
            gain.get("correct_reward", 0), self.reward_func_names
        )
        self.gain_correct_threshold = float(gain.get("correct_threshold", 0.0))
        ds = self.train_dataset
        w = float(gain.get("inter_weight", 1.0))
        extra = ds["extra_info"]
        rank_by = rank_by_of(gain)
        self.gain_schedule, self._gain_rows = build_schedule(
            extra, offline_scores(ds, w), params, rank_by, rank_keys(ds, rank_by), gain
        )
        self._gain_uid_at = [extra[i]["gain_uid"] for i in self._gain_rows]  # by rank position
        self.gain_angles = None
        if params.angle != "off":
            self.gain_angles = OnlineAngles(
                self.accelerator.unwrap_model(self.model),
                self.processing_class,
                layer=gain.get("layer"),
                inter_weight=w,
                render_kwargs={
                    "tools": self.tools or None,
                    "chat_template": self.chat_template,
                    **self.chat_template_kwargs,
                },
            )
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

    # -- training

    def training_step(self, model: Any, inputs: Any, num_items_in_batch: Any = None) -> Any:
        out = super().training_step(model, inputs, num_items_in_batch)
        if self._gain_sampler is not None:
            self._gain_sampler.mark_trained()
        return out

    def _generate_and_score_completions(
        self, inputs: list[dict[str, torch.Tensor | Any]]
    ) -> dict[str, torch.Tensor | Any]:
        # TRL's own signature: the batch TRL's training step reads, as TRL returns it
        if self.gain_angles is None or not self.model.training:
            return super()._generate_and_score_completions(inputs)
        # The prefill of generation runs these prompts through the policy: measure them there.
        self._gain_segments = self.gain_angles.segments(
            [x["prompt"] for x in inputs], [question_of(x) for x in inputs]
        )
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
        missing = [
            i for i, v in enumerate(values) if v is None and i < len(segs) and segs[i] is not None
        ]
        if missing:
            model = self.accelerator.unwrap_model(self.model)
            again = self.gain_angles.measure(
                model, [segs[i] for i in missing], self.processing_class.pad_token_id
            )
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
            LOG.warning(
                "gain-curate: this generation batch is not the chunk the curriculum planned "
                "for it (a resume whose data skip did not line up?): the schedule still moves, "
                "but the draws no longer follow the uninterrupted run"
            )

    def _calculate_rewards(self, inputs: list[dict[str, Any]], *args: Any, **kwargs: Any) -> Any:
        # gathered: (global B*G, funcs)
        rewards_per_func = super()._calculate_rewards(inputs, *args, **kwargs)
        if self.model.training:
            from accelerate.utils import gather_object

            local = [x["extra_info"]["gain_uid"] for x in inputs]
            uids = gather_object(local)
            self._gain_check_chunk(uids)
            correct = completion_correct(
                rewards_per_func,
                self.reward_weights,
                self.gain_correct_column,
                self.gain_correct_threshold,
            )
            scored = [(u, c) for u, c in zip(uids, correct) if c is not None]
            if scored:
                self.gain_schedule.observe(
                    *per_prompt([u for u, _ in scored], [c for _, c in scored])
                )
            ang_uids, online = self._online_angles(local)
            ang_uids, online = gather_object(ang_uids), gather_object(online)
            # a prompt measured twice counts once
            first = dict(zip(reversed(ang_uids), reversed(online)))
            self.gain_schedule.observe_angles(list(first), list(first.values()))
            rec = self.gain_schedule.end_epoch()
            mean = float(np.mean(online)) if online else None
            for k, v in step_metrics(rec, mean, self.gain_schedule).items():
                self._metrics["train"][k].append(v)
        return rewards_per_func
