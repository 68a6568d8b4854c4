"""Offsets of a batch: what to commit, and where to rewind when part of it is unfinished."""

from __future__ import annotations

from collections.abc import Iterable

from confluent_kafka import Message, TopicPartition

Position = tuple[str, int, int]  # topic, partition, offset


def partition_of(msg: Message) -> tuple[str, int]:
    """The topic and partition of a consumed message (or of a partition's end event)."""
    topic, partition = msg.topic(), msg.partition()
    if topic is None or partition is None:
        raise ValueError(f"a message without a partition: {topic} [{partition}]")
    return topic, partition


def position_of(msg: Message) -> Position:
    """Where a consumed message sits. confluent-kafka types each part as optional (a
    message built by hand has none); one that poll() or consume() returned has all three."""
    topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
    if topic is None or partition is None or offset is None:
        raise ValueError(f"a message without a position: {topic} [{partition}] @ {offset}")
    return topic, partition, offset


def positions_of(messages: Iterable[Message]) -> list[Position]:
    return [position_of(m) for m in messages]


def offsets_to_commit(positions: Iterable[Position]) -> list[TopicPartition]:
    """The next offset to read per partition, from (topic, partition, offset) of handled
    messages: the highest offset + 1, since every message up to it is done."""
    highest: dict[tuple[str, int], int] = {}
    for topic, partition, offset in positions:
        tp = (topic, partition)
        highest[tp] = max(offset, highest.get(tp, -1))
    return [TopicPartition(t, p, o + 1) for (t, p), o in sorted(highest.items())]


def rewind_points(positions: Iterable[Position]) -> list[TopicPartition]:
    """The lowest offset per partition: where to seek so these messages come again."""
    lowest: dict[tuple[str, int], int] = {}
    for topic, partition, offset in positions:
        tp = (topic, partition)
        lowest[tp] = min(offset, lowest.get(tp, offset))
    return [TopicPartition(t, p, o) for (t, p), o in sorted(lowest.items())]


def split_at_unfinished(
    positions: list[Position], unfinished: Iterable[int]
) -> tuple[list[int], list[TopicPartition]]:
    """Cut each partition at its first unfinished message.

    Returns the indices (into ``positions``) that are done and may be published, and
    the rewind points of the cut partitions: everything from the first unfinished
    offset on is consumed again, so per-partition order holds.
    """
    points = rewind_points(positions[i] for i in unfinished)
    cut = {(tp.topic, tp.partition): tp.offset for tp in points}
    done = [i for i, (t, p, o) in enumerate(positions) if (t, p) not in cut or o < cut[(t, p)]]
    return done, points
