"""The consume-process-commit loop: poll a batch, drop error events, hand the records on.

The evaluator, the learner, the service's registry follower, ``monitor`` and the
read-to-the-end readers run their consumers through ``ConsumeLoop``; the handler does the
work and commits (or lets its transaction carry the offsets). The bridge keeps its own
batch shape (collect with a linger, pause and probe) but filters with the same ``usable``
and seeks with the same ``seek``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable

from confluent_kafka import Consumer, KafkaError, Message, TopicPartition

from streaming_ml.errors import BridgeError
from streaming_ml.kafka.offsets import partition_of
from streaming_ml.system.waits import Deadline

logger = logging.getLogger(__name__)

TopicPartitionKey = tuple[str, int]


def usable(
    msg: Message,
    on_end: Callable[[Message], None] | None = None,
    on_error: Callable[[KafkaError], None] | None = None,
) -> bool:
    """Whether ``msg`` is a record; an error event is not.

    A partition-EOF event goes to ``on_end``; any other error to ``on_error``, or is
    logged (broker restarts and unknown topics show up here, and librdkafka recovers).
    A fatal error cannot be recovered from in this process: it raises.
    """
    error = msg.error()
    if error is None:
        return True
    if error.code() == KafkaError._PARTITION_EOF:
        if on_end is not None:
            on_end(msg)
        return False
    if on_error is not None:
        on_error(error)
    else:
        logger.warning("consumer error", extra={"error": str(error)})
    if error.fatal():
        raise BridgeError(f"fatal Kafka consumer error: {error}; restart the process")
    return False


def seek(
    consumer: Consumer,
    points: Iterable[TopicPartition],
    owned: set[TopicPartitionKey] | None = None,
) -> None:
    """Seek to ``points`` (of the ``owned`` partitions only, when given: a partition
    revoked meanwhile is not this consumer's to move)."""
    for tp in points:
        if owned is None or (tp.topic, tp.partition) in owned:
            consumer.seek(tp)


class ConsumeLoop:
    """Poll up to ``batch_size`` messages at a time and call ``handle`` with the records
    among them, on every pass (an empty list too, so a handler can do its idle work).

    ``run()`` returns on ``stop()``, after ``count`` records, after ``timeout`` seconds or
    once ``until()`` says so. ``stopping``: the owner's stop event, when it has one that
    may be set before the loop exists (a signal handler installed early).
    """

    def __init__(
        self,
        consumer: Consumer,
        handle: Callable[[list[Message]], None],
        *,
        batch_size: int = 500,
        poll_s: float = 0.5,
        on_error: Callable[[KafkaError], None] | None = None,
        on_end: Callable[[Message], None] | None = None,
        stopping: threading.Event | None = None,
    ) -> None:
        self.consumer = consumer
        self.batch_size = batch_size
        self.poll_s = poll_s
        # Partitions whose end was reached (with enable.partition.eof; unless on_end).
        self.ends: set[TopicPartitionKey] = set()
        self.assignment: set[TopicPartitionKey] = set()
        self._handle = handle
        self._on_error = on_error
        self._on_end = on_end if on_end is not None else self._reached_end
        self._stop = stopping if stopping is not None else threading.Event()

    def stop(self) -> None:
        """Return from run() after the batch in hand (safe from a signal handler)."""
        self._stop.set()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``, less if stopped; True when stopped."""
        return self._stop.wait(seconds)

    def subscribe(
        self,
        topics: list[str],
        on_assign: Callable[[list[TopicPartition]], None] | None = None,
        on_revoke: Callable[[list[TopicPartition]], None] | None = None,
    ) -> None:
        """Join the group on ``topics``; ``assignment`` follows the rebalances, and the
        callbacks hear of them after it has."""

        def assigned(_consumer: Consumer, partitions: list[TopicPartition]) -> None:
            self.assignment |= {(tp.topic, tp.partition) for tp in partitions}
            if on_assign is not None:
                on_assign(partitions)

        def revoked(_consumer: Consumer, partitions: list[TopicPartition]) -> None:
            self.assignment -= {(tp.topic, tp.partition) for tp in partitions}
            if on_revoke is not None:
                on_revoke(partitions)

        self.consumer.subscribe(topics, on_assign=assigned, on_revoke=revoked)

    def assign(self, partitions: list[TopicPartition]) -> None:
        """Read ``partitions`` from the given offsets, outside any group rebalance."""
        self.consumer.assign(partitions)
        self.assignment = {(tp.topic, tp.partition) for tp in partitions}

    def _reached_end(self, msg: Message) -> None:
        self.ends.add(partition_of(msg))

    def poll(self, timeout_s: float | None = None) -> list[Message]:
        """One pass: consume, keep the records, hand them on; the records."""
        timeout = self.poll_s if timeout_s is None else timeout_s
        messages = self.consumer.consume(num_messages=self.batch_size, timeout=timeout)
        batch = [m for m in messages if usable(m, self._on_end, self._on_error)]
        self._handle(batch)
        return batch

    def run(
        self,
        count: int | None = None,
        timeout: float | None = None,
        until: Callable[[], bool] | None = None,
    ) -> int:
        """Pass after pass until stopped, ``count`` records, ``timeout`` or ``until()``;
        the number of records handled."""
        deadline = Deadline.after(timeout) if timeout is not None else None
        handled = 0
        while not self._stop.is_set():
            if count is not None and handled >= count:
                break
            if until is not None and until():
                break
            wait = self.poll_s
            if deadline is not None:
                if deadline.expired():
                    break
                wait = min(wait, deadline.remaining())
            handled += len(self.poll(wait))
        return handled
