"""The dashboard's memory: counters turned into rates, and a bounded history of points.

A point is one flat mapping per collection round, ``{"t": epoch seconds, name: value}``;
the page draws each name as a series. Names come and go (a new partition, a new model
tag), so a point carries only the names known at that moment.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Mapping
from typing import Any


class Rate:
    """Per-second rate of a monotonic counter between two readings."""

    def __init__(self) -> None:
        self._last: tuple[float, float] | None = None

    def update(self, now: float, value: float | None) -> float | None:
        """The rate since the previous reading; None on the first reading, when the
        counter is unknown, or when it went down (the process behind it restarted)."""
        previous, self._last = self._last, (None if value is None else (now, value))
        if value is None or previous is None or now <= previous[0]:
            return None
        delta = value - previous[1]
        if delta < 0:
            return None
        return delta / (now - previous[0])


class OffsetRate:
    """Records per second through a set of partition offsets (a topic's ends, a group's
    commits). Only partitions known at both readings count: a group committing a
    partition for the first time is not traffic."""

    def __init__(self) -> None:
        self._last: tuple[float, dict[int, int]] | None = None

    def update(self, now: float, offsets: dict[int, int] | None) -> float | None:
        previous, self._last = self._last, (None if offsets is None else (now, dict(offsets)))
        if offsets is None or previous is None or now <= previous[0]:
            return None
        before = previous[1]
        # A partition new since the last reading, or one that went back (a group's
        # offsets reset), says nothing about traffic in between.
        moved = sum(
            offset - before[p]
            for p, offset in offsets.items()
            if p in before and offset >= before[p]
        )
        return moved / (now - previous[0])


class Rates:
    """One Rate per name."""

    def __init__(self) -> None:
        self._rates: dict[str, Rate] = {}

    def update(self, now: float, name: str, value: float | None) -> float | None:
        return self._rates.setdefault(name, Rate()).update(now, value)


class History:
    """The last ``max_points`` points, numbered from 1 as they come; appended by the
    collector's thread and read by the web server's (hence the lock: a deque must not
    change while it is iterated)."""

    def __init__(self, max_points: int) -> None:
        self.max_points = max_points
        self.count = 0
        self._points: deque[tuple[int, dict[str, Any]]] = deque(maxlen=max_points)
        self._lock = threading.Lock()

    def append(self, point: Mapping[str, Any]) -> None:
        with self._lock:
            self.count += 1
            self._points.append((self.count, dict(point)))

    def points(self) -> list[dict[str, Any]]:
        with self._lock:
            return [point for _, point in self._points]

    def since(self, seen: int) -> tuple[int, list[dict[str, Any]]]:
        """The points after number ``seen``, and the number of the last one."""
        with self._lock:
            new = [(n, point) for n, point in self._points if n > seen]
            return (new[-1][0] if new else seen), [point for _, point in new]

    def __len__(self) -> int:
        return len(self._points)
