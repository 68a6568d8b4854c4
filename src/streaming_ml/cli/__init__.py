"""The ``streaming-ml`` command: parse arguments, build Settings, call one library function.

Library modules are imported inside each command so ``streaming-ml --help`` and the light
commands stay fast (bentoml/xgboost take seconds to import); this is the one place that
defers imports.
"""

from __future__ import annotations

# Importing the command modules registers their commands on ``app``.
from streaming_ml.cli import operate, pipeline, reprice
from streaming_ml.cli.app import app, main

__all__ = ["app", "main", "operate", "pipeline", "reprice"]
