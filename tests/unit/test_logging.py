"""The CLI's log configuration."""

from __future__ import annotations

import io
import logging
import sys
from collections.abc import Iterator

import pytest

from streaming_ml.log import configure_logging


@pytest.fixture
def root_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:], root.level = handlers, level


def test_log_records_follow_stderr_when_it_is_swapped_and_closed(
    root_logging: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A command run in process (as the tests' CLI runner does) configures logging while
    # stderr is its own copy, then closes that copy; later records must still be written.
    runner_stderr = io.StringIO()
    monkeypatch.setattr(sys, "stderr", runner_stderr)
    configure_logging("INFO")
    logging.getLogger("streaming_ml.example").info("during the command", extra={"rows": 3})
    assert runner_stderr.getvalue().rstrip().endswith("during the command rows=3")
    runner_stderr.close()

    later_stderr = io.StringIO()
    monkeypatch.setattr(sys, "stderr", later_stderr)
    logging.getLogger("streaming_ml.example").info("after the command")
    written = later_stderr.getvalue()
    assert "Logging error" not in written
    assert written.rstrip().endswith("after the command")
