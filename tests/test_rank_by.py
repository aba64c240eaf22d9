"""`--rank-by angle|learnability|length`: the curriculum draws over the chosen order.

A probe is applied to a run scored with --keep-states (`gain-curate predict`): the shards
gain gain_pred_pass and gain_learn_rank and keep everything else. A schedule over
learnability then draws its first epoch from the rows with the best gain_learn_rank, over
length from the shortest questions; the angle plan is the same bytes as before.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from gain_curate.checks.probe import ProbeFit, fitted_on, learnability
from gain_curate.cli import main
from gain_curate.curriculum.rank_by import order_by
from gain_curate.curriculum.schedule import ScheduleParams
from gain_curate.integrations._common import build_schedule, rank_by_of, rank_keys
from gain_curate.runfolder.run import open_run

N = 40
PLAN = ["--epochs", "3", "--batch-size", "5", "--sigma", "3", "--n", "5", "--adj-max", "5"]


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


def plan_of(out: Path) -> list[dict]:
    return pq.read_table(out / "schedule" / "plan.parquet").to_pylist()


@pytest.fixture(scope="module")
def scored(tiny_qwen2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 prompts of varied length, scored with --keep-states, and an angle plan."""
    tmp = tmp_path_factory.mktemp("rank_by")
    path = tmp / "q.jsonl"
    words = ["apples", "pears", "plums", "figs", "dates", "limes"]
    path.write_text(
        "".join(
            json.dumps(
                {
                    "question": f"What is {i} times {i + 3}?"
                    + " How many "
                    + " ".join(words[: i % 6]) * (i % 4 + 1)
                    + "?",
                    "answer": str(i),
                }
            )
            + "\n"
            for i in range(N)
        )
    )
    out = tmp / "run"
    code, text = run(
        "score",
        "--model",
        str(tiny_qwen2_dir),
        "--data",
        str(path),
        "--out",
        str(out),
        "--keep-states",
    )
    assert code == 0, text
    assert run("schedule", str(out), *PLAN)[0] == 0
    return out


@pytest.fixture(scope="module")
def probe_file(scored: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A linear probe of the last token's state at the scored layer (3), predicting pass rates
    spread over [0, 1] on this run's states."""
    st = np.load(scored / "states.npz")
    x = st["last_token"].astype(np.float64)
    coef = np.random.default_rng(0).normal(size=x.shape[1])
    z = x @ coef
    scale = z.std() * 4 or 1.0  # predictions around 0.5, about +-0.25
    fit = ProbeFit(
        coef=coef / scale,
        intercept=0.5 - float(z.mean()) / scale,
        mean=np.zeros(x.shape[1]),
        scale=np.ones(x.shape[1]),
        alpha=1.0,
        heldout=np.zeros(3),
        folds=5,
        seed=0,
        meta={
            "features": "last_token@L3",
            "target": "pass_rate",
            "fitted_on": fitted_on(open_run(scored).manifest),
        },
    )
    path = tmp_path_factory.mktemp("probe") / "probe.npz"
    fit.save(path)
    return path


@pytest.fixture(scope="module")
def predicted(scored: Path, probe_file: Path) -> Path:
    before = pq.read_table(scored / "data")
    code, text = run("predict", str(scored), "--probe", str(probe_file))
    assert code == 0, text
    after = pq.read_table(scored / "data")
    # the same rows in the same order, every other column unchanged, two columns added
    assert after.drop_columns(["gain_pred_pass", "gain_learn_rank"]).equals(before)
    assert after.schema.names == [*before.schema.names, "gain_pred_pass", "gain_learn_rank"]
    assert str(after.schema.field("gain_pred_pass").type) == "double"
    assert str(after.schema.field("gain_learn_rank").type) == "int64"
    return scored


def test_predict_writes_the_prediction_and_the_learnability_rank(
    predicted: Path, probe_file: Path
) -> None:
    t = pq.read_table(predicted / "data").to_pydict()
    pred = np.array(t["gain_pred_pass"], dtype=np.float64)
    st = np.load(predicted / "states.npz")
    fit = ProbeFit.load(probe_file)
    want = dict(zip(st["gain_uid"].tolist(), fit.predict(st["last_token"].astype(np.float64))))
    np.testing.assert_allclose(pred, [want[u] for u in t["gain_uid"]])
    learn = np.array(t["gain_learn_rank"])
    assert sorted(learn.tolist()) == list(range(N))  # a permutation of the rank positions
    v = learnability(pred)
    by_learn = v[np.argsort(learn)]
    assert np.all(np.diff(by_learn) <= 0)  # high p (1 - p) first
    m = json.loads((predicted / "gain_manifest.json").read_text())
    rec = m["prediction"]
    assert rec["features"] == "last_token@L3" and rec["rows_predicted"] == N
    assert rec["probe_sha256"] and rec["probe"] == str(probe_file.resolve())
    assert all(s["sha256"] for s in m["shards"])
    from gain_curate.runfolder.store import file_sha256

    assert [file_sha256(predicted / s["path"]) for s in m["shards"]] == [
        s["sha256"] for s in m["shards"]
    ]


def test_learnability_plan_draws_from_the_best_learnability_rows(predicted: Path) -> None:
    angle_plan = (predicted / "schedule" / "plan.parquet").read_bytes()  # made before predict
    assert run("schedule", str(predicted), *PLAN, "--rank-by", "angle")[0] == 0
    assert (predicted / "schedule" / "plan.parquet").read_bytes() == angle_plan  # default unchanged
    angle_first = [r["gain_rank"] for r in plan_of(predicted) if r["epoch"] == 0]
    code, text = run("schedule", str(predicted), *PLAN, "--rank-by", "learnability")
    assert code == 0, text
    learn = {
        r["gain_rank"]: r["gain_learn_rank"] for r in pq.read_table(predicted / "data").to_pylist()
    }
    first = [learn[r["gain_rank"]] for r in plan_of(predicted) if r["epoch"] == 0]
    assert len(first) == 5 and max(first) < 12, first  # sigma 3 around the top of that order
    drawn = [r["gain_rank"] for r in plan_of(predicted) if r["epoch"] == 0]
    assert sorted(drawn) != sorted(angle_first)  # other rows than the angle plan's top
    m = json.loads((predicted / "gain_manifest.json").read_text())
    assert m["schedule"]["rank_by"] == "learnability"
    # exports follow the plan; --rank-by only checks it
    code, text = run("export", str(predicted), "--format", "verl", "--rank-by", "angle")
    assert (
        code == 1
        and "drawn over the learnability ranking" in text
        and len(text.strip().splitlines()) == 1
    )
    code, text = run("export", str(predicted), "--format", "verl", "--rank-by", "learnability")
    assert code == 0, text
    rows = pq.read_table(predicted / "export" / "verl" / "plan.parquet").to_pylist()
    assert [r["gain_learn_rank"] for r in rows[:5]] == first
    code, text = run(
        "export",
        str(predicted),
        "--format",
        "openrlhf",
        "--epoch",
        "0",
        "--rank-by",
        "learnability",
    )
    assert code == 0, text


def test_length_plan_draws_the_shortest_questions_first(predicted: Path) -> None:
    code, text = run("schedule", str(predicted), *PLAN, "--rank-by", "length")
    assert code == 0, text
    t = pq.read_table(predicted / "data").to_pydict()
    tokens = dict(zip(t["gain_rank"], t["gain_tokens_question"]))
    first = [tokens[r["gain_rank"]] for r in plan_of(predicted) if r["epoch"] == 0]
    assert max(first) <= sorted(tokens.values())[12], (first, sorted(tokens.values()))


def test_learnability_without_a_prediction_is_refused_in_one_line(
    tiny_qwen2_dir: Path, tmp_path: Path
) -> None:
    path = tmp_path / "q.jsonl"
    path.write_text(
        "".join(json.dumps({"question": f"What is {i} plus {i}?"}) + "\n" for i in range(12))
    )
    out = tmp_path / "run"
    assert (
        run("score", "--model", str(tiny_qwen2_dir), "--data", str(path), "--out", str(out))[0] == 0
    )
    code, text = run("schedule", str(out), *PLAN, "--rank-by", "learnability")
    lines = text.strip().splitlines()
    assert code == 1 and len(lines) == 1 and "run `gain-curate predict" in lines[0], text
    code, text = run("predict", str(out), "--probe", str(path))
    assert code == 1 and "--keep-states" in text and len(text.strip().splitlines()) == 1, text


def test_order_by_sorts_each_ranking() -> None:
    gain_rank = [3, 0, 2, 1, 4]
    assert order_by("angle", gain_rank).tolist() == [1, 3, 2, 0, 4]
    assert order_by("learnability", gain_rank, [4, 2, 0, 1, 3]).tolist() == [2, 3, 1, 4, 0]
    # shortest first, ties by gain_rank, rows never tokenized (null, -1) last
    assert order_by("length", gain_rank, [9, 5, 5, None, 2]).tolist() == [4, 1, 2, 0, 3]
    with pytest.raises(ValueError, match="run `gain-curate predict"):
        order_by("learnability", gain_rank, None)


def test_adapters_draw_over_the_rank_by_order() -> None:
    """What verl's and TRL's adapters build from their dataset and `rank_by` param."""
    import datasets

    extra = [{"gain_uid": f"u{i}", "gain_rank": i} for i in range(N)]
    learn = list(np.random.default_rng(1).permutation(N))
    ds = datasets.Dataset.from_dict(
        {
            "extra_info": extra,
            "gain_learn_rank": learn,
            "gain_tokens_question": [N - i for i in range(N)],
        }
    )
    params = ScheduleParams(batch_size=4, sigma=2.0)
    for rank_by, key in (("learnability", learn), ("length", [N - i for i in range(N)])):
        assert rank_by_of({"rank_by": rank_by}) == rank_by
        sched, rows = build_schedule(
            ds["extra_info"], None, params, rank_by, rank_keys(ds, rank_by)
        )
        assert [key[r] for r in rows] == sorted(key)  # position k holds the k-th row of the order
        drawn = [rows[p] for p in sched.plan_epoch()]
        assert max(sorted(key).index(key[r]) for r in drawn) < 10
    sched, rows = build_schedule(ds["extra_info"], None, params, rank_by_of({}), None)
    assert rows == list(range(N))  # angle: the default, gain_rank order
    plain = datasets.Dataset.from_dict({"extra_info": extra})
    with pytest.raises(ValueError, match="run `gain-curate predict"):
        build_schedule(
            plain["extra_info"], None, params, "learnability", rank_keys(plain, "learnability")
        )
    with pytest.raises(ValueError, match="rank_by 'speed'"):
        rank_by_of({"rank_by": "speed"})


def test_probe_feature_names_pick_the_kept_states() -> None:
    from gain_curate.checks.predict import feature_spec
    from gain_curate.errors import OutputError

    assert feature_spec("last_token@L23", 23) == ["last_token"]
    assert feature_spec("question_mean@L23+last_token@L23", 23) == ["question_mean", "last_token"]
    assert feature_spec("last token, layer 23", 23) == ["last_token"]
    assert feature_spec(["question_mean", "last_token@L-1"], 23, 24) == [
        "question_mean",
        "last_token",
    ]
    with pytest.raises(OutputError, match="reads layer 12's states"):
        feature_spec("last_token@L12", 23)
    with pytest.raises(OutputError, match="cannot tell which pooled state"):
        feature_spec("residual@L23", 23)


def probe_like(probe_file: Path, folder: Path, fitted: dict | None, **arrays: np.ndarray) -> Path:
    """The fixture's probe with its fitted_on replaced (None: dropped) and arrays replaced."""
    fit = ProbeFit.load(probe_file)
    fit.meta = {k: v for k, v in fit.meta.items() if k != "fitted_on"}
    if fitted is not None:
        fit.meta["fitted_on"] = fitted
    for name, value in arrays.items():
        setattr(fit, name, value)
    return fit.save(folder / "probe.npz")


def refused(out: Path, probe: Path) -> str:
    """predict's one line for a refused probe; the shards and manifest stay as they were."""
    before = {p.name: p.read_bytes() for p in (out / "data").iterdir()}
    manifest = (out / "gain_manifest.json").read_bytes()
    code, text = run("predict", str(out), "--probe", str(probe))
    lines = text.strip().splitlines()
    assert code == 1 and len(lines) == 1 and lines[0].startswith("Error: "), text
    assert {p.name: p.read_bytes() for p in (out / "data").iterdir()} == before
    assert (out / "gain_manifest.json").read_bytes() == manifest
    return lines[0]


def test_predict_refuses_a_probe_fit_on_another_model_or_template(
    scored: Path, probe_file: Path, tmp_path: Path
) -> None:
    """The hidden size and the layer match, yet the probe read another model's states, another
    chat template's or another conversation's: predict says which, in one line."""
    own = ProbeFit.load(probe_file).meta["fitted_on"]
    assert own["revision"].startswith("sha256:") and own["chat_template_sha256"]
    cases = {
        "revision": ({**own, "model": "Qwen2.5-0.5B", "revision": "0" * 40}, "at revision 0000"),
        "template": ({**own, "chat_template_sha256": "ab" * 32}, "chat template abab"),
        "conversation": (
            {**own, "conversation": {**own["conversation"], "instruction": "Think."}},
            "another scoring conversation (instruction)",
        ),
    }
    for name, (fitted, said) in cases.items():
        line = refused(scored, probe_like(probe_file, tmp_path / name, fitted))
        assert said in line and f"validate --run {scored} --rollouts K" in line, (name, line)
    line = refused(scored, probe_like(probe_file, tmp_path / "none", None))
    assert "does not record the model, chat template and conversation" in line
    moved = {**own, "model": "a copy of the same folder elsewhere"}  # same revision: same model
    code, text = run(
        "predict", str(scored), "--probe", str(probe_like(probe_file, tmp_path / "moved", moved))
    )
    assert code == 0, text


def test_predict_refuses_a_probe_from_a_run_with_another_system_prompt(
    tiny_qwen2_dir: Path, scored: Path, probe_file: Path, tmp_path: Path
) -> None:
    """A real second run of the same prompts and model under another system prompt: the
    states have the same shape, the probe fit on the first run is refused on it."""
    rows = [
        json.dumps({"question": f"What is {i} times {i + 3}?", "answer": str(i)}) for i in range(N)
    ]
    path = tmp_path / "q.jsonl"
    path.write_text("\n".join(rows) + "\n")
    other = tmp_path / "other"
    code, text = run(
        "score",
        "--model",
        str(tiny_qwen2_dir),
        "--data",
        str(path),
        "--out",
        str(other),
        "--keep-states",
        "--system-prompt",
        "You are a pirate.",
    )
    assert code == 0, text
    line = refused(other, probe_file)
    assert "another scoring conversation (system prompt)" in line, line


@pytest.mark.parametrize("how", ["zero weights", "one pass rate"])
def test_predict_refuses_a_probe_that_predicts_one_pass_rate(
    scored: Path, probe_file: Path, tmp_path: Path, how: str
) -> None:
    fit = ProbeFit.load(probe_file)
    if how == "zero weights":
        probe = probe_like(
            probe_file, tmp_path, fit.meta["fitted_on"], coef=np.zeros_like(fit.coef)
        )
        why = "its weights are all zero"
    else:  # a real fit on a target with one value: ridge gives it zero weights too
        from gain_curate.checks.probe import fit_probes

        st = np.load(scored / "states.npz")
        fits = fit_probes(
            {"last_token@L3": st["last_token"].astype(np.float64)},
            np.full(N, 0.25),
            fitted_on=fit.meta["fitted_on"],
        )
        probe = fits["last_token@L3"].save(tmp_path / "probe.npz")
        why = "its weights are all zero"
    line = refused(scored, probe)
    assert "predicts the same pass rate" in line and why in line and "no learnability rank" in line
