"""`validate --run OUT --pass-rate-key KEY | --pass-rates FILE`: calibrate from pass rates
the user already has. Nothing is generated and no model is loaded: the features are the
run's own kept states (OUT/states.npz, `score --keep-states`) for every row with a pass
rate, so the supervised-gradient check (which needs the model) is not run in this mode.

Candidates: every array of states.npz but `row` and `gain_uid`, named `name@L<layer>`
(question_mean and last_token at the scored layer; prompt_end@L<k> as kept). The probe,
its figures and the recommendation: recommend.py; every ranking against the same pass
rates (Spearman, partial Spearman given length, AUROC, what the curriculum serves):
rankings.compare_rankings.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from gain_curate.checks import pass_rates as pr
from gain_curate.errors import InputError

ID_ARRAYS = ("row", "gain_uid")


def state_features(states: dict[str, np.ndarray], layer: int) -> dict[str, np.ndarray]:
    """Candidate feature sets of a states.npz: `name` when it names its layer, else
    `name@L<layer>` (the scored layer's pooled states); (N, d) float32 each."""
    out = {}
    for k, v in states.items():
        if k in ID_ARRAYS or v.ndim != 2:
            continue
        out[k if "@" in k else f"{k}@L{layer}"] = v.astype(np.float32)
    return out


def kept_states(run: Path, manifest: dict[str, Any]) -> dict[str, np.ndarray]:
    """The run's states.npz, checked against its manifest; one line when it kept none."""
    from gain_curate.runfolder import store

    kept = manifest.get("states")
    if kept is None:
        raise InputError(
            f"{run} kept no hidden states, which calibration reads: score it again with "
            "`keep_states` (the shards stay the same bytes), or generate pass rates with "
            "`rollouts` K"
        )
    path = run / kept["path"]
    if not path.is_file() or store.file_sha256(path) != kept["sha256"]:
        raise InputError(
            f"{path} is missing or is not the file the manifest lists: score again with "
            "`keep_states`"
        )
    return store.read_npz(path)


def run_calibrate(
    run: Path,
    out: Path,
    *,
    pass_rate_key: str | None,
    pass_rates_file: Path | None,
    k_key: str | None = None,
    sample: int | None = None,
    seed: int = 0,
    refits: int | None = None,
    hooks: Any = None,
) -> dict[str, Any]:
    """Everything `validate --json` prints in this mode (module docstring); writes
    OUT/validate.json, OUT/validate.parquet and OUT/probes/."""
    import pyarrow as pa

    from gain_curate.checks import nested
    from gain_curate.checks.probe import fitted_on
    from gain_curate.checks.rankings import compare_rankings, signal_rankings
    from gain_curate.checks.recommend import recommend
    from gain_curate.curriculum.export import ranked_table
    from gain_curate.runfolder import store

    clock = time.perf_counter()
    manifest = store.read_manifest(run)
    states = kept_states(run, manifest)
    rows = ranked_table(run).to_pylist()
    if pass_rates_file is not None:
        rates = pr.from_file(pass_rates_file, rows, pass_rate_key, k_key)
    else:
        assert pass_rate_key is not None
        rates = pr.from_rows(rows, pass_rate_key, k_key, f"the rows of {run}")
    feats = state_features(states, int(manifest["states"]["layer"]))
    at = {u: i for i, u in enumerate(states["gain_uid"].tolist())}
    num = lambda k: np.array([np.nan if r[k] is None else r[k] for r in rows], np.float64)  # noqa: E731
    length, angle = num("gain_tokens_question"), num("gain_score")
    c_intra, c_inter = num("gain_c_intra"), num("gain_c_inter")
    srow = np.array([at.get(r["gain_uid"], -1) for r in rows])
    ok = np.isfinite(rates.rate) & (srow >= 0) & np.isfinite(length) & np.isfinite(angle)
    for v in feats.values():
        ok[ok] &= np.isfinite(v[srow[ok]]).all(1)
    use = np.flatnonzero(ok)
    if sample is not None and sample < len(use):
        use = np.sort(np.random.default_rng(seed).choice(use, size=sample, replace=False))
    if len(use) < 2 * nested.FOLDS * 2:
        raise InputError(
            f"{len(use)} rows of {run} have a pass rate and kept states: the nested "
            f"cross-validation needs at least {4 * nested.FOLDS}; give pass rates for more rows"
        )
    p = rates.rate[use]
    x = {k: v[srow[use]] for k, v in feats.items()}
    steps = refits if refits is not None else nested.REFITS
    advance = hooks.add("refitting the nested CV (bootstrap)", steps) if hooks else None
    rec = recommend(
        x,
        p,
        length[use],
        angle[use],
        probes_dir=out / "probes",
        meta={"fitted_on": fitted_on(manifest), "pass_rates": rates.source},
        seed=seed,
        refits=steps,
        advance=advance or (lambda k: None),
    )
    fit = rec.pop("probe_fit")
    zv = (p <= 0) | (p >= 1)
    signals = {
        "gain_score": angle[use],
        "c_intra": c_intra[use],
        "c_inter": c_inter[use],
        "question_tokens": length[use],
    }
    rl = {"pass_rate": p, "zero_variance": zv, "learnability": p * (1 - p)}
    ranked = compare_rankings(
        signal_rankings(signals, {"nested CV": fit}),
        rl,
        length=length[use],
        n_run=len(rows),
        seed=seed,
        probes={"nested CV": fit},
    )
    k = rates.k[use]
    result = {
        "mode": "pass rates (no generation, no model load)",
        "run": str(run),
        "model": manifest["model"].get("name"),
        "sample": len(use),
        "seed": seed,
        "pass_rates": {
            "source": rates.source,
            "rows_with_rate": int(np.isfinite(rates.rate).sum()),
            "rows_used": len(use),
            "unmatched_lines": rates.unmatched,
            "mean": float(p.mean()),
            "zero_variance_share": float(zv.mean()),
            "k": None
            if not np.isfinite(k).any()
            else {"min": float(np.nanmin(k)), "max": float(np.nanmax(k))},
        },
        "verdict": rec.pop("verdict"),
        **{key: rec[key] for key in ("recommended", "baselines", "probe")},
        "rankings": {key: v for key, v in ranked.items() if key != "verdict"},
        "supervised_gradients": "not run: calibrating from given pass rates loads no model",
        "seconds": {"calibrate": round(time.perf_counter() - clock, 1)},
    }
    table = {
        "gain_uid": [rows[i]["gain_uid"] for i in use],
        "gain_rank": [rows[i]["gain_rank"] for i in use],
        "pass_rate": p,
        "pass_rate_k": k,
        "probe_heldout_pass_rate": rec["heldout"],
        "gain_score": angle[use],
        "question_tokens": length[use],
    }
    store.write_table_atomic(pa.table(table), out, Path("validate.parquet"))
    jsonable = {
        c: [
            None if isinstance(v, float) and not np.isfinite(v) else v
            for v in np.asarray(vals).tolist()
        ]
        for c, vals in table.items()
    }
    store.write_bytes_atomic(
        out / "validate.json",
        json.dumps({"summary": result, "rows": jsonable}, indent=1).encode(),
    )
    return result


def recommend_sampled(
    features: dict[str, np.ndarray],
    signals: dict[str, np.ndarray],
    p: np.ndarray,
    *,
    out: Path,
    meta: dict[str, Any],
    seed: int,
) -> dict[str, Any]:
    """`validate --rollouts`' recommended / baselines / probe / verdict (recommend.py) over
    the sampled prompts whose every feature, length and score is finite ({} below the
    nested cross-validation's minimum)."""
    from gain_curate.checks import nested
    from gain_curate.checks.recommend import recommend

    length, angle = signals["question_tokens"], signals["gain_score"]
    ok = np.isfinite(p) & np.isfinite(length) & np.isfinite(angle)
    for v in features.values():
        ok &= np.isfinite(v).all(1)
    if ok.sum() < 4 * nested.FOLDS:
        return {}
    rec = recommend(
        {k: v[ok] for k, v in features.items()},
        p[ok],
        length[ok],
        angle[ok],
        probes_dir=out / "probes",
        meta=meta,
        seed=seed,
    )
    return {k: rec[k] for k in ("verdict", "recommended", "baselines", "probe")}


def sampled_states(run: Path, manifest: dict[str, Any], picked: list[int]) -> dict[str, Any]:
    """Every kept array of the run (state_features) at the given input rows, in that order;
    NaN rows where the run kept none."""
    states = kept_states(run, manifest)
    at = {int(r): i for i, r in enumerate(states["row"])}
    out = {}
    for name, v in state_features(states, int(manifest["states"]["layer"])).items():
        got = np.full((len(picked), v.shape[1]), np.nan, np.float32)
        for j, r in enumerate(picked):
            if int(r) in at:
                got[j] = v[at[int(r)]]
        out[name] = got
    return out
