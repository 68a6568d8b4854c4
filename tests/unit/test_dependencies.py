"""pyproject's dependencies are exactly what the package imports: nothing it imports comes in
only by luck (as a dependency of a dependency), nothing declared goes unused."""

from __future__ import annotations

import ast
import sys
import tomllib
from importlib.metadata import packages_distributions

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from streaming_ml.config import REPO_ROOT

PACKAGE = REPO_ROOT / "src" / "streaming_ml"


def imported_top_levels() -> dict[str, str]:
    """Every top-level module that ``src/streaming_ml`` imports (inside functions and
    ``TYPE_CHECKING`` blocks too), with one file that imports it."""
    found: dict[str, str] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.partition(".")[0], str(path.relative_to(REPO_ROOT)))
    return found


def third_party(modules: dict[str, str]) -> dict[str, str]:
    return {
        name: where
        for name, where in modules.items()
        if name not in sys.stdlib_module_names and name not in {"__future__", "streaming_ml"}
    }


def declared() -> set[str]:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    return {canonicalize_name(Requirement(line).name) for line in project["dependencies"]}


def test_the_scan_sees_imports_of_every_kind() -> None:
    modules = imported_top_levels()
    # A plain import, a from-import, one inside a function, one under TYPE_CHECKING.
    assert {"json", "collections", "psycopg2", "bentoml"} <= modules.keys()
    assert "streaming_ml" in modules
    assert "json" not in third_party(modules)


def test_every_third_party_import_is_a_declared_dependency() -> None:
    distributions = packages_distributions()
    wanted = declared()
    undeclared = {}
    for module, where in third_party(imported_top_levels()).items():
        provided_by = {canonicalize_name(d) for d in distributions.get(module, [])}
        if not provided_by & wanted:
            undeclared[module] = (where, sorted(provided_by))
    assert undeclared == {}, "add these to [project].dependencies in pyproject.toml"


def test_every_declared_dependency_is_imported() -> None:
    distributions = packages_distributions()
    used = {
        canonicalize_name(d)
        for module in third_party(imported_top_levels())
        for d in distributions.get(module, [])
    }
    unused = sorted(declared() - used)
    assert unused == [], "nothing in src/ imports these: drop them from pyproject.toml"
