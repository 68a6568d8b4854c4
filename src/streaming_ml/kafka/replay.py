"""Reading a Kafka topic from given offsets to its end, for the readers that need "all of
it, now": the registry's log, the bench's and tests' read-backs.

The end is librdkafka's partition-EOF event, not the high watermark: the bridge writes in
transactions, and their commit markers take offsets no reader is ever handed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from confluent_kafka import KafkaError, Message, TopicPartition

from streaming_ml.kafka.loop import ConsumeLoop

logger = logging.getLogger(__name__)


def read_until_end(
    consumer: Any,
    topic: str,
    start: Mapping[int, int],
    on_message: Callable[[Any], None],
    timeout_s: float,
    on_progress: Callable[[int], None] | None = None,
) -> tuple[int, bool]:
    """Assign ``consumer`` (created with ``enable.partition.eof``) to ``topic`` at
    ``start`` (partition -> offset), call ``on_message`` for each record until every
    partition reports its end; return (records read, whether all ends were reached
    before ``timeout_s``)."""
    count = 0

    def handle(batch: list[Message]) -> None:
        nonlocal count
        for msg in batch:
            on_message(msg)
            count += 1
        if on_progress is not None:
            on_progress(count)

    def read_error(error: KafkaError) -> None:
        logger.debug("read error", extra={"topic": topic, "error": str(error)})

    todo = set(start)
    loop = ConsumeLoop(
        consumer, handle, batch_size=1_000, poll_s=1.0, on_error=read_error,
        on_end=lambda msg: todo.discard(msg.partition()),
    )  # fmt: skip
    loop.assign([TopicPartition(topic, p, offset) for p, offset in start.items()])
    loop.run(timeout=timeout_s, until=lambda: not todo)
    return count, not todo


def read_one(consumer: Any, topic: str, partition: int, offset: int, timeout_s: float) -> Any:
    """The record at ``offset`` of ``topic``'s ``partition``: the message, or None when
    that offset holds no record any more (compacted away, an aborted transaction's) and
    the partition ends there. ``consumer`` is created with ``enable.partition.eof``.
    Raises ``TimeoutError`` when neither came within ``timeout_s``."""
    found: list[Any] = []
    ended: list[bool] = []

    def keep(batch: list[Message]) -> None:
        # The first record at or after ``offset``: another offset means none is there.
        for msg in batch[:1]:
            found.append(msg if msg.offset() == offset else None)

    loop = ConsumeLoop(consumer, keep, batch_size=1, on_end=lambda _msg: ended.append(True))
    loop.assign([TopicPartition(topic, partition, offset)])
    loop.run(timeout=timeout_s, until=lambda: bool(found or ended))
    if not found and not ended:
        raise TimeoutError(f"no record of {topic} [{partition}] @ {offset} in {timeout_s:g}s")
    return found[0] if found else None
