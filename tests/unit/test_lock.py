"""requirements.lock: what `make setup` installs, checked against pyproject and bentofile."""

from __future__ import annotations

import re
import tomllib

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from streaming_ml.config import REPO_ROOT

LOCK = (REPO_ROOT / "requirements.lock").read_text()


def locked() -> dict[str, str]:
    pins = re.findall(r"^([A-Za-z0-9_.\-]+)==([^\s;\\]+)", LOCK, flags=re.MULTILINE)
    return {canonicalize_name(name): version for name, version in pins}


# Every lock a build installs from: the app, the build tools, JupyterLab's image, the
# Bento base image's uv.
LOCKS = {
    "requirements.lock": 100,
    "requirements-build.lock": 4,
    "docker/jupyter/requirements.lock": 50,
    "docker/python/uv.lock": 1,
}


@pytest.mark.parametrize("lock", sorted(LOCKS))
def test_every_pin_has_hashes(lock: str) -> None:
    text = (REPO_ROOT / lock).read_text()
    pins = re.findall(r"^[A-Za-z0-9_.\-]+==", text, flags=re.MULTILINE)
    body = text[text.index(pins[0]) :] if pins else ""
    entries = re.split(r"\n(?=[A-Za-z0-9_.\-]+==)", body.strip())
    assert len(entries) == len(pins) >= LOCKS[lock]
    unhashed = [e.split()[0] for e in entries if "--hash=sha256:" not in e]
    assert unhashed == []


def test_the_lock_satisfies_every_dependency_of_pyproject() -> None:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    wanted = [*project["dependencies"], *project["optional-dependencies"]["dev"]]
    pins = locked()
    wrong = []
    for line in wanted:
        requirement = Requirement(line)
        version = pins.get(canonicalize_name(requirement.name))
        if version is None or not requirement.specifier.contains(version, prereleases=True):
            wrong.append((line, version))
    assert wrong == [], f"run `make lock`: {wrong}"


def test_bentofile_pins_the_locked_versions() -> None:
    bentofile = yaml.safe_load((REPO_ROOT / "bentofile.yaml").read_text())
    pins = locked()
    names = set()
    for line in bentofile["python"]["packages"]:
        requirement = Requirement(line)
        assert str(requirement.specifier) == f"=={pins[canonicalize_name(requirement.name)]}", line
        names.add(canonicalize_name(requirement.name))
    # The service loads online models as well as boosters.
    assert {"xgboost", "river"} <= names
