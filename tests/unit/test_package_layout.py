"""The package's shape: wings in a fixed order, no import cycle, no import pointing upward,
no module too large to read, imports inside functions only where the CLI needs them."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "streaming_ml"

# Lowest first: a module may import its own wing and the wings before it, never after.
WINGS: list[set[str]] = [
    {"errors", "log", "config"},
    {"system"},
    {"schema"},
    {"datasets", "kafka"},
    {"stack"},
    {"connect"},
    {"models"},
    {"service"},
    {"bridge"},
    {"evaluation"},
    {"bench"},
    {"dashboard"},
    {"run"},
    {"demo"},
    {"cli", "__main__"},
]
RANK = {wing: rank for rank, wings in enumerate(WINGS) for wing in wings}
TOP_LEVEL_MODULES = {"__init__", "__main__", "cli", "config", "errors", "log", "run", "demo"}
MAX_LINES = 600
# Only the command line defers imports, so that `streaming-ml --help` stays fast.
LAZY_IMPORTS_ALLOWED = {"streaming_ml.cli", "streaming_ml.cli.app"}
LAZY_IMPORTS_PACKAGE = "streaming_ml.cli."


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def wing_of(module: str) -> str:
    return module.split(".")[1] if "." in module else "__init__"


def imported_modules(path: Path, known: set[str]) -> Iterator[tuple[str, ast.stmt, bool]]:
    """(module of ours, statement, inside a function) for each import of ``path``."""
    tree = ast.parse(path.read_text())
    in_function: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            in_function.update(id(inner) for inner in ast.walk(node) if inner is not node)
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from pkg import submodule` imports the submodule itself.
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        for name in names:
            if name in known and name != "streaming_ml":
                yield name, node, id(node) in in_function


def import_graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    return {
        module: {target for target, _, _ in imported_modules(path, known)} - {module}
        for module, path in found.items()
    }


def test_every_wing_and_top_level_module_has_a_rank() -> None:
    wings = {wing_of(module) for module in modules()} - {"__init__"}
    assert wings <= set(RANK), f"wings without a place in WINGS: {sorted(wings - set(RANK))}"


def test_no_top_level_module_belongs_to_a_wing() -> None:
    top = {path.stem for path in PACKAGE.glob("*.py")}
    assert top <= TOP_LEVEL_MODULES, f"put these in a wing: {sorted(top - TOP_LEVEL_MODULES)}"


def test_each_wing_says_what_it_holds() -> None:
    for init in PACKAGE.glob("*/__init__.py"):
        docstring = ast.get_docstring(ast.parse(init.read_text()))
        assert docstring, f"{init.parent.name}/__init__.py needs a one-line docstring"


def test_the_import_graph_has_no_cycle() -> None:
    graph = import_graph()
    # A package __init__ that re-exports its modules imports them; a module of the
    # package importing a sibling through the package is not a cycle of code.
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        path.append(module)
        for target in sorted(graph[module]):
            if target.startswith(module + "."):
                continue
            if state.get(target) == 1:
                cycle = [*path[path.index(target) :], target]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target)
        path.pop()
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)


def test_no_import_points_upward() -> None:
    upward = []
    for module, targets in import_graph().items():
        here = wing_of(module)
        if here == "__init__":
            continue
        for target in targets:
            there = wing_of(target)
            if there != "__init__" and RANK[there] > RANK[here]:
                upward.append(f"{module} -> {target}")
    assert not upward, "imports pointing upward:\n" + "\n".join(sorted(upward))


def test_no_module_is_too_long_to_read() -> None:
    long = {
        module: lines
        for module, path in modules().items()
        if (lines := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_imports_inside_functions_only_in_the_cli() -> None:
    found = modules()
    lazy = []
    for module, path in found.items():
        if module in LAZY_IMPORTS_ALLOWED or module.startswith(LAZY_IMPORTS_PACKAGE):
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for inner in ast.walk(node):
                    if isinstance(inner, (ast.Import, ast.ImportFrom)):
                        lazy.append(f"{module}:{inner.lineno}")
    assert not lazy, "imports inside functions outside the CLI:\n" + "\n".join(lazy)
