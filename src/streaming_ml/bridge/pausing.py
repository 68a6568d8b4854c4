"""Backpressure as state: which partitions are paused, why, and when to probe again."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import TopicPartition

logger = logging.getLogger(__name__)

PROBE_CAP_S = 4.0


@dataclass
class Pause:
    """Consumption is paused until ``ready()`` says yes, tried at growing intervals."""

    what: str
    ready: Callable[[], bool]
    next_try: float
    delay: float
    since: float = field(default_factory=time.monotonic)


class Pausing:
    """Pauses every assigned partition (the service is shared by all), probes readiness
    when due and resumes. Each pause in a row starts twice as long (up to the cap), so a
    record failing alone in a quiet topic does not spin.

    librdkafka keeps a partition's pause flag through revoke and re-assignment, so a
    partition revoked while paused would come back paused for good after the pause
    ended: ``held`` remembers what librdkafka holds paused until it is resumed."""

    def __init__(self, first_delay_s: float, on_change: Callable[[bool], None]) -> None:
        self.first_delay_s = first_delay_s
        self.pause: Pause | None = None
        self.held: set[tuple[str, int]] = set()
        self._in_a_row = 0
        self._on_change = on_change

    @property
    def paused(self) -> bool:
        return self.pause is not None

    def start(
        self, consumer: Any, partitions: list[TopicPartition], what: str, ready: Callable[[], bool]
    ) -> None:
        first = min(PROBE_CAP_S, self.first_delay_s * 2**self._in_a_row)
        self._in_a_row = min(self._in_a_row + 1, 8)
        self.pause = Pause(what, ready, time.monotonic() + first, first)
        self._on_change(True)
        self._hold(consumer, partitions)

    def assigned(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        """From the assign callback: paused now, new partitions are paused too; otherwise
        partitions librdkafka still holds paused from an earlier pause are resumed."""
        if self.pause is not None:
            consumer.incremental_assign(partitions)
            self._hold(consumer, partitions)
            return
        stale = [tp for tp in partitions if (tp.topic, tp.partition) in self.held]
        if stale:
            consumer.incremental_assign(partitions)
            self._release(consumer, stale)

    def _hold(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        consumer.pause(partitions)
        self.held |= {(tp.topic, tp.partition) for tp in partitions}

    def _release(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        consumer.resume(partitions)
        self.held -= {(tp.topic, tp.partition) for tp in partitions}

    def succeeded(self) -> None:
        """A batch went through whole: the next pause starts short again."""
        self._in_a_row = 0

    def probe(self, consumer: Any, partitions: list[TopicPartition]) -> bool:
        """If a probe is due, ask ``ready()``; resume on yes. True once resumed."""
        pause = self.pause
        if pause is None:
            return True
        if time.monotonic() < pause.next_try:
            return False
        if not pause.ready():
            pause.delay = min(PROBE_CAP_S, pause.delay * 2)
            pause.next_try = time.monotonic() + pause.delay
            logger.info(
                f"waiting for the {pause.what}",
                extra={"waited_s": round(time.monotonic() - pause.since, 1)},
            )
            return False
        self.pause = None
        self._on_change(False)
        self._release(consumer, partitions)
        logger.info(
            f"{pause.what} is back: resuming",
            extra={"paused_s": round(time.monotonic() - pause.since, 1)},
        )
        return True

    def wait_s(self) -> float:
        """How long the loop may block in poll() before the next probe is due."""
        if self.pause is None:
            return 0.0
        return max(0.0, min(self.pause.next_try - time.monotonic(), 1.0))
