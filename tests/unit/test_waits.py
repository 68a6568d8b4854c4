"""The bounded-wait helper: answers as soon as it can, gives up at the deadline and says
what it waited for."""

from __future__ import annotations

import time

import pytest

from streaming_ml.errors import StreamingMLError, WaitTimeoutError
from streaming_ml.system.waits import Deadline, wait_until


def test_returns_the_first_good_answer_without_waiting_longer() -> None:
    answers = iter([None, 0, "ready", "later"])
    began = time.monotonic()
    assert wait_until(lambda: next(answers), timeout=5, interval=0.01, what="x") == "ready"
    assert time.monotonic() - began < 1.0
    assert next(answers) == "later"  # probed exactly three times


def test_done_decides_which_answer_is_good_enough() -> None:
    counts = iter([1, 2, 3, 4])
    got = wait_until(lambda: next(counts), timeout=5, interval=0.0, what="x", done=lambda n: n >= 3)
    assert got == 3


def test_gives_up_at_the_deadline_naming_what_and_how_long() -> None:
    began = time.monotonic()
    with pytest.raises(WaitTimeoutError) as caught:
        # An interval far past the timeout: the sleep is cut at the deadline.
        wait_until(lambda: 7, timeout=0.2, interval=30, what="topic created", done=lambda n: n > 7)
    waited = time.monotonic() - began
    assert 0.2 <= waited < 2.0
    error = caught.value
    assert isinstance(error, StreamingMLError)
    assert (error.what, error.timeout_s, error.last) == ("topic created", 0.2, 7)
    assert "topic created" in str(error) and "0.2s" in str(error)


def test_on_wait_sees_each_miss_and_may_give_up_early() -> None:
    seen: list[tuple[int, float]] = []
    answers = iter(range(100))

    def on_wait(answer: int, deadline: Deadline) -> None:
        seen.append((answer, deadline.timeout_s))
        if answer == 2:
            raise RuntimeError("process died")

    with pytest.raises(RuntimeError, match="process died"):
        wait_until(lambda: next(answers), timeout=5, interval=0.0, what="x",
                   done=lambda n: n > 50, on_wait=on_wait)  # fmt: skip
    assert seen == [(0, 5), (1, 5), (2, 5)]


def test_the_probe_runs_even_with_no_time_given() -> None:
    assert wait_until(lambda: True, timeout=0, interval=1, what="x") is True
    with pytest.raises(WaitTimeoutError):
        wait_until(lambda: False, timeout=0, interval=1, what="x")


def test_deadline_counts_down_and_its_sleep_stops_at_the_deadline() -> None:
    deadline = Deadline.after(0.15)
    assert not deadline.expired()
    assert 0 < deadline.remaining() <= 0.15
    began = time.monotonic()
    deadline.sleep(30)
    assert time.monotonic() - began < 1.0
    assert deadline.expired()
    assert deadline.remaining() == 0.0
    assert deadline.elapsed() >= 0.15
    deadline.sleep(30)  # past the deadline: returns at once
    assert time.monotonic() - began < 1.0
