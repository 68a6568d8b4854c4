"""Reading a Kafka topic from given offsets to its end, for the readers that need "all of
it, now": the registry's log, the bench's and tests' read-backs.

The end is librdkafka's partition-EOF event, not the high watermark: the bridge writes in
transactions, and their commit markers take offsets no reader is ever handed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

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
    from confluent_kafka import KafkaError, TopicPartition

    todo = set(start)
    consumer.assign([TopicPartition(topic, p, offset) for p, offset in start.items()])
    deadline = time.monotonic() + timeout_s
    count = 0
    while todo:
        if time.monotonic() > deadline:
            return count, False
        for msg in consumer.consume(num_messages=1_000, timeout=1.0):
            error = msg.error()
            if error is None:
                on_message(msg)
                count += 1
            elif error.code() == KafkaError._PARTITION_EOF:
                todo.discard(msg.partition())
            else:
                logger.debug("read error", extra={"topic": topic, "error": str(error)})
        if on_progress is not None:
            on_progress(count)
    return count, True
