"""The CLI's log configuration."""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import re
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


def test_every_line_starts_with_an_iso_8601_date_time_and_zone(
    root_logging: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    stderr = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stderr)
    configure_logging("INFO")
    logging.getLogger("streaming_ml.example").info("hello", extra={"rows": 3})
    first = stderr.getvalue().split()[0]
    parsed = dt.datetime.fromisoformat(first)
    assert parsed.tzinfo is not None, first
    assert abs((parsed - dt.datetime.now(dt.UTC)).total_seconds()) < 60
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d", first)


def test_json_lines_carry_the_same_iso_time(
    root_logging: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    stderr = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stderr)
    configure_logging("INFO", json_format=True)
    logging.getLogger("streaming_ml.example").info("hello")
    body = json.loads(stderr.getvalue())
    assert dt.datetime.fromisoformat(body["time"]).timestamp() == pytest.approx(
        body["ts"], abs=0.001
    )
