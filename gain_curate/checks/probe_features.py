"""The learnability probes' features in `validate --rollouts`: the sampled prompts' pooled
prefill states at the scored and the middle layer; and the fitted probes, saved as
OUT/probes/<features>.npz."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def middle_layer(num_layers: int) -> int:
    return num_layers // 2


def probe_features(
    cfg: Any, run: Path | None, picked: list[int], shape: Any, manifest: dict[str, Any]
) -> dict[str, np.ndarray]:
    """The probes' features for the sampled prompts, by name ("last_token@L23"): the pooled
    prefill states (question_mean, last_token: prefill.pooled_states) at the scored layer
    and at the middle layer, exactly as `score --keep-states` stores them. The scored
    layer's come from the run's OUT/states.npz when it kept them, else from scoring the
    sample with --keep-states (validate's own score pass already did); the middle layer's
    from scoring the sample at that layer (OUT/score-L<k>/)."""
    from dataclasses import replace

    from gain_curate.checks.predict import KINDS
    from gain_curate.executor.launch import run_score
    from gain_curate.runfolder import store

    def sample_states(layer: int, folder: Path) -> dict[str, np.ndarray]:
        if run is None and layer == shape.layer:  # validate's own score pass kept them
            m, folder = manifest, cfg.out
        else:
            m = run_score(replace(cfg, layer=layer, out=folder, keep_states=True)).manifest
        return _rows_of(store.read_npz(folder / m["states"]["path"]), range(len(picked)))

    out: dict[str, np.ndarray] = {}
    mid = middle_layer(shape.num_layers)
    for layer in dict.fromkeys((shape.layer, mid)):
        kept = manifest.get("states") if run is not None else None
        if kept is not None and int(kept["layer"]) == layer:
            st = _rows_of(store.read_npz(run / kept["path"]), picked)
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


def save_probes(folder: Path, probes: dict[str, Any]) -> dict[str, str]:
    """Each probe as OUT/probes/<features>.npz (gain-curate predict reads it); name -> path."""
    return {name: str(fit.save(folder / f"{name}.npz")) for name, fit in probes.items()}
