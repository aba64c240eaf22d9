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
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from gain_curate.checks import pass_rates as pr
from gain_curate.errors import InputError

if TYPE_CHECKING:
    from gain_curate.checks.rankings import RankingTable
    from gain_curate.checks.recommend import Recommendation
    from gain_curate.runfolder.run import Run

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


def kept_states(run: Run) -> dict[str, np.ndarray]:
    """The run's states.npz, checked against its manifest; one line when it kept none."""
    from gain_curate.runfolder import store

    kept = run.manifest.states
    if kept is None:
        raise InputError(
            f"{run.out} kept no hidden states, which calibration reads: score it again with "
            "`keep_states` (the shards stay the same bytes), or generate pass rates with "
            "`rollouts` K"
        )
    path = run.out / kept.path
    if not path.is_file() or store.file_sha256(path) != kept.sha256:
        raise InputError(
            f"{path} is missing or is not the file the manifest lists: score again with "
            "`keep_states`"
        )
    return store.read_npz(path)


@dataclass(frozen=True)
class Calibrated:
    """The run's rows calibration uses (`use`, indices into `rows`, the run's rows in rank
    order): a pass rate, kept states and finite length and score; their columns there."""

    rows: list[dict[str, Any]]
    rates: pr.PassRates  # per row of `rows`
    use: np.ndarray
    x: dict[str, np.ndarray]  # feature name -> (len(use), d)
    length: np.ndarray
    angle: np.ndarray
    c_intra: np.ndarray
    c_inter: np.ndarray

    @property
    def p(self) -> np.ndarray:
        return self.rates.rate[self.use]

    def signals(self) -> dict[str, np.ndarray]:
        return {
            "gain_score": self.angle,
            "c_intra": self.c_intra,
            "c_inter": self.c_inter,
            "question_tokens": self.length,
        }


@dataclass(frozen=True)
class Calibration:
    """Everything `validate --json` prints in this mode (to_json, in its order)."""

    run: Path
    model: str | None
    seed: int
    rates: dict[str, object]  # validate.json's pass_rates: source, counts, mean, k
    recommendation: Recommendation
    rankings: RankingTable
    seconds: float

    def to_json(self) -> dict[str, object]:
        rec = self.recommendation.to_json()
        return {
            "mode": "pass rates (no generation, no model load)",
            "run": str(self.run),
            "model": self.model,
            "sample": self.rates["rows_used"],
            "seed": self.seed,
            "pass_rates": self.rates,
            **rec,
            "rankings": {k: v for k, v in self.rankings.to_json().items() if k != "verdict"},
            "supervised_gradients": "not run: calibrating from given pass rates loads no model",
            "seconds": {"calibrate": self.seconds},
        }


def run_calibrate(
    run_dir: Path,
    out: Path,
    *,
    pass_rate_key: str | None,
    pass_rates_file: Path | None,
    k_key: str | None = None,
    sample: int | None = None,
    seed: int = 0,
    refits: int | None = None,
) -> Calibration:
    """Calibrate from the given pass rates (module docstring); writes OUT/validate.json,
    OUT/validate.parquet and OUT/probes/."""
    from gain_curate import progress
    from gain_curate.checks import nested
    from gain_curate.checks.probe import fitted_on
    from gain_curate.checks.rankings import Targets, compare_rankings, signal_rankings
    from gain_curate.checks.recommend import recommend
    from gain_curate.runfolder.run import open_run

    clock = time.perf_counter()
    run = open_run(run_dir)
    cal = calibrated_rows(run, pass_rate_key, pass_rates_file, k_key, sample, seed)
    p = cal.p
    steps = refits if refits is not None else nested.REFITS
    rec = recommend(
        cal.x,
        p,
        cal.length,
        cal.angle,
        probes_dir=out / "probes",
        meta={"fitted_on": fitted_on(run.manifest), "pass_rates": cal.rates.source},
        seed=seed,
        refits=steps,
        advance=progress.step("refitting the nested CV (bootstrap)", steps),
    )
    zv = (p <= 0) | (p >= 1)
    ranked = compare_rankings(
        signal_rankings(cal.signals(), {"nested CV": rec.fit}),
        Targets(p, zv, p * (1 - p)),
        length=cal.length,
        n_run=len(cal.rows),
        seed=seed,
        probes={"nested CV": rec.fit},
    )
    k = cal.rates.k[cal.use]
    rates = {
        "source": cal.rates.source,
        "rows_with_rate": int(np.isfinite(cal.rates.rate).sum()),
        "rows_used": len(cal.use),
        "unmatched_lines": cal.rates.unmatched,
        "mean": float(p.mean()),
        "zero_variance_share": float(zv.mean()),
        "k": None
        if not np.isfinite(k).any()
        else {"min": float(np.nanmin(k)), "max": float(np.nanmax(k))},
    }
    seconds = round(time.perf_counter() - clock, 1)
    result = Calibration(run_dir, run.manifest.model.name, seed, rates, rec, ranked, seconds)
    write_calibration(out, result, cal)
    return result


def calibrated_rows(
    run: Run,
    pass_rate_key: str | None,
    pass_rates_file: Path | None,
    k_key: str | None,
    sample: int | None,
    seed: int,
) -> Calibrated:
    """The run's rows with a pass rate (a column of its rows, or a file), kept states and a
    finite length and score; `sample` of them (seeded) when given. One line when too few
    are left for the nested cross-validation."""
    from gain_curate.checks import nested
    from gain_curate.curriculum.export import ranked_table

    states = kept_states(run)
    rows = ranked_table(run.out).to_pylist()  # in rank order
    if pass_rates_file is not None:
        rates = pr.from_file(pass_rates_file, rows, pass_rate_key, k_key)
    else:
        assert pass_rate_key is not None
        rates = pr.from_rows(rows, pass_rate_key, k_key, f"the rows of {run.out}")
    assert run.manifest.states is not None  # kept_states checked it
    feats = state_features(states, int(run.manifest.states.layer))
    at = {u: i for i, u in enumerate(states["gain_uid"].tolist())}
    num = lambda k: np.array([np.nan if r[k] is None else r[k] for r in rows], np.float64)  # noqa: E731
    length, angle = num("gain_tokens_question"), num("gain_score")
    srow = np.array([at.get(r["gain_uid"], -1) for r in rows])
    ok = np.isfinite(rates.rate) & (srow >= 0) & np.isfinite(length) & np.isfinite(angle)
    for v in feats.values():
        ok[ok] &= np.isfinite(v[srow[ok]]).all(1)
    use = np.flatnonzero(ok)
    if sample is not None and sample < len(use):
        use = np.sort(np.random.default_rng(seed).choice(use, size=sample, replace=False))
    if len(use) < 2 * nested.FOLDS * 2:
        raise InputError(
            f"{len(use)} rows of {run.out} have a pass rate and kept states: the nested "
            f"cross-validation needs at least {4 * nested.FOLDS}; give pass rates for more rows"
        )
    x = {k: v[srow[use]] for k, v in feats.items()}
    c_intra, c_inter = num("gain_c_intra")[use], num("gain_c_inter")[use]
    return Calibrated(rows, rates, use, x, length[use], angle[use], c_intra, c_inter)


def write_calibration(out: Path, result: Calibration, cal: Calibrated) -> None:
    """OUT/validate.parquet (one row per prompt used) and OUT/validate.json."""
    import pyarrow as pa

    from gain_curate.runfolder import store

    table = {
        "gain_uid": [cal.rows[i]["gain_uid"] for i in cal.use],
        "gain_rank": [cal.rows[i]["gain_rank"] for i in cal.use],
        "pass_rate": cal.p,
        "pass_rate_k": cal.rates.k[cal.use],
        "probe_heldout_pass_rate": result.recommendation.heldout,
        "gain_score": cal.angle,
        "question_tokens": cal.length,
    }
    store.write_table_atomic(pa.table(table), out, Path("validate.parquet"))
    jsonable = {
        c: [
            None if isinstance(v, float) and not np.isfinite(v) else v
            for v in np.asarray(vals).tolist()
        ]
        for c, vals in table.items()
    }
    summary = {"summary": result.to_json(), "rows": jsonable}
    store.write_bytes_atomic(out / "validate.json", json.dumps(summary, indent=1).encode())


def recommend_sampled(
    features: dict[str, np.ndarray],
    signals: dict[str, np.ndarray],
    p: np.ndarray,
    *,
    out: Path,
    meta: dict[str, Any],
    seed: int,
) -> Recommendation | None:
    """`validate --rollouts`' recommended / baselines / probe / verdict (recommend.py) over
    the sampled prompts whose every feature, length and score is finite (None below the
    nested cross-validation's minimum)."""
    from gain_curate.checks import nested
    from gain_curate.checks.recommend import recommend

    length, angle = signals["question_tokens"], signals["gain_score"]
    ok = np.isfinite(p) & np.isfinite(length) & np.isfinite(angle)
    for v in features.values():
        ok &= np.isfinite(v).all(1)
    if ok.sum() < 4 * nested.FOLDS:
        return None
    return recommend(
        {k: v[ok] for k, v in features.items()},
        p[ok],
        length[ok],
        angle[ok],
        probes_dir=out / "probes",
        meta=meta,
        seed=seed,
    )


def sampled_states(run: Run, picked: list[int]) -> dict[str, np.ndarray]:
    """Every kept array of the run (state_features) at the given input rows, in that order;
    NaN rows where the run kept none."""
    states = kept_states(run)
    assert run.manifest.states is not None
    at = {int(r): i for i, r in enumerate(states["row"])}
    out = {}
    for name, v in state_features(states, int(run.manifest.states.layer)).items():
        got = np.full((len(picked), v.shape[1]), np.nan, np.float32)
        for j, r in enumerate(picked):
            if int(r) in at:
                got[j] = v[at[int(r)]]
        out[name] = got
    return out
