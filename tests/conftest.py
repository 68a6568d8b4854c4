"""Shared fixtures live in tests/fixtures/, one module per real component."""

import os
import tempfile

# Tests never touch the user's model store: BentoML reads BENTOML_HOME at import,
# so it is set here, before any test module imports bentoml.
os.environ.setdefault("BENTOML_HOME", tempfile.mkdtemp(prefix="sml-bentoml-"))
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")

pytest_plugins = [
    "tests.fixtures.ports",
    "tests.fixtures.model",
    "tests.fixtures.service",
    "tests.fixtures.stack",
]
