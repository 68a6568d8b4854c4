"""The shared consume loop without Kafka: error events, ends, count, timeout, stop."""

from __future__ import annotations

from typing import Any

import pytest
from confluent_kafka import KafkaError, TopicPartition

from streaming_ml.config import Settings
from streaming_ml.errors import BridgeError
from streaming_ml.kafka import clients
from streaming_ml.kafka.loop import ConsumeLoop, seek, usable


class Event:
    def __init__(self, partition: int, offset: int = 0, *, error: KafkaError | None = None) -> None:
        self._partition, self._offset, self._error = partition, offset, error

    def error(self) -> KafkaError | None:
        return self._error

    def topic(self) -> str:
        return "t"

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset


def eof(partition: int) -> Event:
    return Event(partition, error=KafkaError(KafkaError._PARTITION_EOF))


class ScriptedConsumer:
    def __init__(self, *calls: list[Event]) -> None:
        self.calls = list(calls)
        self.consumed = 0
        self.seeks: list[tuple[str, int, int]] = []

    def consume(self, num_messages: int, timeout: float) -> list[Event]:
        self.consumed += 1
        return self.calls.pop(0) if self.calls else []

    def assign(self, partitions: list[Any]) -> None:
        pass

    def seek(self, tp: TopicPartition) -> None:
        self.seeks.append((tp.topic, tp.partition, tp.offset))


def test_error_events_are_not_records_and_ends_are_tracked() -> None:
    transport = KafkaError(KafkaError._TRANSPORT)
    consumer = ScriptedConsumer([Event(0, 1), eof(1), Event(0, 2, error=transport), Event(1, 3)])
    batches: list[list[int]] = []
    errors: list[KafkaError] = []
    loop = ConsumeLoop(
        consumer,  # type: ignore[arg-type]
        lambda batch: batches.append([m.offset() for m in batch]),
        on_error=errors.append,
    )
    assert loop.run(count=1) == 2
    assert batches == [[1, 3]]
    assert loop.ends == {("t", 1)}
    assert [e.code() for e in errors] == [KafkaError._TRANSPORT]


def test_a_fatal_consumer_error_raises() -> None:
    fatal = Event(0, error=KafkaError(KafkaError._FENCED, fatal=True))
    with pytest.raises(BridgeError, match="fatal Kafka consumer error"):
        usable(fatal)  # type: ignore[arg-type]


def test_the_handler_hears_every_pass_and_the_loop_ends_at_its_timeout() -> None:
    consumer = ScriptedConsumer()
    passes: list[int] = []
    loop = ConsumeLoop(consumer, lambda batch: passes.append(len(batch)), poll_s=0.01)  # type: ignore[arg-type]
    assert loop.run(timeout=0.05) == 0
    assert passes and set(passes) == {0}
    assert consumer.consumed == len(passes)


def test_stop_and_until_end_the_run_before_the_next_pass() -> None:
    consumer = ScriptedConsumer([Event(0, 1)], [Event(0, 2)], [eof(0)], [Event(0, 3)])
    loop = ConsumeLoop(consumer, lambda batch: None)  # type: ignore[arg-type]
    assert loop.run(until=lambda: ("t", 0) in loop.ends) == 2
    assert consumer.consumed == 3
    loop.stop()
    assert loop.run(count=10) == 0
    assert consumer.consumed == 3


def test_seek_moves_only_the_owned_partitions() -> None:
    consumer = ScriptedConsumer()
    points = [TopicPartition("t", 0, 5), TopicPartition("t", 1, 7)]
    seek(consumer, points, owned={("t", 1)})  # type: ignore[arg-type]
    assert consumer.seeks == [("t", 1, 7)]
    seek(consumer, points)  # type: ignore[arg-type]
    assert consumer.seeks[1:] == [("t", 0, 5), ("t", 1, 7)]


def test_every_client_config_starts_from_the_common_one() -> None:
    settings = Settings(host="broker", kafka_port=1234)
    evaluator = clients.consumer_config(settings, "g", client_id="evaluator", static=False)
    producer = clients.producer_config(settings, "g", client_id="evaluator")
    for config in (evaluator, producer):
        assert config["bootstrap.servers"] == "broker:1234"
        assert config["client.id"] == "evaluator"
    static = Settings(bridge_instance_id="bridge-a")
    assert "group.instance.id" not in clients.consumer_config(static, "g", static=False)
    assert clients.consumer_config(static, "g")["group.instance.id"] == "bridge-a"
