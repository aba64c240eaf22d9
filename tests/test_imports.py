"""The package's import graph has no circles, lazy imports inside functions included: a
circle hides which module is the lower layer and breaks as soon as one import moves."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "gain_curate"


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py") if "kernels" not in p.parts}
    graph: dict[str, set[str]] = {m: set() for m in files}
    for mod, path in files.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                if name in files and name != mod and name != "gain_curate":
                    graph[mod].add(name)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return stack[stack.index(n) :] + [n]
            if n not in state and (found := visit(n)):
                return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_the_import_graph_has_no_circles() -> None:
    graph = import_graph()
    assert (
        "gain_curate.executor.launch" in graph and graph["gain_curate.executor.launch"]
    )  # the graph is real
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_cycle_finder_finds_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


# The sub-packages by role, top to bottom (docs/design.md, "Layers"); below them the root leaves
# (errors, stats, bootstrap) and kernels. An import may point down this list or stay in its
# own sub-package, never up.
LAYERS = (
    "cli",
    "integrations",
    "checks",
    "curriculum",
    "executor",
    "runfolder",
    "scoring",
    "inputs",
    "runtime",
)
FACES = {"gain_curate.cli", "gain_curate.schedule"}  # re-export what lives below them
MAX_LINES = 300


def layer_of(module: str) -> int:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 2 and parts[1] in LAYERS else len(LAYERS)


def upward_imports(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    return sorted(
        (m, d)
        for m, deps in graph.items()
        if m not in FACES
        for d in deps
        if (d in FACES and not m.startswith(d + ".")) or layer_of(d) < layer_of(m)
    )


def test_every_import_points_down_the_layers() -> None:
    graph = import_graph()
    assert {m.split(".")[1] for m in graph if m.count(".") > 1} >= set(LAYERS)
    assert upward_imports(graph) == []


def test_the_layer_check_catches_an_upward_import() -> None:
    graph = {
        "gain_curate.runfolder.store": {"gain_curate.checks.probe"},
        "gain_curate.errors": set(),
    }
    assert upward_imports(graph) == [("gain_curate.runfolder.store", "gain_curate.checks.probe")]
    assert upward_imports({"gain_curate.checks.probe": {"gain_curate.runfolder.store"}}) == []


def test_no_module_is_over_300_lines() -> None:
    long = {
        str(p.relative_to(PACKAGE)): n
        for p in PACKAGE.rglob("*.py")
        if "kernels" not in p.parts
        and (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert long == {}


# Functions fit on a screen; a few long ones may remain where splitting would only move
# lines (each named here with its reason). Untyped dicts do not cross the package: what a
# function returns has named fields, except wire formats a trainer or JSON file dictates.
MAX_FUNCTION_LINES = 80
LONG_FUNCTIONS_ALLOWED = 2
DICT_RETURNS_ALLOWED = 10


def functions() -> list[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]]:
    found = []
    for p in sorted(PACKAGE.rglob("*.py")):
        if "kernels" in p.parts:
            continue
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                found.append((f"{p.relative_to(PACKAGE)}:{node.name}", node))
    return found


def long_functions() -> dict[str, int]:
    return {
        where: n
        for where, f in functions()
        if (n := f.end_lineno - f.lineno + 1) > MAX_FUNCTION_LINES  # type: ignore[operator]
    }


def dict_returns() -> list[str]:
    return [
        where
        for where, f in functions()
        if f.returns is not None and "dict[str, Any]" in ast.unparse(f.returns)
    ]


def test_functions_fit_on_a_screen() -> None:
    long = long_functions()
    assert len(functions()) > 500 and len(long) <= LONG_FUNCTIONS_ALLOWED, long


def test_few_functions_return_untyped_dicts() -> None:
    found = dict_returns()
    assert len(found) <= DICT_RETURNS_ALLOWED, found


def test_the_function_checks_see_what_they_count() -> None:
    tree = ast.parse("def f() -> dict[str, Any]:\n" + "    x = 1\n" * 90)
    f = tree.body[0]
    assert isinstance(f, ast.FunctionDef) and f.end_lineno - f.lineno + 1 > MAX_FUNCTION_LINES
    assert "dict[str, Any]" in ast.unparse(f.returns)  # type: ignore[arg-type]


def test_the_public_imports_keep_working() -> None:
    """What users write today: the README's imports, the console entry point, `-m`."""
    import subprocess
    import sys

    code = (
        "from gain_curate.schedule import GainSchedule, ScheduleParams\n"
        "from gain_curate.cli import main\n"
        "import importlib.util as u\n"  # the adapters import their trainer: locate them only
        "for m in ('verl', 'verl_v1', 'trl', 'openrlhf'):\n"
        "    assert u.find_spec('gain_curate.integrations.' + m), m\n"
        "import gain_curate.kernels.naive\n"
        "assert GainSchedule(10, ScheduleParams(batch_size=2)).plan_epoch().shape == (2,)\n"
        "assert main.name == 'main' and 'score' in main.commands\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    out = subprocess.run(
        [sys.executable, "-m", "gain_curate.cli", "--version"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0 and out.stdout.startswith("gain-curate"), out.stderr[-2000:]
