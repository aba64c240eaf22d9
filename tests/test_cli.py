"""The CLI through click's CliRunner: a real run, --json, and one clear line for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from gain_curate.cli import main


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


@pytest.fixture
def data(tmp_path: Path) -> Path:
    path = tmp_path / "d.jsonl"
    rows = [
        {
            "question": f"If a train goes {i} miles an hour for 3 hours, how far does it go?",
            "answer": f"#### {3 * i}",
        }
        for i in range(1, 7)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_help_lists_commands() -> None:
    code, out = run("--help")
    assert code == 0 and "score" in out and "Example" in out


def test_score_json_summary(tiny_qwen2_dir: Path, data: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    code, text = run(
        "score",
        "--model",
        str(tiny_qwen2_dir),
        "--data",
        str(data),
        "--out",
        str(out),
        "--system-prompt",
        "You are a careful math tutor.",
        "--few-shot",
        "none",
        "--json",
    )
    assert code == 0, text
    summary = json.loads(text)
    assert summary["counts"]["scored"] == 6
    assert Path(summary["shards"][0]).is_file()
    manifest = json.loads((out / "gain_manifest.json").read_text())
    assert manifest["signal"]["template"]["system_prompt"] == "You are a careful math tutor."
    assert manifest["signal"]["template"]["few_shot"] == []


def test_score_prints_where_the_shards_are(
    tiny_qwen2_dir: Path, data: Path, tmp_path: Path
) -> None:
    code, text = run(
        "score", "--model", str(tiny_qwen2_dir), "--data", str(data), "--out", str(tmp_path / "o")
    )
    assert code == 0, text
    assert f"ranked shards: {tmp_path / 'o' / 'data'}" in text
    assert "data.train_files=" in text


def test_rerun_is_a_no_op_and_another_config_needs_overwrite(
    tiny_qwen2_dir: Path, data: Path, tmp_path: Path
) -> None:
    args = [
        "score",
        "--model",
        str(tiny_qwen2_dir),
        "--data",
        str(data),
        "--out",
        str(tmp_path / "o"),
    ]
    assert run(*args)[0] == 0
    before = (tmp_path / "o" / "gain_manifest.json").read_text()
    code, text = run(*args)
    assert code == 0 and "already complete" in text
    assert (tmp_path / "o" / "gain_manifest.json").read_text() == before
    code, text = run(*args, "--inter-weight", "8")
    assert code != 0 and "another config" in text and "--overwrite" in text
    assert run(*args, "--inter-weight", "8", "--overwrite")[0] == 0


def _bad_inputs(tmp_path: Path, data: Path, model: Path) -> list[tuple[list[str], str]]:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    few = tmp_path / "few.json"
    few.write_text("{not json")
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    m, d = str(model), str(data)
    return [
        (["--model", m, "--data", str(tmp_path / "missing.jsonl")], "file not found"),
        (["--model", m, "--data", "nosuchpreset"], "no such file or preset: nosuchpreset"),
        (["--model", m, "--data", d, "--question-key", "nope"], "'nope'"),
        (["--model", m, "--data", d, "--answer-key", "nope"], "columns: question, answer"),
        (["--model", m, "--data", str(empty)], "has no rows"),
        (["--model", str(tmp_path / "no_model"), "--data", d], "model folder not found"),
        (["--model", m, "--data", d, "--few-shot", str(few)], "not valid JSON"),
        (["--model", m, "--data", d, "--layer", "99"], "out of range"),
        (["--model", m, "--data", d, "--out", str(a_file)], "is a file"),
    ]


def test_bad_input_gets_one_line_and_no_output(
    tiny_qwen2_dir: Path, data: Path, tmp_path: Path
) -> None:
    for args, expected in _bad_inputs(tmp_path, data, tiny_qwen2_dir):
        out = tmp_path / "out"
        full = ["score", "--out", str(out), *args] if "--out" not in args else ["score", *args]
        code, text = run(*full)
        assert code != 0, (args, text)
        assert expected in text, (args, text)
        lines = [
            line
            for line in text.splitlines()
            if line.strip() and not line.startswith(("reading", "loading", "tokenizing"))
        ]
        assert len(lines) == 1 and lines[0].startswith("Error: "), (args, text)
        assert "Traceback" not in text
        assert not (out / "gain_manifest.json").exists() and not (out / "data").exists(), args


def test_schedule_plan_walks_down_the_ranking(tiny_qwen2_dir: Path, tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    path = tmp_path / "many.jsonl"
    path.write_text(
        "".join(
            json.dumps({"question": f"How much is {i} plus {i * 7} apples?"}) + "\n"
            for i in range(120)
        )
    )
    out = tmp_path / "run"
    assert (
        run("score", "--model", str(tiny_qwen2_dir), "--data", str(path), "--out", str(out))[0] == 0
    )
    code, text = run(
        "schedule",
        str(out),
        "--epochs",
        "6",
        "--batch-size",
        "10",
        "--sigma",
        "8",
        "--n",
        "40",
        "--adj-max",
        "40",
        "--assumed-accuracy",
        "0.8",
        "--json",
    )
    assert code == 0, text
    epochs = json.loads(text)["epochs"]
    plan = pq.read_table(out / "schedule" / "plan.parquet").to_pylist()
    assert len(plan) == 60 and {r["epoch"] for r in plan} == set(range(6))
    first = [r["gain_rank"] for r in plan if r["epoch"] == 0]
    assert max(first) < 30  # epoch 0 sits at the top of the ranking
    medians = [e["rank_p50"] for e in epochs]
    assert medians[-1] > medians[0] + 60 and epochs[-1]["mu"] > epochs[0]["mu"]  # and moves down it
    manifest = json.loads((out / "gain_manifest.json").read_text())
    assert manifest["schedule"]["params"]["batch_size"] == 10
    assert manifest["schedule"]["assumed_accuracy"] == "0.8"
    assert manifest["schedule"]["params"]["at_end"] == "restart"
    assert manifest["schedule"]["angle_signal"].startswith("none")
    ranks = {r["gain_uid"]: r["gain_rank"] for r in pq.read_table(out / "data").to_pylist()}
    assert all(ranks[r["gain_uid"]] == r["gain_rank"] for r in plan)


@pytest.fixture(scope="module")
def scored(tiny_qwen2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A scored run of 40 prompts for the schedule commands."""
    tmp = tmp_path_factory.mktemp("scored")
    path = tmp / "q.jsonl"
    path.write_text(
        "".join(json.dumps({"question": f"What is {i} times {i + 3}?"}) + "\n" for i in range(40))
    )
    out = tmp / "run"
    assert (
        run("score", "--model", str(tiny_qwen2_dir), "--data", str(path), "--out", str(out))[0] == 0
    )
    return out


def test_schedule_simulate_prints_the_dynamics_and_writes_only_the_picture(scored: Path) -> None:
    code, text = run(
        "schedule",
        str(scored),
        "--epochs",
        "30",
        "--batch-size",
        "5",
        "--sigma",
        "4",
        "--n",
        "10",
        "--assumed-accuracy",
        "0.2:0.9",
        "--simulate",
    )
    assert code == 0, text
    assert "where it draws" in text and "new pass" in text
    assert "the sweep reaches the end of the ranking after step" in text
    assert "draws per tenth of the ranking" in text and "plan: none written" in text
    png = scored / "schedule" / "simulation.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (scored / "schedule" / "plan.parquet").exists()
    manifest = json.loads((scored / "gain_manifest.json").read_text())
    assert "schedule" not in manifest
    code, text = run(
        "schedule",
        str(scored),
        "--epochs",
        "30",
        "--batch-size",
        "5",
        "--sigma",
        "4",
        "--n",
        "5",
        "--assumed-accuracy",
        "0.2",
        "--simulate",
        "--json",
    )
    info = json.loads(text)
    assert (
        info["end_of_ranking"].startswith("mu never reaches the end") and len(info["epochs"]) == 30
    )
    assert all(e["mu"] == 0 for e in info["epochs"])


def test_schedule_paper_mode_runs_past_the_end(scored: Path, tmp_path: Path) -> None:
    code, text = run(
        "schedule",
        str(scored),
        "--epochs",
        "20",
        "--batch-size",
        "5",
        "--sigma",
        "4",
        "--n",
        "5",
        "--mode",
        "paper",
        "--plot",
        str(tmp_path / "p.png"),
        "--json",
    )
    assert code == 0, text
    info = json.loads(text)
    assert "at_end=past" in info["end_of_ranking"]  # the offline level 'ang' pushes even at 0.8
    assert info["epochs"][-1]["mu_next"] > 39 and info["epochs"][0]["ang"] is not None
    manifest = json.loads((scored / "gain_manifest.json").read_text())
    assert (
        manifest["schedule"]["mode"] == "paper"
        and manifest["schedule"]["params"]["angle"] == "level"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--assumed-accuracy", "1.2"], "give an accuracy in [0, 1]"),
        (["--assumed-accuracy", "0.2:1.5"], "give an accuracy in [0, 1]"),
        (["--assumed-accuracy", "high"], "give an accuracy in [0, 1]"),
        (["--at-end", "wrap"], "'wrap' is not one of 'restart', 'hold', 'uniform', 'past'"),
        (["--mode", "paper", "--at-end", "restart"], "paper mode lets mu run past the end"),
        (["--mode", "faithful"], "'faithful' is not one of 'default', 'paper'"),
        (["--sigma", "0"], "give a positive number of rank positions"),
        (["--sigma", "-0.1N"], "give a positive number of rank positions"),
        (["--batch-size", "41"], "--batch-size 41 exceeds the 40 prompts"),
    ],
)
def test_schedule_refuses_impossible_parameters(
    scored: Path, args: list[str], message: str
) -> None:
    (scored / "schedule" / "plan.parquet").unlink(missing_ok=True)
    base = {"--epochs": "3", "--batch-size": "4"}
    for k, v in zip(args[::2], args[1::2]):
        base[k] = v
    code, text = run("schedule", str(scored), *[x for kv in base.items() for x in kv])
    assert code != 0 and message in text and "Traceback" not in text, text
    assert not (scored / "schedule" / "plan.parquet").exists()


def test_export_verl_writes_the_plan_in_order_in_verls_schema(scored: Path) -> None:
    import pyarrow.parquet as pq

    (scored / "schedule" / "plan.parquet").unlink(missing_ok=True)
    code, text = run("export", str(scored), "--format", "verl")
    assert code != 0 and "gain-curate schedule" in text  # no plan yet: one line saying what to run
    assert (
        run("schedule", str(scored), "--epochs", "5", "--batch-size", "6", "--sigma", "4")[0] == 0
    )
    code, text = run("export", str(scored), "--format", "verl")
    assert code == 0, text
    assert "data.shuffle=False data.train_batch_size=6 trainer.total_epochs=1" in text
    rows = pq.read_table(scored / "export" / "verl" / "plan.parquet").to_pylist()
    plan = pq.read_table(scored / "schedule" / "plan.parquet").to_pylist()
    assert [r["extra_info"]["gain_uid"] for r in rows] == [p["gain_uid"] for p in plan]
    assert [
        (r["extra_info"]["gain_plan_epoch"], r["extra_info"]["gain_plan_position"]) for r in rows
    ] == [(p["epoch"], p["position"]) for p in plan]
    shard = {r["gain_uid"]: r for r in pq.read_table(scored / "data").to_pylist()}
    for r in rows:  # the shard row itself, verl columns included
        want = shard[r["gain_uid"]]
        assert r["prompt"] == want["prompt"] and r["reward_model"] == want["reward_model"]
        assert r["extra_info"]["gain_rank"] == want["gain_rank"] == r["gain_rank"]
    manifest = json.loads((scored / "gain_manifest.json").read_text())
    assert (
        manifest["exports"]["verl"]["rows"] == 30 and manifest["exports"]["verl"]["batch_size"] == 6
    )
    code, text = run("export", str(scored), "--format", "openrlhf")
    assert code != 0 and "give --epoch K" in text


def test_schedule_errors_are_one_line(tmp_path: Path) -> None:
    code, text = run("schedule", str(tmp_path / "nothing"), "--epochs", "2", "--batch-size", "4")
    assert code != 0 and "holds no scored run" in text and "Traceback" not in text
    code, text = run(
        "schedule", str(tmp_path), "--epochs", "2", "--batch-size", "4", "--sigma", "-3"
    )
    assert code != 0 and "positive number" in text


def test_export_openrlhf_epoch(tiny_qwen2_dir: Path, data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert (
        run("score", "--model", str(tiny_qwen2_dir), "--data", str(data), "--out", str(out))[0] == 0
    )
    code, text = run("export", str(out), "--format", "openrlhf", "--epoch", "0")
    assert code != 0 and "gain-curate schedule" in text  # no plan yet: one line saying what to run
    assert run("schedule", str(out), "--epochs", "2", "--batch-size", "3", "--sigma", "2")[0] == 0
    code, text = run("export", str(out), "--format", "openrlhf", "--epoch", "1")
    assert code == 0, text
    rows = [
        json.loads(line)
        for line in (out / "export" / "openrlhf" / "epoch-00001.jsonl").read_text().splitlines()
    ]
    import pyarrow.parquet as pq

    plan = [
        r for r in pq.read_table(out / "schedule" / "plan.parquet").to_pylist() if r["epoch"] == 1
    ]
    assert [r["gain_uid"] for r in rows] == [p["gain_uid"] for p in plan]
    assert set(rows[0]) == {"datasource", "prompt", "input", "label", "gain_uid", "gain_rank"}
    assert rows[0]["label"].isdigit() and rows[0]["input"] == rows[0]["prompt"][-1]["content"]
    code, text = run("export", str(out), "--format", "openrlhf", "--epoch", "5")
    assert code != 0 and "outside the plan" in text


def test_score_and_validate_build_the_template_from_the_same_flags(tmp_path: Path) -> None:
    from gain_curate.inputs.template import DEFAULT_SYSTEM_PROMPT, template_from_options

    for cmd in ("score", "validate"):
        code, text = run(cmd, "--help")
        for flag in (
            "--system-prompt ",
            "--system-prompt-file",
            "--no-system-prompt",
            "--few-shot",
            "--instruction",
        ):
            assert flag in text, (cmd, flag)
    f = tmp_path / "sys.txt"
    f.write_text("  From a file.\n")
    assert template_from_options().system_prompt == DEFAULT_SYSTEM_PROMPT
    assert template_from_options(system_prompt_file=f).system_prompt == "From a file."
    assert (
        template_from_options(system_prompt="Flag wins.", system_prompt_file=f).system_prompt
        == "Flag wins."
    )
    t = template_from_options(no_system_prompt=True, few_shot="none", instruction="Answer briefly.")
    assert (t.system_prompt, t.few_shot, t.instruction) == (None, (), "Answer briefly.")


def test_help_does_not_import_torch() -> None:
    import subprocess
    import sys

    probe = (
        "import sys; from gain_curate.cli import main\n"
        "for verb in ([], ['score'], ['schedule'], "
        "['export'], ['inspect'], ['validate'], ['merge']):\n"
        "    main([*verb, '--help'], standalone_mode=False)\n"
        "print(sorted(m for m in ('torch', 'transformers', "
        "'datasets', 'matplotlib') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stderr[-500:]


def test_schedule_warns_when_its_parameters_do_not_fit_the_run(scored: Path) -> None:
    """The paper's parameters, given, on a 40-prompt run (the defaults scale with N): sigma
    1000 >= N/2, B = 25 >= N/2, and mu sweeping the ranking every step or two; one line each,
    saying what would fit. Fitting parameters: no warning."""
    args = ["schedule", str(scored), "--epochs", "20", "--assumed-accuracy", "0.9", "--simulate"]
    paper = ["--sigma", "1000", "--n", "500", "--adj-max", "1000"]
    code, text = run(*args, *paper, "--batch-size", "25", "--json")
    assert code == 0, text
    warnings = json.loads(text[text.index("{") :])["warnings"]
    assert len(warnings) == 3, warnings
    assert warnings[0].startswith("sigma = 1000 rank positions is at least half of the 40 prompts")
    assert "--sigma 2" in warnings[0]
    assert warnings[1].startswith("--batch-size 25 draws at least half of the 40 prompts")
    assert "try at most 4" in warnings[1]
    assert (
        warnings[2].startswith("mu sweeps the whole ranking every") and "--adj-max" in warnings[2]
    )
    code, text = run(*args, *paper, "--batch-size", "25")
    assert [ln for ln in text.splitlines() if ln.startswith("warning: ")] == [
        f"warning: {w}" for w in warnings
    ]
    code, text = run(
        *args, "--batch-size", "4", "--sigma", "4", "--n", "2", "--adj-max", "2", "--json"
    )
    assert code == 0 and json.loads(text[text.index("{") :])["warnings"] == [], text


def test_one_truth_per_figure_in_the_table_the_json_and_a_rerun(
    scored: Path, tiny_qwen2_dir: Path
) -> None:
    """A rerun of a finished run reuses it and says so; its table, its --json and the
    manifest give the same time and counts; the table is titled by its verb."""
    manifest = json.loads((scored / "gain_manifest.json").read_text())
    data = scored.parent / "q.jsonl"  # the fixture's own flags
    argv = ["score", "--model", str(tiny_qwen2_dir), "--data", str(data), "--out", str(scored)]
    code, text = run(*argv)
    assert code == 0, text
    assert "gain-curate score" in text and f"{manifest['seconds']:.1f} s" in text
    assert "this finished run was reused" in text and f"reused: {scored} already holds" in text
    code, text = run(*argv, "--json")
    info = json.loads(text[text.index("{") :])
    assert info["seconds"] == manifest["seconds"] and info["reused"] is True
    assert info["counts"] == manifest["counts"]
    assert json.loads((scored / "gain_manifest.json").read_text())["seconds"] == manifest["seconds"]
    code, text = run("inspect", str(scored), "--json")  # the same interval as the manifest's
    assert code == 0, text
    shown = json.loads(text[text.index("{") :])["spearman_score_vs_question_tokens_interval"]
    assert shown == manifest["stats"]["spearman_score_vs_question_tokens_interval"]


def test_progress_logs_a_line_every_30_s_with_an_eta_when_stderr_is_not_a_terminal() -> None:
    """Redirected to a file, a long step still says where it is: a line every 30 s (elapsed,
    ETA) and one when it finishes; on a terminal the same task is a live bar instead."""
    import io

    from rich.console import Console

    from gain_curate.progress import Bars

    now = [0.0]
    buf = io.StringIO()
    bars = Bars(Console(file=buf, force_terminal=False, width=200), clock=lambda: now[0])
    bars.start()
    task = bars.add("GRPO gradients", 10)
    for _ in range(10):  # one group every 10 s
        now[0] += 10
        bars.advance(task, 1)
    bars.stop()
    assert buf.getvalue().splitlines() == [
        "GRPO gradients: 3/10 (30%), 0:00:30 elapsed, ETA 0:01:10",
        "GRPO gradients: 6/10 (60%), 0:01:00 elapsed, ETA 0:00:40",
        "GRPO gradients: 9/10 (90%), 0:01:30 elapsed, ETA 0:00:10",
        "GRPO gradients: 10/10 (100%), 0:01:40 elapsed, done",
    ]
    live = Bars(Console(file=io.StringIO(), force_terminal=True, width=200))
    assert live.live and not bars.live


def test_the_helps_verl_flag_is_the_one_score_prints(scored: Path) -> None:
    """`gain-curate --help` shows verl's flag in the form a run prints and records: a list in
    brackets, not a bare glob (which verl's Hydra config does not read as a file list),
    quoted for the shell (zsh refuses an unquoted [...] that matches no file)."""
    code, text = run("--help")
    assert code == 0
    shown = next(w for w in text.split() if "data.train_files=" in w)
    assert shown == "'data.train_files=[runs/gsm8k/data/train-00000-of-00001.parquet]'"
    printed = json.loads((scored / "gain_manifest.json").read_text())["trainer_flags"]["verl"][0]
    assert printed.startswith("'data.train_files=[") and printed.endswith(".parquet]'")
    assert "*.parquet" not in text


def bash_words(line: str) -> list[str]:
    """The words real bash passes a command for `line` pasted after it."""
    import subprocess

    got = subprocess.run(
        ["bash", "-c", f'printf "%s\\0" {line}'], capture_output=True, text=True, check=True
    )
    return got.stdout.split("\0")[:-1]


def hydra_values(overrides: list[str]) -> list[object] | None:
    """Each override's value as Hydra's own override parser (what verl's main_ppo runs)
    reads it, in the first Python that has hydra-core: this one, or an integration venv's.
    None when none has it."""
    import importlib.util
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    pythons = [Path(sys.executable)] if importlib.util.find_spec("hydra") else []
    pythons += [root / v / "bin" / "python" for v in (".venv-verl09", ".venv-integrations")]
    code = (
        "import json, sys\n"
        "from hydra.core.override_parser.overrides_parser import OverridesParser\n"
        "p = OverridesParser.create()\n"
        "print(json.dumps([p.parse_override(a).value() for a in sys.argv[1:]]))\n"
    )
    for python in pythons:
        if python.is_file():
            got = subprocess.run([python, "-c", code, *overrides], capture_output=True, text=True)
            if "No module named 'hydra'" not in got.stderr:
                assert got.returncode == 0, got.stderr[-2000:]
                return json.loads(got.stdout)
    return None


def test_printed_verl_flags_paste_into_a_shell(tiny_qwen2_dir: Path, tmp_path: Path) -> None:
    """A run under a folder whose name holds a space, a comma, an '=', a quote and brackets:
    the `verl:` lines that score and export print reach bash as one word per flag, and
    Hydra reads each file list back as the shard paths themselves. test.jsonl is a test
    split: its flag is data.val_files and its shards are named test-*."""
    out = tmp_path / "my runs" / "it's [v1], a=b" / "out"
    data = tmp_path / "my data" / "test.jsonl"
    data.parent.mkdir()
    data.write_text(
        "".join(
            json.dumps({"question": f"What is {i} times {i + 3}?", "answer": f"#### {i * (i + 3)}"})
            + "\n"
            for i in range(12)
        )
    )
    code, text = run(
        "score", "--model", str(tiny_qwen2_dir), "--data", str(data), "--out", str(out)
    )
    assert code == 0, text
    shard = (out / "data" / "test-00000-of-00001.parquet").resolve()
    assert shard.is_file()
    line = next(ln for ln in text.splitlines() if ln.startswith("verl: ")).removeprefix("verl: ")
    words = bash_words(line)
    assert len(words) == 2 and words[1].startswith("data.max_prompt_length="), words
    assert words[0].startswith("data.val_files=[") and "data.shuffle=False" not in words
    manifest = json.loads((out / "gain_manifest.json").read_text())
    assert " ".join(manifest["trainer_flags"]["verl"]) == line  # printed as recorded
    assert manifest["input"]["split"] == "test"

    assert run("schedule", str(out), "--epochs", "2", "--batch-size", "4", "--sigma", "4")[0] == 0
    code, text = run("export", str(out), "--format", "verl")
    assert code == 0, text
    line = next(ln for ln in text.splitlines() if ln.startswith("verl: ")).removeprefix("verl: ")
    exported = bash_words(line)
    assert exported[1:] == [
        "data.shuffle=False",
        "data.train_batch_size=4",
        "trainer.total_epochs=1",
    ]
    assert exported[0].startswith("data.train_files=[")

    values = hydra_values([words[0], exported[0]])
    if values is None:
        pytest.skip("no Python here has hydra-core (.venv-verl09 has it): bash checked only")
    assert values == [[str(shard)], [str((out / "export" / "verl" / "plan.parquet").resolve())]]
