"""validate --rollouts' phase: the rollouts of the sampled prompts (rollouts.py), the
learnability probes over their pooled states (probe_features.py, probe.py), every ranking
against the rollouts (rollout_stats.py) and which ranking to train on (calibrate.py's
recommend_sampled: nested CV over the sample's states plus every array the run kept)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from gain_curate.checks import run_inputs
from gain_curate.checks.validate_types import (
    Policy,
    RLSide,
    Sample,
    Scored,
    SignalColumns,
    ValidateRequest,
)

if TYPE_CHECKING:
    from gain_curate.executor.score import ScoreConfig


def rl_side(
    req: ValidateRequest,
    sample: Sample,
    scored: Scored,
    policy: Policy,
    cfg: ScoreConfig,
    cols: SignalColumns,
) -> RLSide:
    """Rollouts, probes, statistics and the recommendation for the sampled prompts."""
    from gain_curate.checks.calibrate import recommend_sampled, sampled_states
    from gain_curate.checks.probe import fit_probes, fitted_on
    from gain_curate.checks.probe_features import probe_features, save_probes
    from gain_curate.checks.rollout_stats import rollout_statistics
    from gain_curate.checks.rollouts import run_rollouts

    assert req.rollouts is not None and sample.golds is not None
    rl = run_rollouts(
        policy.lm,
        policy.tok,
        trainer_chats(scored),
        sample.golds,
        settings=req.rollouts,
        reward=req.reward,
        layer=policy.shape.layer,
        folder=req.out / "rollouts",
        model_revision=scored.run.manifest.model.revision,
        rows=trainer_rows(scored, sample),
    )
    signals = cols.by_signal()
    clock = time.perf_counter()
    given = req.run is not None
    features = probe_features(cfg, scored.run, given, sample.rows, policy.shape)
    # the run whose states they are (its model, template, conversation): predict checks it
    made_by = fitted_on(scored.run.manifest)
    probes = fit_probes(features, rl.pass_rate, seed=req.seed, fitted_on=made_by)
    saved = save_probes(req.out / "probes", probes)
    seconds = {"probe_states_and_fit": round(time.perf_counter() - clock, 1)}
    n_run = run_inputs.run_rows(scored.run) if given else None
    stats = rollout_statistics(signals, rl, probes=probes, n_run=n_run, seed=req.seed)
    if given and scored.run.manifest.states is not None:  # + every kept array (prompt_end@L<k>)
        features.update(sampled_states(scored.run, sample.rows))
    meta = {"fitted_on": made_by, "pass_rates": "validate --rollouts"}
    rec = recommend_sampled(features, signals, rl.pass_rate, out=req.out, meta=meta, seed=req.seed)
    seconds.update(rl.seconds)  # generation, rewards, GRPO gradients
    return RLSide(req.rollouts, rl, stats, saved, rec, seconds)


def trainer_chats(scored: Scored) -> list[list[dict[str, str]]]:
    """The trainer's conversation, the output's `prompt`: by default the very conversation
    scored (system prompt, few-shot, question, instruction; or the row's own chat)."""
    return [
        [{"role": m["role"], "content": m["content"]} for m in r["prompt"]] for r in scored.rows
    ]


def trainer_rows(scored: Scored, sample: Sample) -> list[dict[str, Any]]:
    """Each row as the trainer's reward gets it (TRL passes every column): the scored row but
    its prompt, with data_source and reward_model as run_inputs.reward_rows read them."""
    assert sample.reward_rows is not None
    return [
        {**{c: v for c, v in row.items() if c != "prompt"}, **extra}
        for row, extra in zip(scored.rows, sample.reward_rows)
    ]
