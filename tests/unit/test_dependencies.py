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
    for where, name in imported_modules():
        found.setdefault(name.partition(".")[0], where)
    return found


def imported_modules() -> list[tuple[str, str]]:
    """(file, module) for every absolute import in ``src/streaming_ml``."""
    modules = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            modules += [(str(path.relative_to(REPO_ROOT)), name) for name in names]
    return modules


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


# The one private import, and why: BentoML 1.4 has no public accessor for the model
# store's directory, which models.store must list without loading a (damaged) model.
PRIVATE_IMPORTS = {"bentoml._internal.configuration.containers"}


def test_no_private_module_of_a_dependency_is_imported() -> None:
    """A dependency's ``_private`` modules may change in any release."""
    private = {
        name: where
        for where, name in imported_modules()
        if name != "__future__" and any(part.startswith("_") for part in name.split("."))
    }
    assert set(private) == PRIVATE_IMPORTS, private


def test_the_license_file_is_the_licence_pyproject_declares() -> None:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0"
    text = (REPO_ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
