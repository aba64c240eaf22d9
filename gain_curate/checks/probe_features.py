"""The learnability probes' features in `validate --rollouts`: the sampled prompts' pooled
prefill states at the scored and the middle layer; and the fitted probes, saved as
OUT/probes/<features>.npz."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from gain_curate.checks.probe import ProbeFit
    from gain_curate.executor.score import ScoreConfig
    from gain_curate.runfolder.run import Run


def middle_layer(num_layers: int) -> int:
    return num_layers // 2


def probe_features(
    cfg: ScoreConfig, scored: Run, given: bool, picked: list[int], shape: Any
) -> dict[str, np.ndarray]:
    """The probes' features for the sampled prompts, by name ("last_token@L23"): the pooled
    prefill states (question_mean, last_token: prefill.pooled_states) at the scored layer
    and at the middle layer, exactly as `score --keep-states` stores them. `scored` is the
    run the sample's scores came from: the user's run (`given`) or validate's own OUT/score.
    The scored layer's come from the given run's OUT/states.npz when it kept them, else from
    scoring the sample with --keep-states (validate's own score pass already did); the
    middle layer's from scoring the sample at that layer (OUT/score-L<k>/)."""
    from dataclasses import replace

    from gain_curate.checks.predict import KINDS
    from gain_curate.executor.launch import run_score
    from gain_curate.runfolder.run import open_run

    def sample_states(layer: int, folder: Path) -> dict[str, np.ndarray]:
        if not given and layer == shape.layer:  # validate's own score pass kept them
            return _rows_of(scored.states(), range(len(picked)))
        run_score(replace(cfg, layer=layer, out=folder, keep_states=True))
        return _rows_of(open_run(folder).states(), range(len(picked)))

    out: dict[str, np.ndarray] = {}
    mid = middle_layer(shape.num_layers)
    for layer in dict.fromkeys((shape.layer, mid)):
        kept = scored.manifest.states if given else None
        if kept is not None and int(kept.layer) == layer:
            st = _rows_of(scored.states(), picked)
        else:
            st = sample_states(
                layer, cfg.out if layer == shape.layer else cfg.out.with_name(f"score-L{layer}")
            )
        out.update({f"{k}@L{layer}": st[k] for k in KINDS})
    return out


def _rows_of(states: dict[str, np.ndarray], rows: Any) -> dict[str, np.ndarray]:
    """The pooled states of the given input rows (a states.npz's `row`), in that order, fp32."""
    at = {int(r): i for i, r in enumerate(states["row"])}
    out = {}
    for k in ("question_mean", "last_token"):
        v = np.full((len(rows), states[k].shape[1]), np.nan, np.float32)  # NaN: no states
        for j, r in enumerate(rows):
            if int(r) in at:
                v[j] = states[k][at[int(r)]]
        out[k] = v
    return out


def save_probes(folder: Path, probes: dict[str, ProbeFit]) -> dict[str, str]:
    """Each probe as OUT/probes/<features>.npz (gain-curate predict reads it); name -> path."""
    return {name: str(fit.save(folder / f"{name}.npz")) for name, fit in probes.items()}
