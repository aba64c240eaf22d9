"""validate's phases' inputs and outputs, typed: what it checks (ValidateRequest), the
sample (Sample), its scores (Scored), the model (Policy); what it finds: the supervised
check (Supervised), the RL side (RLSide) and the whole result (ValidateResult), each with
the JSON `validate --json` prints and OUT/validate.json's summary holds (to_json, in that
order)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from gain_curate.checks.generation import RolloutSettings
from gain_curate.inputs.template import ScoringTemplate

if TYPE_CHECKING:
    from gain_curate.checks.recommend import Recommendation
    from gain_curate.checks.rollout_stats import RolloutStats
    from gain_curate.checks.rollouts import Rollouts
    from gain_curate.checks.run_inputs import RewardRow
    from gain_curate.checks.supervised import CorrelationIntervals
    from gain_curate.runfolder.run import Run

LOSS = "mean cross-entropy of the reference solution as the assistant turn"


@dataclass(frozen=True)
class ValidateRequest:
    """What validate checks: the model, the data and how it was scored (a scored run's own
    settings with `run`, run_inputs.run_settings), the sample, and the RL side's settings."""

    model: str
    data: str
    sample: int
    layer: int | None
    out: Path
    template: ScoringTemplate
    answer_key: str | None = None
    question_key: str | None = None
    dtype: str = "float32"
    device: str = "auto"
    seed: int = 0
    inter_weight: float = 1.0
    split: str = "train"
    chat_template: str | None = None
    rollouts: RolloutSettings | None = None  # None: the supervised check only
    reward: str | None = None
    run: Path | None = None  # a scored run: its own scores of the sampled rows
    template_flags: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Sample:
    """The sampled input rows (sorted) and what validate needs of each, in that order."""

    rows: list[int]  # input row numbers
    questions: list[str]
    solutions: list[str]  # the answer column's text, before extraction
    data_source: str  # the input's data_source name (what `score` writes)
    golds: list[str] | None = None  # the reward's reference answer (rollouts only)
    reward_rows: list[RewardRow] | None = None  # what a trainer's reward reads (rollouts)
    by_input: dict[int, dict[str, Any]] | None = None  # a scored run's rows, by input row


@dataclass(frozen=True)
class Scored:
    """The sampled rows as scored: the scored run (`run`, or validate's OUT/score), its rows
    in sample order, and the conversation it scored."""

    run: Run
    rows: list[dict[str, Any]]
    template: ScoringTemplate


@dataclass(frozen=True)
class Policy:
    """The model whose gradients validate measures, on its device."""

    name: str  # the model's name, as the manifest records it
    lm: Any  # AutoModelForCausalLM
    tok: Any
    shape: Any  # runtime.truncated.ModelShape: the resolved layer, layer count, width
    device: Any  # torch.device


@dataclass(frozen=True)
class SignalColumns:
    """The scored signals of the sampled prompts (n,), NaN where a row is unscored."""

    score: np.ndarray  # gain_score
    c_intra: np.ndarray
    c_inter: np.ndarray
    q_len: np.ndarray  # question tokens

    @classmethod
    def of(cls, rows: list[dict[str, Any]]) -> SignalColumns:
        def col(name: str) -> np.ndarray:
            return np.array([np.nan if r[name] is None else r[name] for r in rows], np.float64)

        return cls(
            col("gain_score"), col("gain_c_intra"), col("gain_c_inter"), col("gain_tokens_question")
        )

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        return self.score, self.c_intra, self.c_inter, self.q_len

    def by_signal(self) -> dict[str, np.ndarray]:
        """By rollout_stats.SIGNALS name."""
        from gain_curate.checks.rollout_stats import SIGNALS

        return dict(zip(SIGNALS, self.arrays()))


@dataclass(frozen=True)
class Supervised:
    """The supervised-gradient check: what was measured, and its correlations."""

    model: str
    data: str
    sample: int
    layer: int
    seed: int
    dtype: str
    device: str
    weight: str  # layers[L].mlp.up_proj.weight
    model_revision: str | None
    inter_weight: float
    template: dict[str, Any]  # the conversation scored (ScoringTemplate.to_dict)
    correlations: dict[str, float | None]  # spearman_grad_vs_*, partial_spearman_...
    intervals: CorrelationIntervals

    def to_json(self) -> dict[str, object]:
        head = {f.name: getattr(self, f.name) for f in fields(self)[:11]}
        return {**head, "loss": LOSS, **self.correlations, **self.intervals.to_json()}


@dataclass(frozen=True)
class RLSide:
    """validate --rollouts: the rollouts, their statistics, the probes saved (name -> path),
    the recommendation (None below the nested CV's minimum) and where the time went."""

    settings: RolloutSettings
    run: Rollouts
    stats: RolloutStats
    probe_files: dict[str, str]
    recommendation: Recommendation | None
    seconds: dict[str, float]  # probe_states_and_fit, generation, rewards, grpo_gradients

    def to_json(self) -> dict[str, object]:
        return {
            "settings": asdict(self.settings),
            **self.stats.to_json(),
            "probe_files": self.probe_files,
        }

    def table_columns(self) -> dict[str, np.ndarray]:
        """validate.parquet's RL columns, per prompt."""
        rl = self.run
        return {
            "pass_rate": rl.pass_rate,
            "learnability": rl.learnability,
            "grpo_grad_norm": rl.grpo_grad_norm,
            "zero_variance": rl.zero_variance,
            "mean_completion_tokens": rl.mean_length,
            "truncated_share": rl.truncated,
        }


@dataclass(frozen=True)
class ValidateResult:
    """Everything validate found (run_validate)."""

    supervised: Supervised
    rollouts: RLSide | None
    seconds: dict[str, float]  # score, load_and_supervised_gradients, then the RL side's

    def to_json(self) -> dict[str, object]:
        out = self.supervised.to_json()
        if self.rollouts is not None:
            out["rollouts"] = self.rollouts.to_json()
            if self.rollouts.recommendation is not None:  # verdict, recommended, baselines, probe
                out.update(self.rollouts.recommendation.to_json())
        out["seconds"] = self.seconds
        return out
