"""OpenRLHF 0.11.2 against gain-curate's launcher, on a CPU machine.

OpenRLHF installs --no-deps here; its trainer modules import vllm, deepspeed, peft and
flash_attn at import time (none of which runs on CPU). Those four are given empty stand-in
modules while the test imports OpenRLHF's own code, so what runs for real is OpenRLHF's:
its argument parser (train_ppo_ray's `__main__` block, run on the flags gain-curate prints),
`get_strategy`, `get_tokenizer`, `prepare_datasets` (blending_datasets, PromptDataset,
DeepspeedStrategy.setup_dataloader, the max_steps formula), `PPOTrainer.__init__` and
`PPOTrainer.fit` (episodes, SamplesGenerator, `train_step`, `ppo_train`, checkpoint and resume
of the loader) on a local Ray. Stand-ins: the vLLM engines (answer every prompt at once), the
actor group (counts optimizer steps as OpenRLHF's actor does: max_epochs passes over the
step's samples, one step per --train.batch_size samples; its deepspeed/CUDA loop can only be
read) and the experience maker (hands the real Experiences through)."""

from __future__ import annotations

import ast
import copy
import importlib.abc
import importlib.machinery
import json
import shlex
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

pytest.importorskip("torchdata", reason="torchdata not installed: run `make test-integrations`")
pytest.importorskip("openrlhf", reason="openrlhf not installed: run `make test-integrations`")
ray = pytest.importorskip("ray", reason="ray not installed: run `make test-integrations`")

from gain_curate.errors import OutputError  # noqa: E402
from gain_curate.integrations import openrlhf as adapter  # noqa: E402

E, B, N, SAMPLES = 4, 3, 10, 2  # plan epochs, prompts per epoch, scored rows, samples/prompt
PLAN = [[4, 1, 7], [2, 9, 0], [4, 5, 8], [3, 6, 1]]
ABSENT = ("vllm", "deepspeed", "peft", "flash_attn")


class _Stub(types.ModuleType):
    """An absent CUDA-only package: every name is a class that accepts anything."""

    def __getattr__(self, name: str) -> type:
        if name.startswith("__"):
            raise AttributeError(name)
        cls = type(name, (), {"__init__": lambda self, *a, **k: None})
        setattr(self, name, cls)
        return cls


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path, target=None):  # noqa: ANN001
        if name.split(".")[0] in ABSENT:
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):  # noqa: ANN001
        module = _Stub(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module) -> None:  # noqa: ANN001
        pass


@pytest.fixture(scope="module")
def orl():
    """OpenRLHF's trainer and CLI modules, imported over stand-ins for the absent packages
    only, and a local Ray; both undone afterwards (other tests must not see the stand-ins)."""
    import transformers  # noqa: F401  (imported before the stand-ins exist)

    before, finder = set(sys.modules), _StubFinder()
    sys.meta_path.insert(0, finder)
    try:
        import openrlhf.cli.train_ppo_ray as cli
        import openrlhf.trainer.ppo_trainer as trainer
        import openrlhf.trainer.ppo_trainer_async as trainer_async
        from openrlhf.utils import get_strategy

        ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
        yield SimpleNamespace(
            cli=cli, trainer=trainer, trainer_async=trainer_async, get_strategy=get_strategy
        )
    finally:
        if ray.is_initialized():
            ray.shutdown()
        sys.meta_path.remove(finder)
        for name in set(sys.modules) - before:
            if name.split(".")[0] in (*ABSENT, "openrlhf"):
                del sys.modules[name]


@pytest.fixture(scope="module")
def run(tiny_qwen2_dir: Path, tmp_path_factory) -> Path:
    """A scored run of N distinct questions (in a folder with a space) and its plan."""
    from gain_curate.executor.launch import run_score
    from gain_curate.executor.score import ScoreConfig

    tmp = tmp_path_factory.mktemp("openrlhf")
    data = tmp / "q.jsonl"
    data.write_text(
        "".join(
            json.dumps({"question": f"What is {i} + {i}?", "answer": str(2 * i)}) + "\n"
            for i in range(N)
        )
    )
    out = tmp / "my runs" / "gsm8k"
    run_score(ScoreConfig(data=str(data), model=str(tiny_qwen2_dir), out=out, device="cpu"))
    uids = pq.read_table(out / "data").column("gain_uid").to_pylist()
    rows = [(e, i, uids[r], r) for e, p in enumerate(PLAN) for i, r in enumerate(p)]
    (out / "schedule").mkdir()
    cols = ("epoch", "position", "gain_uid", "gain_rank")
    pq.write_table(
        pa.table({c: [r[k] for r in rows] for k, c in enumerate(cols)}),
        out / "schedule" / "plan.parquet",
    )
    return out


def parse(orl, argv: list[str]) -> SimpleNamespace:
    """train_ppo_ray's own `__main__` block (parser, hierarchize, checks) on `argv`, with its
    final `train(args)` capturing args instead of starting Ray actors."""
    tree = ast.parse(Path(orl.cli.__file__).read_text())
    (main,) = [n for n in tree.body if isinstance(n, ast.If) and "__main__" in ast.unparse(n.test)]
    got: list[SimpleNamespace] = []
    code = compile(ast.Module(body=main.body, type_ignores=[]), orl.cli.__file__, "exec")
    old, sys.argv = sys.argv, ["train_ppo_ray", *argv]
    try:
        exec(code, {**vars(orl.cli), "train": got.append})
    finally:
        sys.argv = old
    return got[0]


def _remote(fn):
    return SimpleNamespace(remote=lambda *a, **k: ray.put(fn(*a, **k)))


class Engines:
    """vLLM engines: each prompt is answered at once, in the order OpenRLHF dispatches it."""

    def __init__(self) -> None:
        self.served: list[str] = []

    def engine(self) -> SimpleNamespace:
        def generate(prompt, label, sampling_params, max_length, hf_tokenizer, num_samples, images):  # noqa: ANN001
            self.served.append(prompt)
            response = {
                "observation_tokens": [1, 2, 3, 4, 5],
                "action_ranges": [(3, 5)],
                "reward": 1.0,
                "scores": 1.0,
                "rollout_log_probs": None,
                "prompt": prompt,
                "label": label,
            }
            return [dict(response) for _ in range(num_samples)]

        return SimpleNamespace(
            generate_responses=_remote(generate), get_num_unfinished_requests=_remote(lambda: 0)
        )


class ActorGroup:
    """The actor's Ray group: takes each step's samples, counts its optimizer steps, keeps
    and hands back checkpoint states."""

    def __init__(self, args: SimpleNamespace, resume: dict | None = None) -> None:
        self.args, self.resume = args, resume
        self.buffer: list = []
        self.steps: list[list[str]] = []  # per trainer step: its samples' prompts
        self.optimizer_steps, self.saved = 0, {}

    def async_run_method_batch(self, method_name: str, experience: list) -> list:
        assert method_name == "append"
        self.buffer += experience
        return [ray.put(None)]

    def async_run_method(self, method_name: str, **kwargs) -> list:
        if method_name == "fit":  # OpenRLHF's actor: max_epochs passes, batch_size samples/step
            self.steps.append([p for e in self.buffer for p in e.prompts])
            self.optimizer_steps += (
                self.args.train.max_epochs * len(self.buffer) // self.args.train.batch_size
            )
            self.buffer = []
            return [ray.put({"policy_loss": 0.0})]
        if method_name == "save_checkpoint":
            self.saved[kwargs["client_states"]["global_step"]] = copy.deepcopy(
                kwargs["client_states"]
            )
        if method_name == "get_checkpoint_states":
            return [ray.put(self.resume)]
        return [ray.put(None)]


def launcher_argv(run: Path, tiny: Path, ckpt: Path, *more: str) -> list[str]:
    """What a user pastes after `--`, plus the flags the launcher adds (as it adds them)."""
    mine = [
        "--actor.model_name_or_path",
        str(tiny),
        "--reward.remote_url",
        "http://rm",
        "--algo.advantage.estimator",
        "group_norm",
        "--rollout.n_samples_per_prompt",
        str(SAMPLES),
        "--train.batch_size",
        "3",
        "--train.max_epochs",
        "2",
        "--vllm.num_engines",
        "1",
        "--actor.num_gpus_per_node",
        "1",
        "--ckpt.path",
        str(ckpt),
        *more,
    ]
    path, record = adapter.export_plan(run)
    argv, _ = adapter.with_plan_flags(mine, shlex.split(record.flags))
    return argv


def fit(orl, monkeypatch, args: SimpleNamespace, resume: dict | None = None):
    """OpenRLHF's real PPOTrainer built and fitted, with the launcher's worker hook applied."""
    monkeypatch.setattr(orl.trainer, "prepare_datasets", orl.trainer.prepare_datasets)
    monkeypatch.setattr(orl.trainer_async, "prepare_datasets", orl.trainer_async.prepare_datasets)
    adapter.setup()
    engines, group = Engines(), ActorGroup(args, resume)
    cls = orl.trainer.PPOTrainer.__ray_actor_class__
    t = cls(
        args.actor.model_name_or_path,
        orl.get_strategy(args),
        group,
        None,
        None,
        None,
        [engines.engine()],
        do_sample=True,
        max_len=64,
        max_new_tokens=8,
        temperature=1.0,
        top_p=1.0,
    )
    t.experience_maker = SimpleNamespace(make_experience_batch=lambda samples: samples)
    t.fit()
    return t, engines, group


def expected_prompts(run: Path, tokenizer) -> list[list[str]]:
    rows = pq.read_table(run / "data").to_pylist()
    return [[render(tokenizer, rows[r]) for r in p] for p in PLAN]


def render(tokenizer, row: dict) -> str:
    """What OpenRLHF's PromptDataset makes of a row with --data.apply_chat_template."""
    return tokenizer.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)


def test_fit_trains_the_whole_plan_in_order_and_max_steps_is_the_steps_run(
    orl, run: Path, tiny_qwen2_dir: Path, qwen_tokenizer, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv(adapter.ENV_RUN, str(run))
    args = parse(
        orl, launcher_argv(run, tiny_qwen2_dir, tmp_path / "ckpt", "--ckpt.save_steps", "1")
    )
    assert args.train.num_episodes == 1 and args.rollout.batch_size == B  # OpenRLHF's default; ours
    t, engines, group = fit(orl, monkeypatch, args)
    want = expected_prompts(run, qwen_tokenizer)
    assert engines.served == [p for epoch in want for p in epoch]  # plan order, each once
    assert len(group.steps) == E  # one OpenRLHF step per plan epoch
    for step, epoch in zip(group.steps, want):
        assert sorted(step) == sorted(p for p in epoch for _ in range(SAMPLES))
    # the LR schedule: OpenRLHF's max_steps (E*B prompts x 2 samples / 3 per step x 2 passes)
    assert t.max_steps == E * B * SAMPLES // 3 * 2 == group.optimizer_steps == 16
    # resume from the checkpoint after step 2: the loader goes on with plan epoch 2
    (tmp_path / "ckpt" / "_actor").mkdir(parents=True)
    args = parse(orl, launcher_argv(run, tiny_qwen2_dir, tmp_path / "ckpt", "--ckpt.load_enable"))
    _, engines, again = fit(orl, monkeypatch, args, resume=group.saved[2])
    assert engines.served == [p for epoch in want[2:] for p in epoch] and len(again.steps) == 2


def test_two_episodes_train_the_plan_twice_and_max_steps_doubles(
    orl, run: Path, tiny_qwen2_dir: Path, qwen_tokenizer, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv(adapter.ENV_RUN, str(run))
    args = parse(orl, launcher_argv(run, tiny_qwen2_dir, tmp_path, "--train.num_episodes", "2"))
    t, engines, group = fit(orl, monkeypatch, args)
    want = [p for epoch in expected_prompts(run, qwen_tokenizer) for p in epoch]
    assert engines.served == want + want and t.max_steps == group.optimizer_steps == 32


def test_the_hook_wraps_both_trainer_modules_once_and_checks_openrlhfs_parsed_args(
    orl, run: Path, tiny_qwen2_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv(adapter.ENV_RUN, str(run))
    argv = launcher_argv(run, tiny_qwen2_dir, tmp_path)
    for module in (orl.trainer, orl.trainer_async):
        monkeypatch.setattr(module, "prepare_datasets", module.prepare_datasets)
    adapter.setup()
    adapter.setup()  # a second hook call (or the async module's re-export) wraps nothing twice
    for module in (orl.trainer, orl.trainer_async):
        assert module.prepare_datasets.gain_curate_run == str(run)
        assert not hasattr(module.prepare_datasets.__wrapped__, "gain_curate_run")
    tokenizer = SimpleNamespace(apply_chat_template=lambda *a, **k: "p")
    for bad, says in [
        ("--rollout.batch_size=4", "pass --rollout.batch_size 3"),
        ("--data.max_samples=5", "drop --data.max_samples"),
    ]:
        args = parse(orl, [*argv, bad])
        with pytest.raises(ValueError, match=says):
            orl.trainer.prepare_datasets(orl.get_strategy(args), tokenizer)


def test_launcher_adds_the_plan_flags_and_refuses_conflicting_ones(
    run: Path, monkeypatch, capsys
) -> None:
    seen: dict[str, list[str]] = {}
    monkeypatch.setattr(ray, "init", lambda **k: seen.setdefault("env", k))
    monkeypatch.setattr("runpy.run_module", lambda *a, **k: seen.setdefault("argv", list(sys.argv)))
    adapter.main(["--run", str(run), "--", "--train.batch_size", "6", "--data.input_key", "prompt"])
    plan = str((run / adapter.PLAN_FILE).resolve())
    assert seen["argv"] == [
        "train_ppo_ray",
        "--train.batch_size",
        "6",
        "--data.input_key",
        "prompt",
        "--data.prompt_dataset",
        plan,
        "--data.apply_chat_template",
        "--data.label_key",
        "label",
        "--rollout.batch_size",
        str(B),
    ]
    added = capsys.readouterr().err.strip().split("added: ", 1)[1]
    assert shlex.split(added) == seen["argv"][5:] and " " in plan  # pastes into a shell as it is
    assert seen["env"]["runtime_env"]["env_vars"] == {adapter.ENV_RUN: str(run.resolve())}
    manifest = json.loads((run / "gain_manifest.json").read_text())
    record = manifest["exports"]["openrlhf"]["plan"]
    assert record["rows"] == E * B and record["epochs"] == E and record["batch_size"] == B
    lines = [json.loads(x) for x in (run / adapter.PLAN_FILE).read_text().splitlines()]
    assert [x["gain_rank"] for x in lines] == [r for p in PLAN for r in p]
    assert [(x["gain_plan_epoch"], x["gain_plan_position"]) for x in lines[3:5]] == [(1, 0), (1, 1)]
    with pytest.raises(SystemExit, match="--rollout.batch_size 8 conflicts with the plan"):
        adapter.main(["--run", str(run), "--", "--rollout.batch_size", "8"])
    with pytest.raises(OutputError, match="--data.prompt_dataset other.jsonl conflicts"):
        adapter.with_plan_flags(
            ["--data.prompt_dataset=other.jsonl"], adapter.data_flags(run / adapter.PLAN_FILE, B)
        )


def test_export_epoch_reads_through_openrlhfs_parser_and_prompt_dataset(
    orl, run: Path, qwen_tokenizer, tiny_qwen2_dir: Path
) -> None:
    """The printed flags, shlex-split as a shell would (the run's path has a space), parsed by
    train_ppo_ray's own parser and read by the real prepare_datasets: epoch 1 as one step."""
    path, record = adapter.export_epoch(run, 1)
    assert shlex.split(record.flags) == adapter.data_flags(path, B)
    manifest = json.loads((run / "gain_manifest.json").read_text())
    assert manifest["exports"]["openrlhf"]["epochs"]["1"] == record.to_json() and record.rows == B
    args = parse(
        orl,
        [
            "--actor.model_name_or_path",
            str(tiny_qwen2_dir),
            "--reward.remote_url",
            "http://rm",
            "--actor.num_gpus_per_node",
            "1",
            "--train.batch_size",
            "3",
            *shlex.split(record.flags),
        ],
    )
    assert not hasattr(orl.trainer.prepare_datasets, "gain_curate_run")  # no launcher here
    loader, _, max_steps = orl.trainer.prepare_datasets(orl.get_strategy(args), qwen_tokenizer)
    assert max_steps == 1 and len(loader) == B  # 3 prompts x 1 sample // --train.batch_size 3
    table = pq.read_table(run / "data").to_pylist()
    got = sorted((b[1][0], b[2][0], b[0][0]) for b in loader)  # OpenRLHF shuffles inside it
    rows = [table[r] for r in PLAN[1]]
    assert got == sorted(
        (render(qwen_tokenizer, r), r["reward_model"]["ground_truth"], r["data_source"])
        for r in rows
    )
