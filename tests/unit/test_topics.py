"""Reading a topic to its end: partition-EOF events end the read, not offsets."""

from __future__ import annotations

from typing import Any

from confluent_kafka import KafkaError

from streaming_ml.kafka.replay import read_until_end


class Event:
    def __init__(self, partition: int, value: bytes | None = None, eof: bool = False) -> None:
        self._partition, self._value, self._eof = partition, value, eof

    def error(self) -> Any:
        return KafkaError(KafkaError._PARTITION_EOF) if self._eof else None

    def partition(self) -> int:
        return self._partition

    def value(self) -> bytes | None:
        return self._value


class ScriptedConsumer:
    def __init__(self, *calls: list[Event]) -> None:
        self.calls = list(calls)
        self.assigned: list[tuple[str, int, int]] = []

    def assign(self, partitions: list[Any]) -> None:
        self.assigned = [(tp.topic, tp.partition, tp.offset) for tp in partitions]

    def consume(self, num_messages: int, timeout: float) -> list[Event]:
        return self.calls.pop(0) if self.calls else []


def test_reads_every_partition_until_its_end_event() -> None:
    consumer = ScriptedConsumer(
        [Event(0, b"a"), Event(1, b"b"), Event(0, eof=True)],
        [Event(1, b"c")],  # transaction markers take offsets: only EOF says "done"
        [Event(1, eof=True)],
        [Event(0, b"never read")],
    )
    seen: list[bytes | None] = []
    progress: list[int] = []
    count, complete = read_until_end(
        consumer, "t", {0: 5, 1: 0}, lambda m: seen.append(m.value()), 5.0, progress.append
    )
    assert (count, complete) == (3, True)
    assert seen == [b"a", b"b", b"c"]
    assert consumer.assigned == [("t", 0, 5), ("t", 1, 0)]
    assert progress == [2, 3, 3]


def test_reports_an_incomplete_read_at_the_deadline() -> None:
    consumer = ScriptedConsumer([Event(0, b"a")])
    count, complete = read_until_end(consumer, "t", {0: 0}, lambda m: None, 0.0)
    assert (count, complete) == (0, False)
