"""Kafka helpers of the bench: end offsets, committed offsets and lag of a group, reading
a topic back, broker append time on the pipeline's topics."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, ConsumerGroupState, TopicPartition
from confluent_kafka.admin import (
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ResourceType,
)
from rich.console import Console

from streaming_ml.bench.progress import Waiting
from streaming_ml.config import Settings
from streaming_ml.errors import BenchError
from streaming_ml.kafka import clients
from streaming_ml.kafka.replay import read_until_end

logger = logging.getLogger(__name__)


def _consumer(settings: Settings, group: str | None = None, **extra: Any) -> Consumer:
    return clients.consumer(
        settings,
        group or f"sml-bench-reader-{uuid.uuid4().hex[:8]}",
        {
            "auto.offset.reset": "earliest",
            "client.id": "streaming-ml-bench",
            "log_level": 3,  # librdkafka's informational lines are noise here
            **extra,
        },
    )


def high_watermarks(consumer: Any, topic: str) -> dict[int, int] | None:
    """End offset per partition, or None when the topic does not exist yet."""
    meta = consumer.list_topics(topic, timeout=15).topics.get(topic)
    if meta is None or meta.error is not None:
        return None
    return {
        p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=15, cached=False)[1]
        for p in meta.partitions
    }


def commit_offsets(settings: Settings, group: str, topic: str, offsets: Mapping[int, int]) -> None:
    """Make ``group`` start reading ``topic`` at ``offsets`` (a new group, nobody in it)."""
    consumer = _consumer(settings, group)
    try:
        consumer.commit(
            offsets=[TopicPartition(topic, p, o) for p, o in offsets.items()], asynchronous=False
        )
    finally:
        consumer.close()


class LagProbe:
    """Consumer lag of a group (end offsets minus committed offsets) on one topic."""

    def __init__(self, settings: Settings, group: str, topic: str) -> None:
        self.topic = topic
        self._consumer = _consumer(settings, group)

    def lag(self) -> int | None:
        ends = high_watermarks(self._consumer, self.topic)
        if ends is None:
            return None
        committed = self._consumer.committed(
            [TopicPartition(self.topic, p) for p in ends], timeout=10
        )
        total = 0
        for tp in committed:
            low, _ = self._consumer.get_watermark_offsets(tp, timeout=10, cached=True)
            at = tp.offset if tp.offset >= 0 else low
            total += max(0, ends[tp.partition] - at)
        return total

    def close(self) -> None:
        self._consumer.close()


def read_topic(
    settings: Settings,
    topic: str,
    start: Mapping[int, int],
    on_message: Callable[[Any], None],
    timeout_s: float,
    console: Console,
    committed_only: bool = True,
) -> int:
    """Read the committed records of ``topic`` from ``start`` (per partition, default the
    beginning) to its current end (``topics.read_until_end``), with progress; call
    ``on_message`` for each; return how many. ``committed_only=False`` also hands out
    records of open and aborted transactions."""
    isolation = "read_committed" if committed_only else "read_uncommitted"
    # Any: mypy would match a ``**`` dict's values against ``group`` too.
    extra: dict[str, Any] = {"enable.partition.eof": True, "isolation.level": isolation}
    consumer = _consumer(settings, **extra)
    try:
        ends = high_watermarks(consumer, topic) or {}
        todo = {
            p: start.get(p, OFFSET_BEGINNING) for p, end in ends.items() if end > start.get(p, 0)
        }
        if not todo:
            return 0
        with Waiting(console, f"reading records back from {topic}", timeout_s) as wait:
            count, complete = read_until_end(
                consumer, topic, todo, on_message, timeout_s, lambda n: wait.update(f"{n} read")
            )
        if not complete:
            raise BenchError(
                f"read only {count} records of {topic} in {timeout_s:.0f}s; "
                "is Kafka overloaded? See `streaming-ml stack logs kafka`"
            )
    finally:
        consumer.close()
    return count


def use_log_append_time(settings: Settings, topics: Sequence[str]) -> dict[str, str]:
    """Have the broker stamp records of ``topics`` with their append time, so a record's
    timestamp is when it reached Kafka (data.PREDICTION_FIELDS: kafka_ts_ms is "appended
    to Kafka") rather than when a producer created it. Returns the previous types."""
    admin = clients.admin(settings, {"log_level": 3})
    key = "message.timestamp.type"
    resources = [ConfigResource(ResourceType.TOPIC, t) for t in topics]
    previous = {}
    for resource, future in admin.describe_configs(resources).items():
        entries = future.result(timeout=15)
        previous[resource.name] = entries[key].value if key in entries else "unknown"
    changes = [
        ConfigResource(
            ResourceType.TOPIC,
            t,
            incremental_configs=[
                ConfigEntry(key, "LogAppendTime", incremental_operation=AlterConfigOpType.SET)
            ],
        )
        for t in topics
        if previous.get(t) != "LogAppendTime"
    ]
    if changes:
        for future in admin.incremental_alter_configs(changes).values():
            future.result(timeout=15)
    return previous


def group_ready(admin: Any, group: str) -> bool:
    """True when ``group`` is stable with at least one member (partitions assigned)."""
    try:
        description = admin.describe_consumer_groups([group], request_timeout=5)[group].result()
    except Exception as error:  # group not known yet is the normal "not ready"
        logger.debug("group not described", extra={"group": group, "error": str(error)})
        return False
    return description.state == ConsumerGroupState.STABLE and bool(description.members)
