"""`gain-curate validate`: per-prompt gradient norms equal brute-force loss.backward(),
and the correlations equal scipy's."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from scipy import stats

from gain_curate.checks.supervised import build_examples, grad_norms
from gain_curate.inputs.template import ScoringTemplate
from gain_curate.stats import partial_spearman, spearman

QUESTIONS = [
    "What is 2 + 3?",
    "A farmer has 12 cows and buys 5 more. How many cows now?",
    "Name a prime number larger than 10.",
    "If a book costs 7 dollars, what do 6 books cost?",
]
SOLUTIONS = [
    "2 + 3 = 5. #### 5",
    "12 + 5 = 17 cows. #### 17",
    "11 is prime. #### 11",
    "6 * 7 = 42 dollars. #### 42",
]


def brute_force(model, examples, layer: int) -> list[float]:
    """One prompt at a time, every parameter trainable, plain loss.backward()."""
    out = []
    for e in examples:
        model.zero_grad()
        model.requires_grad_(True)
        ids = torch.tensor([e.ids])
        logits = model(input_ids=ids).logits[0, :-1]
        loss = torch.nn.functional.cross_entropy(logits[e.n_prompt - 1 :], ids[0, e.n_prompt :])
        loss.backward()
        out.append(model.model.layers[layer].mlp.up_proj.weight.grad.norm().item())
    return out


@pytest.mark.parametrize("layer", [3, 1])
def test_grad_norm_equals_per_prompt_backward(
    tiny_qwen2_dir: Path, qwen_tokenizer, layer: int
) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_qwen2_dir, dtype=torch.float32).eval()
    examples = build_examples(qwen_tokenizer, ScoringTemplate(), QUESTIONS, SOLUTIONS)
    assert all(len(e.ids) > e.n_prompt for e in examples)
    fast, losses = grad_norms(
        model, examples, layer, token_budget=10_000, pad_id=qwen_tokenizer.pad_token_id
    )
    slow = brute_force(model, examples, layer)
    np.testing.assert_allclose(fast, slow, rtol=1e-5, atol=1e-7)
    assert np.all(np.isfinite(losses)) and np.all(losses > 0)


def test_correlations_equal_scipy() -> None:
    rng = np.random.default_rng(0)
    z = rng.normal(size=200)
    x = z + rng.normal(size=200)
    y = 0.5 * z + rng.normal(size=200)
    x[:5] = np.round(x[:5])  # some ties
    assert spearman(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
    rx, ry, rz = (stats.rankdata(v) for v in (x, y, z))
    res_x = rx - stats.linregress(rz, rx).intercept - stats.linregress(rz, rx).slope * rz
    res_y = ry - stats.linregress(rz, ry).intercept - stats.linregress(rz, ry).slope * rz
    assert partial_spearman(x, y, z) == pytest.approx(
        stats.pearsonr(res_x, res_y).statistic, abs=1e-10
    )


def test_validate_end_to_end(tiny_qwen2_dir: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from gain_curate.cli import main

    data = tmp_path / "d.jsonl"
    rows = [
        {"question": f"{q} (case {k})", "answer": a}
        for k in range(2)
        for q, a in zip(QUESTIONS, SOLUTIONS)
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "val"
    r = CliRunner().invoke(
        main,
        [
            "validate",
            "--model",
            str(tiny_qwen2_dir),
            "--data",
            str(data),
            "--sample",
            "8",
            "--out",
            str(out),
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    result = json.loads(r.output[r.output.index("{") :])
    assert result["sample"] == 8 and result["weight"] == "layers[3].mlp.up_proj.weight"
    saved = json.loads((out / "validate.json").read_text())
    grad = np.array(saved["rows"]["grad_norm"])
    score = np.array(saved["rows"]["gain_score"])
    assert result["spearman_grad_vs_score"] == pytest.approx(
        stats.spearmanr(grad, score).statistic, abs=1e-12
    )
    # every statistic with its seeded bootstrap interval (--seed 0), as computed by hand
    est = result["intervals"]["spearman_grad_vs_score"]
    assert est["value"] == pytest.approx(result["spearman_grad_vs_score"], abs=1e-12)
    idx = np.random.default_rng(0).integers(0, 8, size=(2000, 8))
    boot = np.array([stats.spearmanr(grad[i], score[i]).statistic for i in idx])
    low, high = np.quantile(boot[np.isfinite(boot)], [0.025, 0.975])
    assert (est["low"], est["high"], est["n"]) == (pytest.approx(low), pytest.approx(high), 8)
    assert set(result["intervals"]) == {
        "spearman_grad_vs_score",
        "spearman_grad_vs_c_intra",
        "spearman_grad_vs_c_inter",
        "spearman_grad_vs_question_tokens",
        "partial_spearman_grad_vs_score_given_length",
    }
    assert saved["summary"]["intervals"] == result["intervals"]
    assert (out / "validate.parquet").is_file() and (out / "validate.png").is_file()
    # too few prompts for an interval: no interval, and one line saying so
    text = (
        CliRunner()
        .invoke(
            main,
            [
                "validate",
                "--model",
                str(tiny_qwen2_dir),
                "--data",
                str(data),
                "--sample",
                "4",
                "--out",
                str(tmp_path / "small"),
            ],
        )
        .output
    )
    assert "uncertainty: " in text and "n = 4" in text, text


def test_validate_run_reuses_the_runs_model_data_and_template(
    tiny_qwen2_dir: Path, tmp_path: Path
) -> None:
    """`validate --run OUT` scores its sample with the run's template: its scores are the
    run's scores of the same prompts, which a default template would not reproduce."""
    from click.testing import CliRunner

    from gain_curate.cli import main

    data = tmp_path / "d.jsonl"
    rows = [
        {"question": f"{q} (case {k})", "answer": a}
        for k in range(2)
        for q, a in zip(QUESTIONS, SOLUTIONS)
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run, val = tmp_path / "run", tmp_path / "val"
    flags = [
        "--no-system-prompt",
        "--few-shot",
        "none",
        "--instruction",
        "Answer with a number.",
        "--inter-weight",
        "2",
    ]
    r = CliRunner().invoke(
        main,
        ["score", "--model", str(tiny_qwen2_dir), "--data", str(data), "--out", str(run), *flags],
    )
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(
        main, ["validate", "--run", str(run), "--sample", "4", "--out", str(val), "--json"]
    )
    assert r.exit_code == 0, r.output
    result = json.loads(r.output[r.output.index("{") :])
    manifest = json.loads((run / "gain_manifest.json").read_text())
    assert result["template"] == manifest["signal"]["template"] and result["inter_weight"] == 2.0
    assert result["template"]["instruction"] == "Answer with a number."
    assert result["model_revision"] == manifest["model"]["revision"]
    ranked = {
        r["extra_info"]["question"]: r["gain_score"]
        for r in pq.read_table(run / "data").to_pylist()
    }
    saved = json.loads((val / "validate.json").read_text())["rows"]
    for q, s in zip(saved["question"], saved["gain_score"]):
        assert s == pytest.approx(ranked[q], abs=1e-6), q
    r = CliRunner().invoke(
        main,
        ["validate", "--run", str(run), "--model", "smollm2", "--instruction", "x"],
        prog_name="gain-curate",
    )
    assert r.exit_code == 2 and r.output.splitlines() == [
        "Error: --run takes the model, data and template from the run: drop --model, --instruction "
        "(see `gain-curate validate --help`)"
    ]
    r = CliRunner().invoke(main, ["validate"], prog_name="gain-curate")
    assert r.exit_code == 2 and r.output.splitlines() == [
        "Error: give --data (a dataset with reference solutions) or --run OUT (a scored run) "
        "(see `gain-curate validate --help`)"
    ]
