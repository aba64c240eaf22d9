"""`gain-curate export --format subset` (curated train/val shards) and the default schedule on
a 200-prompt run (sigma, n, adj_max scaled to N), over a real scored run (tiny Qwen2)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from gain_curate.cli import main

N_DISTINCT, N_DUPLICATES, N_LONG = 190, 6, 4  # 200 rows


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def scored(tiny_qwen2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """200 rows: 190 distinct short questions, 6 of them again, 4 too long to score."""
    tmp = tmp_path_factory.mktemp("subset")
    questions = [f"What is {i} times {i + 3}?" for i in range(N_DISTINCT)]
    questions += questions[:N_DUPLICATES]
    questions += [" ".join(["apples and pears"] * 100) + f" {i}?" for i in range(N_LONG)]
    path = tmp / "q.jsonl"
    path.write_text("".join(json.dumps({"question": q}) + "\n" for q in questions))
    out = tmp / "run"
    args = ["score", "--model", str(tiny_qwen2_dir), "--data", str(path), "--out", str(out)]
    code, text = run(*args, "--max-tokens", "200")
    assert code == 0, text
    return out


@pytest.fixture
def run_copy(scored: Path, tmp_path: Path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(scored, out)
    return out


def add_pred_pass(out: Path) -> np.ndarray:
    """gain_pred_pass as `gain-curate predict` writes it (float64 after the other columns,
    the shards and manifest rewritten by the store): p = rank / N, so it is known here."""
    from gain_curate.runfolder import store
    from gain_curate.runfolder.run import open_run

    run_ = open_run(out)
    table = run_.table()
    p = np.arange(table.num_rows) / table.num_rows
    table = table.append_column(pa.field("gain_pred_pass", pa.float64()), pa.array(p))
    shards = store.write_shards(
        lambda a, b: table.slice(a, b - a), table.num_rows, out, rows_per_shard=table.num_rows
    )
    manifest = store.read_manifest(out)
    manifest["shards"] = [s.to_json() for s in shards]
    store.write_manifest(out, manifest)
    return p


def subset_rows(out: Path, split: str) -> list[dict]:
    files = sorted((out / "export" / "subset").glob(f"{split}-*.parquet"))
    return pa.concat_tables([pq.read_table(f) for f in files]).to_pylist() if files else []


def test_the_default_schedule_walks_a_200_prompt_ranking(scored: Path) -> None:
    """sigma, n, adj_max scaled to N = 200 (27, 13, 27): mu moves ~7 positions a step at 0.8,
    so a pass takes ~28 steps (as the paper's numbers do at GSM8K's 7,473), and no warning."""
    args = ["schedule", str(scored), "--epochs", "300", "--batch-size", "32"]
    code, text = run(*args, "--assumed-accuracy", "0.8", "--simulate", "--json")
    assert code == 0, text
    info = json.loads(text[text.index("{") :])
    assert info["warnings"] == []
    p = info["params"]
    assert (p["sigma"], p["n"], p["adj_max"]) == (27.0, 13.0, 27.0)
    epochs = info["epochs"]
    restarts = sum(e["event"] == "restart" for e in epochs)
    assert 5 <= restarts <= 15, restarts  # ~10 passes of ~28 steps, not one every step
    assert max(e["mu"] for e in epochs) > 150  # it reaches the bottom of the ranking
    assert sum(e["mu"] == 0 for e in epochs) < 30
    # the table: the resolved numbers on stdout before it, warnings (stderr) first
    code, text = run(*args, "--assumed-accuracy", "0.8", "--simulate")
    assert code == 0 and "sigma 27, n 13, adj [0, 27]" in text
    assert "sigma, n, adj_max scaled to the run: the paper's value x 200 / 7,473" in text
    code, text = run(
        *args, "--assumed-accuracy", "0.8", "--simulate", "--n", "500", "--adj-max", "1000"
    )
    warn, table = text.index("warning: mu sweeps"), text.index("where it draws")
    assert code == 0 and warn < table  # the misfit is said before the 300-row table


def test_paper_mode_keeps_the_reference_values(scored: Path) -> None:
    args = ["schedule", str(scored), "--epochs", "3", "--batch-size", "8", "--mode", "paper"]
    code, text = run(*args, "--simulate", "--json")
    p = json.loads(text[text.index("{") :])["params"]
    assert code == 0 and (p["sigma"], p["n"], p["adj_max"]) == (1000.0, 500.0, 1000.0)


def test_subset_counts_per_filter_and_the_printed_flags(run_copy: Path) -> None:
    add_pred_pass(run_copy)
    args = ["export", str(run_copy), "--format", "subset", "--drop-unscored", "--drop-duplicates"]
    code, text = run(*args, "--pass-band", "0.1:0.9", "--top", "0.5", "--val-size", "10")
    assert code == 0, text
    assert f"unscored: dropped {N_LONG}" in text and f"duplicates: dropped {N_DUPLICATES}" in text
    # p = rank / 200 in [0.1, 0.9]: ranks 20..180 of the 190 kept ranks 0..189 minus copies
    train, val = subset_rows(run_copy, "train"), subset_rows(run_copy, "val")
    rows = train + val
    assert len(val) == 10 and len(rows) == int(text.split("kept ")[1].split(":")[0])
    assert all(0.1 <= r["gain_pred_pass"] <= 0.9 for r in rows)
    assert all(r["gain_score"] is not None for r in rows)
    prompts = [json.dumps(r["prompt"]) for r in rows]
    assert len(set(prompts)) == len(prompts)
    assert not {r["gain_uid"] for r in train} & {r["gain_uid"] for r in val}
    for part in (train, val):  # rank order, the run's columns
        ranks = [r["gain_rank"] for r in part]
        assert ranks == sorted(ranks)
    src = pq.read_schema(next((run_copy / "data").glob("*.parquet")))
    got = pq.read_schema(next((run_copy / "export" / "subset").glob("train-*.parquet")))
    assert got.names == src.names
    sub = run_copy / "export" / "subset"
    assert f"'data.train_files=[{(sub / 'train-00000-of-00001.parquet').resolve()}]'" in text
    assert f"'data.val_files=[{(sub / 'val-00000-of-00001.parquet').resolve()}]'" in text
    manifest = json.loads((run_copy / "gain_manifest.json").read_text())
    rec = manifest["exports"]["subset"]
    assert rec["val_rows"] == 10 and rec["train_rows"] == len(train)
    assert rec["dropped"]["unscored"] == N_LONG and rec["flags"] in text


def test_the_top_fraction_and_the_held_out_split_are_stable(run_copy: Path) -> None:
    base = ["export", str(run_copy), "--format", "subset", "--top", "0.25"]
    assert run(*base, "--val-fraction", "0.2")[0] == 0
    first = subset_rows(run_copy, "train"), subset_rows(run_copy, "val")
    assert len(first[0]) + len(first[1]) == 50 and len(first[1]) == 10
    assert sorted(r["gain_rank"] for r in first[0] + first[1]) == list(range(50))
    assert run(*base, "--val-fraction", "0.2")[0] == 0  # the same again
    assert (subset_rows(run_copy, "train"), subset_rows(run_copy, "val")) == first
    assert run(*base, "--val-fraction", "0.2", "--seed", "1")[0] == 0  # another seed: another
    assert {r["gain_uid"] for r in subset_rows(run_copy, "val")} != {
        r["gain_uid"] for r in first[1]
    }
    assert (
        run("export", str(run_copy), "--format", "subset", "--top", "0.5", "--val-size", "10")[0]
        == 0
    )  # a row held out keeps its side when more rows come in: most of the first 10 stay
    again = {r["gain_uid"] for r in subset_rows(run_copy, "val")}
    assert len(again & {r["gain_uid"] for r in first[1]}) >= 3
    # no filter: every row, in rank order, no val shard
    assert run("export", str(run_copy), "--format", "subset")[0] == 0
    assert [r["gain_rank"] for r in subset_rows(run_copy, "train")] == list(range(200))
    assert not list((run_copy / "export" / "subset").glob("val-*"))


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        (["--top", "0"], "--top 0 is not a fraction in (0, 1]"),
        (["--top", "1.5"], "--top 1.5 is not a fraction in (0, 1]"),
        (["--pass-band", "0.9:0.1"], "--pass-band 0.9:0.1 is not LO:HI"),
        (["--pass-band", "half"], "--pass-band 'half' is not LO:HI"),
        (["--val-fraction", "1"], "--val-fraction 1 is not in (0, 1)"),
        (["--val-size", "0"], "--val-size 0 is not a positive number"),
        (["--val-size", "5", "--val-fraction", "0.1"], "give --val-fraction or --val-size"),
        (["--val-size", "200"], "leaves none of the 200 kept rows to train on"),
        (["--pass-band", "0.1:0.9"], "run `gain-curate predict"),
    ],
)
def test_bad_subset_values_are_one_line_and_write_nothing(
    run_copy: Path, extra: list[str], says: str
) -> None:
    code, text = run("export", str(run_copy), "--format", "subset", *extra)
    assert code != 0 and says in text, text
    assert "Traceback" not in text and len(text.strip().splitlines()) <= 3
    assert not (run_copy / "export" / "subset").exists()
    assert "exports" not in json.loads((run_copy / "gain_manifest.json").read_text())


def test_subset_flags_refused_for_the_plan_exports(run_copy: Path) -> None:
    code, text = run("export", str(run_copy), "--format", "verl", "--top", "0.5")
    assert code != 0 and "--top applies to --format subset" in text
