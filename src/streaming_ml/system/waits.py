"""Bounded waits: every wait in the package ends at a deadline, never in a bare sleep.

``wait_until`` polls a probe until its answer is good enough and raises
``WaitTimeoutError`` (naming what it waited for and how long) when the deadline passes.
``Deadline`` is the value behind it, for loops that do work of their own between checks
(a consumer's poll, a progress line) and only need to know when to give up.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from streaming_ml.errors import WaitTimeoutError

T = TypeVar("T")


@dataclass(frozen=True)
class Deadline:
    """``timeout_s`` seconds after ``started`` on the monotonic clock."""

    started: float
    timeout_s: float

    @classmethod
    def after(cls, timeout_s: float) -> Deadline:
        """The deadline ``timeout_s`` seconds from now."""
        return cls(time.monotonic(), timeout_s)

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def remaining(self) -> float:
        """Seconds left, zero once passed."""
        return max(0.0, self.started + self.timeout_s - time.monotonic())

    def expired(self) -> bool:
        return time.monotonic() >= self.started + self.timeout_s

    def sleep(self, interval: float) -> None:
        """Sleep ``interval`` seconds, or only what is left when that is less: a poll
        interval never carries a wait past its deadline."""
        time.sleep(min(interval, self.remaining()))


def wait_until(
    probe: Callable[[], T],
    *,
    timeout: float,
    interval: float,
    what: str,
    done: Callable[[T], object] = bool,
    on_wait: Callable[[T, Deadline], None] | None = None,
) -> T:
    """Call ``probe`` every ``interval`` seconds until ``done(answer)`` holds (by default:
    the answer is truthy) and return that answer.

    ``on_wait`` sees each answer that was not good enough with the deadline, between two
    probes: it may report progress, or raise to give up early (a process that died).
    After ``timeout`` seconds it raises ``WaitTimeoutError`` carrying ``what`` and the
    last answer. The probe always runs at least once, and once more at the deadline.
    """
    deadline = Deadline.after(timeout)
    while True:
        answer = probe()
        if done(answer):
            return answer
        if deadline.expired():
            raise WaitTimeoutError(what, timeout, answer)
        if on_wait is not None:
            on_wait(answer, deadline)
        deadline.sleep(interval)
