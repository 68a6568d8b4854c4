"""Structured logging, configured once at the entry point.

Library modules only call ``logging.getLogger(__name__)`` and pass context as
``extra={...}``; this formatter renders it as ``key=value`` pairs (or JSON).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys

_RESERVED = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


def _context(record: logging.LogRecord) -> dict[str, object]:
    return {k: v for k, v in record.__dict__.items() if k not in _RESERVED}


def timestamp(record: logging.LogRecord) -> str:
    """ISO 8601 with the date and the UTC offset: a long-running process's lines stay
    unambiguous across midnight, and lines from containers and hosts in other zones sort."""
    moment = dt.datetime.fromtimestamp(record.created).astimezone()
    return moment.isoformat(timespec="milliseconds")


class KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        parts = [timestamp(record), record.levelname.lower(), record.name]
        parts.append(record.getMessage())
        parts.extend(f"{k}={v}" for k, v in _context(record).items())
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        body: dict[str, object] = {
            "ts": record.created,
            "time": timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            **_context(record),
        }
        if record.exc_info:
            body["exc"] = self.formatException(record.exc_info)
        return json.dumps(body, default=str)


class StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record is emitted: a command run in
    process (a test's CLI runner) swaps stderr and closes its copy afterwards, and a
    handler bound to that copy would fail on every later record."""

    @property
    def stream(self) -> object:
        return sys.stderr

    @stream.setter
    def stream(self, _value: object) -> None:
        pass


def configure_logging(level: str = "INFO", json_format: bool = False) -> None:
    """Route all package logs to stderr; stdout stays free for command output."""
    handler = StderrHandler()
    handler.setFormatter(JsonFormatter() if json_format else KeyValueFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("urllib3", "httpx", "httpx2", "httpcore", "matplotlib", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def configure_package_logging(level: str = "INFO", json_format: bool = False) -> None:
    """Give the package's loggers a stderr handler of their own, leaving the root logger
    to the host process (a BentoML worker configures only its own loggers, so the
    service's swap and refusal records would otherwise be dropped)."""
    handler = StderrHandler()
    handler.setFormatter(JsonFormatter() if json_format else KeyValueFormatter())
    package = logging.getLogger("streaming_ml")
    package.handlers[:] = [handler]
    package.setLevel(level.upper())
    package.propagate = False
