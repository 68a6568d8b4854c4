"""The bench's progress line: what it waits for, for how long and up to when."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console

from streaming_ml.system.waits import Deadline


class Waiting:
    """A status line: what we wait for, how far it got, for how long and the limit.
    On a non-terminal (CI logs) it prints a line every few seconds instead."""

    def __init__(self, console: Console, what: str, timeout_s: float) -> None:
        self.console = console
        self.what = what
        self.timeout_s = timeout_s
        self.deadline = Deadline.after(timeout_s)
        self._status: Any = None
        self._next_print = self.deadline.started + 5.0

    def __enter__(self) -> Waiting:
        self._status = self.console.status(self._text("starting"))
        self._status.__enter__()
        return self

    def _text(self, detail: str) -> str:
        elapsed = self.deadline.elapsed()
        return f"[bold]{self.what}[/]: {detail} ({elapsed:.0f}s, up to {self.timeout_s:.0f}s)"

    def update(self, detail: str) -> None:
        text = self._text(detail)
        self._status.update(text)
        now = time.monotonic()
        if not self.console.is_terminal and now >= self._next_print:
            self.console.print(text)
            self._next_print = now + 5.0

    @property
    def elapsed(self) -> float:
        return self.deadline.elapsed()

    def expired(self) -> bool:
        return self.deadline.expired()

    def sleep(self, interval: float) -> None:
        """Pause between two checks, never past the limit."""
        self.deadline.sleep(interval)

    def __exit__(self, exc_type: Any, *rest: Any) -> None:
        self._status.__exit__(exc_type, *rest)
        if exc_type is None:
            self.console.print(f"  [green]✓[/] {self.what} ({self.elapsed:.1f}s)")
