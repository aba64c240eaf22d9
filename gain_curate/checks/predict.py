"""A learnability ranking from one prefill: apply a saved pass-rate probe to a scored run.

    gain-curate score --keep-states --out runs/gsm8k ...        # + OUT/states.npz
    gain-curate validate --run runs/gsm8k --rollouts 8 ...      # fits and saves a probe
    gain-curate predict runs/gsm8k --probe probe.npz            # + gain_pred_pass, gain_learn_rank
    gain-curate schedule runs/gsm8k --rank-by learnability ...  # draws over that order

The probe (probe.py: ridge on pooled prefill states) names its features when it is fit, e.g.
"last_token@L23", "question_mean@L23+last_token@L23" or "last token, layer 23": which pooled
state (the mean of the question tokens' MLP inputs, or the MLP input at the question's last
token), at which layer, concatenated in the order named. `score --keep-states` keeps both at
the scored layer, so a probe of another layer is refused, naming the fix.

The shards are rewritten whole through the store (staged, then swapped in) with two columns
added after the others: `gain_pred_pass` (float64, the probe's predicted pass rate, as the
probe gives it: a ridge prediction may leave [0, 1]) and `gain_learn_rank` (int64, the row's
position in the learnability ranking: high p (1 - p) first, ties by gain_rank, rows without
states (unscored) last in gain_rank order). Row order (gain_rank) and every other column are
unchanged. The manifest then records the probe (path, sha256, features) and the new shard
checksums; it is replaced right after the shards (its shard paths and every column it
describes stay valid in between).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

import numpy as np
import pyarrow as pa

from gain_curate.errors import OutputError
from gain_curate.runfolder import store
from gain_curate.scoring.record import PREDICT_FIELDS

if TYPE_CHECKING:
    from gain_curate.runfolder.run import Manifest

KINDS = ("question_mean", "last_token")  # the pooled states score --keep-states keeps
_LAYER = re.compile(r"(?:@\s*L?|\blayer\s*|\bL)(-?\d+)", re.IGNORECASE)


def feature_spec(features: Any, layer: int, num_layers: int | None = None) -> list[str]:
    """A probe's feature name(s) -> the pooled states to concatenate, in order. Accepts a list
    or one string joined by '+'; each part names a kind (question_mean / mean / question;
    last_token / last) and optionally a layer (@L23, layer 23; negative counts from the end
    of `num_layers`), which must be `layer`."""
    parts = (
        list(features) if isinstance(features, (list, tuple)) else str(features or "").split("+")
    )
    kinds = []
    for part in (str(p).strip() for p in parts):
        text = part.lower().replace("_", " ")
        last, mean = "last" in text, any(w in text for w in ("mean", "question", "pool"))
        if not part or last == mean:
            raise OutputError(
                f"probe features {features!r}: cannot tell which pooled state {part!r} is "
                "(name each part question_mean@L<k> or last_token@L<k>, joined by '+')"
            )
        m = _LAYER.search(part)
        named = None if m is None else int(m.group(1))
        if named is not None and named < 0 and num_layers:
            named += num_layers
        if named is not None and named != layer:
            raise OutputError(
                f"the probe reads layer {m.group(1)}'s states ({part!r}); "
                f"this run kept layer {layer}'s: "
                f"fit the probe at layer {layer}, "
                f"or score with `layer` {m.group(1)} and `keep_states`"
            )
        kinds.append("last_token" if last else "question_mean")
    return kinds


def state_arrays(features: Any, states: dict[str, np.ndarray], layer: int) -> list[str] | None:
    """The states.npz arrays a probe's feature names read, when each names one exactly
    ("prompt_end@L16", or "last_token@L23" for the pooled `last_token` at the kept layer 23,
    as validate's calibration names them); None when a name is not of that form."""
    parts = list(features) if isinstance(features, (list, tuple)) else str(features).split("+")
    out = []
    for part in (str(p).strip() for p in parts):
        base, _, at = part.partition("@L")
        if part in states and part not in ("row", "gain_uid"):
            out.append(part)
        elif base in KINDS and base in states and at == str(layer):
            out.append(base)
        else:
            return None
    return out


def recommended_probe(folder: Path) -> Path:
    """The probe `validate` recommends in FOLDER/validate.json; one line when it recommends
    a ranking without a probe (angle, length) or holds no recommendation."""
    import json

    path = folder / "validate.json"
    try:
        rec = json.loads(path.read_text(encoding="utf-8"))["summary"]["recommended"]
    except (OSError, ValueError, KeyError, TypeError):
        raise OutputError(
            f"{path} holds no recommendation: run `gain-curate validate` with `run` RUN "
            f"`pass_rates` FILE `out` {folder} (or `pass_rate_key`, `rollouts` K) first"
        ) from None
    if not rec.get("probe"):
        raise OutputError(
            f"{path} recommends `rank_by` {rec.get('ranking')}, not a probe: nothing to "
            f"predict; train with `gain-curate schedule RUN` and `rank_by` {rec.get('ranking')}"
        )
    return Path(rec["probe"])


def load_probe(path: Path) -> tuple[Any, Any]:
    """(the probe, its feature name): probe.load if the module offers one, else ProbeFit.load."""
    from gain_curate.checks import probe

    loader = getattr(probe, "load", None) or probe.ProbeFit.load
    try:
        fit = loader(Path(path))
    except (OSError, ValueError, KeyError) as e:
        raise OutputError(
            f"cannot read the probe {path}: {e}; "
            "save one with `gain-curate validate` and `rollouts` K"
        ) from None
    names = getattr(fit, "features", None) or (getattr(fit, "meta", None) or {}).get("features")
    if not names:
        raise OutputError(
            f"the probe {path} does not say which features it reads (its `features`): "
            "refit it with this gain-curate"
        )
    return fit, names


def check_fitted_on(fit: Any, probe_path: Path, manifest: Manifest, out: Path) -> None:
    """Refuse, in one line, a probe fit on another model, revision, chat template or scoring
    conversation than the run's: its weights read other states (the hidden size and the
    layer alone do not tell)."""
    from gain_curate.checks.probe import differences, fitted_on

    fix = f"fit one on this run: `gain-curate validate --run {out} --rollouts K`"
    probe_on = (getattr(fit, "meta", None) or {}).get("fitted_on")
    if not probe_on:
        raise OutputError(
            f"the probe {probe_path} does not record the model, chat template and conversation "
            f"it was fit on, so it cannot be checked against {out}: {fix}"
        )
    if diff := differences(probe_on, fitted_on(manifest)):
        raise OutputError(f"the probe {probe_path} was fit on {'; '.join(diff)}: {fix}")


def check_not_constant(fit: Any, probe_path: Path, pred: np.ndarray) -> None:
    """Refuse, in one line, a probe that predicts one pass rate for every row: the ranking
    it would write is gain_rank in other words (ties), not learnability."""
    finite = pred[np.isfinite(pred)]
    if len(finite) == 0 or np.ptp(finite) > 1e-12 * max(1.0, float(np.abs(finite).max())):
        return
    coef = np.asarray(getattr(fit, "coef", np.ones(1)))
    why = (
        "its weights are all zero, as when every prompt it was fit on had the same pass rate"
        if not coef.any()
        else "its weights do not vary with these rows' states"
    )
    raise OutputError(
        f"the probe {probe_path} predicts the same pass rate, {finite[0]:.4g}, for all "
        f"{len(finite):,} rows ({why}): it ranks nothing, so no learnability rank was "
        "written; fit it on prompts whose pass rates differ (more prompts or more rollouts)"
    )


class Prediction(TypedDict):
    """The manifest's `prediction` entry (written to gain_manifest.json), in its order."""

    probe: str
    probe_sha256: str
    features: Any  # the probe's feature names, as it saved them
    states: list[str]
    rows_predicted: int
    columns: list[str]
    learnability: str
    pred_pass: Any  # stats.summary of the predictions (None when there are none)
    validated: Any  # the figures validate measured for the probe, when it did
    spearman_pred_pass_vs_score: float | None
    spearman_pred_pass_vs_question_tokens: float | None
    rank_by: str


def learn_ranks(pred: np.ndarray) -> np.ndarray:
    """Per rank position, its position in the learnability ranking: high p (1 - p) first
    (probe.learnability), ties by gain_rank, positions without a prediction last."""
    from gain_curate.checks.probe import learnability

    v = learnability(pred)
    key = np.where(np.isfinite(v), -v, np.inf)
    order = np.lexsort((np.arange(len(v)), key))
    ranks = np.empty(len(v), dtype=np.int64)
    ranks[order] = np.arange(len(v))
    return ranks


def predict_run(out: Path, probe_path: Path) -> Prediction:
    """Apply the probe to OUT's kept states; rewrite the shards with gain_pred_pass and
    gain_learn_rank; record it in the manifest. Returns the manifest's `prediction` entry."""
    from gain_curate.runfolder.run import open_run

    run = open_run(out)
    kept = run.manifest.states
    if kept is None:
        raise OutputError(
            f"{out} kept no hidden states: score it again with `keep_states` "
            "(the shards stay the same bytes), then predict"
        )
    path = out / kept.path
    if not path.is_file() or store.file_sha256(path) != kept.sha256:
        raise OutputError(
            f"{path} is missing or is not the file the manifest lists: "
            "score again with `keep_states`"
        )
    fit, names = load_probe(probe_path)
    check_fitted_on(fit, probe_path, run.manifest, out)
    st = store.read_npz(path)
    kinds = state_arrays(names, st, int(kept.layer))
    if kinds is None:  # older names ("last token, layer 23"): the pooled states by kind
        kinds = feature_spec(names, int(kept.layer), run.manifest.model.num_layers)
    x = np.concatenate([st[k].astype(np.float32) for k in kinds], axis=1)
    try:
        got = np.asarray(fit.predict(x), dtype=np.float64).reshape(-1)
    except ValueError as e:
        raise OutputError(
            f"the probe {probe_path} does not fit this run's states ({names}): {e}"
        ) from None
    if len(got) != len(x):
        raise OutputError(f"the probe {probe_path} gave {len(got)} predictions for {len(x)} rows")
    check_not_constant(fit, probe_path, got)
    from gain_curate.curriculum.export import ranked_table

    table = ranked_table(out)
    at = {u: i for i, u in enumerate(st["gain_uid"].tolist())}
    pred = np.array([got[at[u]] if u in at else np.nan for u in table["gain_uid"].to_pylist()])
    table = table.drop_columns([f.name for f in PREDICT_FIELDS if f.name in table.column_names])
    table = table.append_column(
        PREDICT_FIELDS[0], pa.array(pred, pa.float64(), mask=~np.isfinite(pred))
    )
    table = table.append_column(PREDICT_FIELDS[1], pa.array(learn_ranks(pred), pa.int64()))
    shards = run.manifest.shards
    rows_per_shard = shards[0].rows if shards else max(1, table.num_rows)
    shards = store.write_shards(  # the same names as before: trainer flags stay valid
        lambda a, b: table.slice(a, b - a),
        table.num_rows,
        out,
        rows_per_shard=rows_per_shard,
        split=run.manifest.input.split or "train",
    )
    record = prediction_record(probe_path, fit, names, kinds, int(kept.layer), pred, table)
    manifest = store.read_manifest(out)  # as it is now: another command may have added a section
    manifest["shards"] = [s.to_json() for s in shards]
    manifest["prediction"] = dict(record)
    store.write_manifest(out, manifest)
    return record


def prediction_record(
    probe_path: Path,
    fit: Any,
    names: Any,
    kinds: list[str],
    layer: int,
    pred: np.ndarray,
    table: pa.Table,
) -> Prediction:
    """The manifest's `prediction` entry: the probe, what it read, its predictions' summary
    and rank correlations, and how to train on the ranking it wrote."""
    from gain_curate.stats import spearman, summary

    score = np.array([np.nan if v is None else v for v in table["gain_score"].to_pylist()])
    tokens = np.array(
        [np.nan if v is None else v for v in table["gain_tokens_question"].to_pylist()]
    )
    return {
        "probe": str(Path(probe_path).resolve()),
        "probe_sha256": store.file_sha256(Path(probe_path)),
        "features": names,
        "states": [k if "@" in k else f"{k}@L{layer}" for k in kinds],
        "rows_predicted": int(np.isfinite(pred).sum()),
        "columns": [f.name for f in PREDICT_FIELDS],
        "learnability": (
            "gain_learn_rank: high p (1 - p) first (p = gain_pred_pass), ties by gain_rank, "
            "rows without states last"
        ),
        "pred_pass": summary(pred),
        # the figures validate measured for this probe (nested CV), for the plan's record
        "validated": (getattr(fit, "meta", None) or {}).get("validated"),
        "spearman_pred_pass_vs_score": spearman(pred, score),
        "spearman_pred_pass_vs_question_tokens": spearman(pred, tokens),
        "rank_by": (
            "gain-curate schedule OUT --rank-by learnability; "
            "verl +data.gain.rank_by=learnability; "
            "TRL gain_params={'rank_by': 'learnability'}"
        ),
    }
