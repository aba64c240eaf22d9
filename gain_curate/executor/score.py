"""Scoring one part: the planned batches of a prepared run through the truncated model,
reduced to C_intra, C_inter and the score (docs/design.md). Pure compute; the launcher
(launch.py) decides which process scores which part and the store writes it.

    prep = load_prepared(out)
    lm = load_model_for(prep, device)
    scored = score_part(prep, lm, part=3)   # records.ScoredPart: table, stats, states

With cfg.keep_states, `scored.states` holds the part's hidden states by input row, float16; else
None: at the scored layer `question_mean` and `last_token` (prefill.pooled_states: the mean
of the question tokens' MLP inputs and the MLP input at the question's last token), and per
probe layer k `prompt_end@L<k>` (prompt_end.py: the residual stream after k layers at the
last token of the whole prompt). The store writes them beside the part
(OUT/.gain-curate/states/) and the merge gathers them into OUT/states.npz.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from gain_curate.errors import ModelError
from gain_curate.executor.prepared import Prepared
from gain_curate.executor.records import ScoredPart
from gain_curate.scoring.config import (
    ScoreConfig,
    ScoreResult,
    config_dict,
    config_from_dict,
)

__all__ = [
    "ScoreConfig",
    "ScoreResult",
    "config_dict",
    "config_from_dict",
    "load_model_for",
    "score_part",
]


def load_model_for(prep: Prepared, device: str) -> Any:
    """The truncated model on this worker's device, in the run's dtype and placement."""
    import torch

    from gain_curate.runtime.models import resolve_model
    from gain_curate.runtime.truncated import load_model

    ref = resolve_model(prep.cfg.model)
    return load_model(
        ref,
        dtype=prep.runtime.torch_dtype(),
        device=torch.device(device),
        layer=prep.cfg.layer,
        split=prep.runtime.placement == "split",
    )


def score_part(
    prep: Prepared,
    lm: Any,
    part: int,
    on_batch: Callable[[int, int], None] = lambda prompts, tokens: None,
) -> ScoredPart:
    """Score one part's batches: its record.ScoredRows as a table, the prefill stats, and
    the pooled states by input row (None unless cfg.keep_states). on_batch(prompts, tokens)
    after each batch."""
    import torch

    from gain_curate.scoring.angles import angle_scores
    from gain_curate.scoring.batching import RowTooLarge
    from gain_curate.scoring.prefill import PrefillStats, run_plan
    from gain_curate.scoring.probe_layers import run_probe_layers
    from gain_curate.scoring.record import ScoredRows

    batches = prep.part_batches(part)
    segs = prep.segments
    stats = PrefillStats()
    rows: list[int] = []
    score: list[float] = []
    c_intra: list[float] = []
    c_inter: list[float] = []
    keep = prep.cfg.keep_states
    pooled: list[Any] = []
    run = run_plan(
        lm,
        segs,
        prep.prefix_ids,
        batches,
        token_budget=prep.runtime.token_budget,
        pad_id=prep.pad_id,
        kernel=prep.runtime.kernel,
        on_batch=on_batch,
        stats=stats,
        keep_states=keep,
        probe_layers=run_probe_layers(prep.cfg, prep.model_info),
    )
    try:
        for b in run:
            p = torch.tensor([segs[k].p for k in b.indices])
            q = torch.tensor([segs[k].q for k in b.indices])
            a = angle_scores(b.s_q, q, b.s_p, p, prep.cfg.inter_weight)
            rows += b.indices
            score += a.score.tolist()
            c_intra += a.c_intra.tolist()
            c_inter += a.c_inter.tolist()
            if keep:
                pooled.append(b.states.numpy())
    except RowTooLarge as e:
        raise ModelError(
            f"input row {e.key} ({e.tokens} tokens up to the end of its question) does not fit in "
            f"{lm.device} memory even alone: lower `max_tokens` (now {prep.cfg.max_tokens}) to "
            "skip rows that long, or score on a device with more memory"
        ) from None
    order = np.argsort(rows, kind="stable")
    rows = [rows[i] for i in order]
    values = {
        name: np.asarray(v, dtype=np.float64)[order]
        for name, v in (("score", score), ("c_intra", c_intra), ("c_inter", c_inter))
    }
    finite = np.isfinite(values["score"])
    for v in values.values():
        v[~finite] = np.nan
    scored = ScoredRows(
        row=np.asarray(rows, dtype=np.int64),
        **values,
        tokens_prefix=np.array([segs[k].p for k in rows], dtype=np.int64),
        tokens_question=np.array([segs[k].q for k in rows], dtype=np.int64),
        reason=[None if ok else "non_finite_hidden_states" for ok in finite],
    )
    states = _states_by_row(prep, pooled, rows, order) if keep else None
    return ScoredPart(scored.to_table(), stats, prep.runtime.token_budget, states)


def _states_by_row(
    prep: Prepared, pooled: list[np.ndarray], rows: list[int], order: np.ndarray
) -> dict[str, np.ndarray]:
    """The part's (B, 2 + K, d) float16 batch states, in input-row order, by feature name."""
    from gain_curate.scoring.probe_layers import state_features

    d, names = prep.model_info.hidden_size, state_features(prep.cfg, prep.model_info)
    every = np.concatenate(pooled)[order] if pooled else np.zeros((0, len(names), d), np.float16)
    states = {"row": np.asarray(rows, dtype=np.int64)}
    states.update({name: every[:, j] for j, name in enumerate(names)})
    return states
