"""The bridge loop without Kafka or the service: batches handled, paused, rewound, published.

The Bridge's collaborators are replaced by fakes (consumer, decoder, pricing client,
output, serializers) and its steps are called directly, so every scenario runs in
milliseconds and time is controlled through ``Pause.next_try``, never by sleeping.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import pytest
from confluent_kafka import TopicPartition
from confluent_kafka.schema_registry import SchemaRegistryClient

from streaming_ml.bridge import loop
from streaming_ml.bridge.loop import Batch, Bridge
from streaming_ml.bridge.metrics import STEPS, StepClock
from streaming_ml.bridge.pricing import (
    Pricer,
    ServiceFailed,
    ServiceRejected,
    ServiceUnavailable,
)
from streaming_ml.bridge.records import RecordBuilder
from streaming_ml.config import Settings
from streaming_ml.kafka.changes import Change
from streaming_ml.kafka.output import OutputAborted, OutputFatal, OutRecord
from streaming_ml.schema.listing import FEATURES
from tests.fixtures.clock import FakeClock

TOPIC = "cars.public.car_listings"
KAFKA_TS_MS = 1_700_000_001_000
SOURCE_TS_MS = 1_700_000_000_000

ROW: dict[str, Any] = {
    "model": "Fiesta", "year": 2017, "price": 9000, "transmission": "Manual",
    "mileage": 21000, "fuelType": "Petrol", "tax": 145, "mpg": 55.4, "engineSize": 1.0,
}  # fmt: skip

Position = tuple[str, int, int]


def mileage_of(listing_id: int) -> int:
    """Each listing gets its own mileage, so the fake service can tell rows apart."""
    return 20_000 + listing_id


def insert(listing_id: int) -> Change:
    return Change("c", listing_id, {**ROW, "mileage": mileage_of(listing_id)}, SOURCE_TS_MS, 42)


def update(listing_id: int, unchanged: frozenset[str] = frozenset()) -> Change:
    row = {**ROW, "mileage": mileage_of(listing_id)}
    return Change("u", listing_id, row, SOURCE_TS_MS, 43, unchanged)


def delete(listing_id: int) -> Change:
    return Change("d", listing_id, None, SOURCE_TS_MS, 44)


class FakeMessage:
    """A consumed change event; the fake decoder hands back ``change`` as is."""

    def __init__(self, partition: int, offset: int, change: Change | str) -> None:
        self._partition = partition
        self._offset = offset
        self.change = change

    def topic(self) -> str:
        return TOPIC

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes:
        return b"key@%d:%d" % (self._partition, self._offset)

    def value(self) -> bytes:
        return b"value@%d:%d" % (self._partition, self._offset)

    def headers(self) -> None:
        return None

    def timestamp(self) -> tuple[int, int]:
        return (1, KAFKA_TS_MS)

    def error(self) -> None:
        return None


class FakeDecoder:
    def decode(self, msg: FakeMessage) -> Change | str:
        return msg.change


class FakeConsumer:
    """Hands out ``messages`` (at most ``num_messages`` per call); ``before_call[n]``
    runs inside the n-th consume() call, where librdkafka runs rebalance callbacks.
    Like librdkafka, a partition's pause flag survives revoke and re-assignment, and
    nothing is handed out from a paused partition."""

    def __init__(
        self,
        messages: Sequence[FakeMessage] = (),
        before_call: dict[int, Callable[[], None]] | None = None,
    ) -> None:
        self.queue = list(messages)
        self.before_call = before_call or {}
        self.consume_calls = 0
        self.paused: list[list[tuple[str, int]]] = []
        self.resumed: list[list[tuple[str, int]]] = []
        self.assigned: list[list[tuple[str, int]]] = []
        self.seeks: list[Position] = []
        self.paused_now: set[tuple[str, int]] = set()

    def consume(self, num_messages: int = 1, timeout: float = -1) -> list[FakeMessage]:
        self.consume_calls += 1
        hook = self.before_call.get(self.consume_calls)
        if hook is not None:
            hook()
        free = [m for m in self.queue if (m.topic(), m.partition()) not in self.paused_now]
        taken = free[:num_messages]
        self.queue = [m for m in self.queue if m not in taken]
        return taken

    def pause(self, partitions: list[TopicPartition]) -> None:
        self.paused.append([(tp.topic, tp.partition) for tp in partitions])
        self.paused_now |= {(tp.topic, tp.partition) for tp in partitions}

    def resume(self, partitions: list[TopicPartition]) -> None:
        self.resumed.append([(tp.topic, tp.partition) for tp in partitions])
        self.paused_now -= {(tp.topic, tp.partition) for tp in partitions}

    def incremental_assign(self, partitions: list[TopicPartition]) -> None:
        self.assigned.append([(tp.topic, tp.partition) for tp in partitions])

    def seek(self, tp: TopicPartition) -> None:
        self.seeks.append((tp.topic, tp.partition, tp.offset))

    def position(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        return [TopicPartition(tp.topic, tp.partition, 10) for tp in partitions]

    def get_watermark_offsets(
        self, tp: TopicPartition, timeout: float | None = None, cached: bool = False
    ) -> tuple[int, int]:
        return (0, 12)

    def consumer_group_metadata(self) -> object:
        return object()


class FakeOutput:
    """Keeps what each publish() was given; raises ``error`` instead when set."""

    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.published: list[tuple[list[OutRecord], list[Position]]] = []

    def publish(
        self,
        records: Sequence[OutRecord],
        offsets: Sequence[TopicPartition],
        after_produce: Callable[[], None] | None = None,
    ) -> None:
        if self.error is not None:
            raise self.error
        self.published.append(
            (list(records), [(tp.topic, tp.partition, tp.offset) for tp in offsets])
        )

    def close(self) -> None:
        pass


def explanation_of(price: float, main: str) -> dict[str, Any]:
    """An explanation of ``price`` from a base of 100 in which ``main`` carries most."""
    rest = {name: 1.0 for name in FEATURES if name != main}
    return {
        "base_price": 100.0,
        "contributions": {**rest, main: price - 100.0 - sum(rest.values())},
    }


class FakeService:
    """The prediction client: prices rows by mileage; listings in ``failing`` make a
    call fail with a 500, in ``rejected`` with a 422; ``down`` refuses every call."""

    def __init__(self) -> None:
        self.failing: set[int] = set()
        self.rejected: set[int] = set()
        self.down = False
        self.is_ready = True
        self.ready_calls = 0
        self.shadow: float | None = None  # a shadow model's price for every row
        # Answer with explanations: the served price's, and the shadow's when it has one.
        self.explain = False
        self.shadow_explains = True
        self.seen: list[dict[str, Any]] = []

    def predict(self, rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        if self.down:
            raise ServiceUnavailable("ConnectionError: connection refused")
        listings = {row["mileage"] - mileage_of(0) for row in rows}
        if listings & self.rejected:
            raise ServiceRejected("HTTP 422: records[0].model: unknown model")
        if listings & self.failing:
            raise ServiceFailed("HTTP 500: internal error")
        self.seen.extend(rows)
        answer: list[dict[str, Any]] = [
            {"predicted_price": float(row["mileage"]), "model_tag": "ford_price:v1"} for row in rows
        ]
        if self.shadow is not None:
            for item in answer:
                item["shadow"] = {"predicted_price": self.shadow, "model_tag": "ford_price:v9"}
        if self.explain:
            for item in answer:
                item["explanation"] = explanation_of(item["predicted_price"], "mileage")
                if "shadow" in item and self.shadow_explains:
                    item["shadow"]["explanation"] = explanation_of(self.shadow or 0.0, "year")
        return answer

    def ready(self) -> bool:
        self.ready_calls += 1
        return self.is_ready


def serialize(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, sort_keys=True).encode()


def bridge_with(
    consumer: FakeConsumer,
    service: FakeService,
    output: FakeOutput | None = None,
    *,
    max_strikes: int = 3,
    partitions: Sequence[int] = (0, 1),
    shadow: bool = False,
    explain: bool = False,
) -> Bridge:
    settings = Settings(
        service_retries=0,
        service_backoff_s=1.0,
        service_max_strikes=max_strikes,
        batch_max_events=100,
        batch_linger_ms=60_000,  # a batch ends when full, not on a clock
        bridge_explain=explain,
    )
    bridge = Bridge(settings, serve_metrics=False)
    bridge._consumer = consumer  # type: ignore[assignment]
    bridge._output = output or FakeOutput()  # type: ignore[assignment]
    bridge._decoder = FakeDecoder()  # type: ignore[assignment]
    bridge._pricer = Pricer(
        service,  # type: ignore[arg-type]
        retry_delays=(),
        max_strikes=max_strikes,
        wait=lambda _seconds: False,
    )
    records = RecordBuilder(
        SchemaRegistryClient({"url": "http://127.0.0.1:9"}),  # never called: see below
        "http://127.0.0.1:9",
        settings.predictions_topic,
        settings.dlq_topic,
        settings.shadow_topic if shadow else None,
    )
    for writer in ("_key_write", "_value_write", "_shadow_key_write", "_shadow_value_write"):
        setattr(records, writer, serialize)
    bridge._records = records
    bridge._on_assign(consumer, [TopicPartition(TOPIC, p) for p in partitions])  # type: ignore[arg-type]
    return bridge


def batch_of(*messages: FakeMessage) -> Batch:
    return Batch(list(messages), [KAFKA_TS_MS + 5] * len(messages))  # type: ignore[arg-type]


def published_records(output: FakeOutput) -> list[OutRecord]:
    return [record for records, _ in output.published for record in records]


def listing_of(record: OutRecord) -> int:
    return json.loads(record.key or b"null")["listing_id"]


def header(record: OutRecord, name: str) -> str:
    return dict(record.headers or [])[name].decode()


# -- backpressure: the service is down --


def test_service_down_publishes_nothing_and_rewinds_each_partition_to_its_first_offset() -> None:
    service = FakeService()
    service.down = True
    consumer, output = FakeConsumer(), FakeOutput()
    bridge = bridge_with(consumer, service, output)
    bridge._handle(
        batch_of(
            FakeMessage(0, 5, insert(1)),
            FakeMessage(1, 2, insert(2)),
            FakeMessage(0, 6, insert(3)),
            FakeMessage(1, 3, insert(4)),
        )
    )
    assert output.published == []
    assert consumer.seeks == [(TOPIC, 0, 5), (TOPIC, 1, 2)]
    assert consumer.paused == [[(TOPIC, 0), (TOPIC, 1)]]
    assert bridge._pausing.pause is not None and bridge._pausing.pause.what == "prediction service"
    assert bridge.stats.events == 0
    assert bridge.metrics.registry.get_sample_value("sml_bridge_paused") == 1


def paused_by_an_outage() -> tuple[Bridge, FakeService, FakeConsumer]:
    """A bridge on partitions 0 and 1 that paused because the service was down."""
    service = FakeService()
    service.down = True
    consumer = FakeConsumer()
    bridge = bridge_with(consumer, service)
    bridge._handle(batch_of(FakeMessage(0, 5, insert(1))))
    return bridge, service, consumer


def probe_now(bridge: Bridge) -> None:
    """One paused pass with the readiness probe due."""
    assert bridge._pausing.pause is not None
    bridge._pausing.pause.next_try = time.monotonic() - 1
    bridge._while_paused()


def test_paused_bridge_probes_readiness_only_when_due_and_resumes_once_ready() -> None:
    bridge, service, consumer = paused_by_an_outage()
    pause = bridge._pausing.pause
    assert pause is not None

    pause.next_try = time.monotonic() + 3600  # not due: no probe
    bridge._while_paused()
    assert service.ready_calls == 0
    assert bridge._pausing.pause is pause

    service.is_ready = False
    pause.next_try = time.monotonic() - 1  # due, but the service is not ready
    bridge._while_paused()
    assert service.ready_calls == 1
    assert bridge._pausing.pause is pause and consumer.resumed == []
    assert pause.delay == 2.0  # the probe interval doubles
    assert pause.next_try > time.monotonic()

    service.is_ready = True
    pause.next_try = time.monotonic() - 1
    bridge._while_paused()
    assert bridge._pausing.pause is None
    assert consumer.resumed == [[(TOPIC, 0), (TOPIC, 1)]]
    assert bridge.metrics.registry.get_sample_value("sml_bridge_paused") == 0


def test_partitions_assigned_while_paused_are_paused_and_later_resumed() -> None:
    bridge, _service, consumer = paused_by_an_outage()

    bridge._on_assign(consumer, [TopicPartition(TOPIC, 2)])  # type: ignore[arg-type]
    assert consumer.assigned == [[(TOPIC, 2)]]
    assert consumer.paused[-1] == [(TOPIC, 2)]

    probe_now(bridge)
    assert consumer.resumed == [[(TOPIC, 0), (TOPIC, 1), (TOPIC, 2)]]


def test_a_partition_revoked_while_paused_is_resumed_when_it_comes_back() -> None:
    # librdkafka keeps the pause flag of a revoked partition: without an explicit resume
    # on re-assignment, partition 1 would never be consumed again (seen under load when a
    # Kafka restart paused a bridge while the group rebalanced).
    bridge, service, consumer = paused_by_an_outage()
    bridge._on_revoke(consumer, [TopicPartition(TOPIC, 1)])  # type: ignore[arg-type]
    service.down = False
    probe_now(bridge)
    assert consumer.resumed == [[(TOPIC, 0)]]
    assert consumer.paused_now == {(TOPIC, 1)}

    consumer.queue = [FakeMessage(1, 9, insert(2))]
    bridge._on_assign(consumer, [TopicPartition(TOPIC, 1)])  # type: ignore[arg-type]
    assert consumer.resumed[-1] == [(TOPIC, 1)]
    assert [m.offset() for m in bridge._collect(1).messages] == [9]


def test_assigning_partitions_leaves_the_pause_flag_alone_when_none_is_held() -> None:
    consumer = FakeConsumer()
    bridge = bridge_with(consumer, FakeService())
    bridge._on_assign(consumer, [TopicPartition(TOPIC, 2)])  # type: ignore[arg-type]
    # The callback's own assign is left to the client; no pause/resume version bump.
    assert consumer.assigned == [] and consumer.resumed == [] and consumer.paused == []


# -- rebalances --


def test_messages_of_a_partition_revoked_while_collecting_are_dropped() -> None:
    def revoke_partition_0() -> None:
        bridge._on_revoke(consumer, [TopicPartition(TOPIC, 0)])  # type: ignore[arg-type]

    consumer = FakeConsumer(
        [FakeMessage(0, 5, insert(1)), FakeMessage(1, 7, insert(2)), FakeMessage(1, 8, insert(3))],
        before_call={2: revoke_partition_0},
    )
    bridge = bridge_with(consumer, FakeService())
    batch = bridge._collect(3)
    assert consumer.consume_calls == 2  # partition 0's message came before the revoke
    assert batch.positions == [(TOPIC, 1, 7), (TOPIC, 1, 8)]
    assert len(batch.received_ms) == 2


def test_strikes_of_revoked_partitions_are_forgotten() -> None:
    service = FakeService()
    service.failing = {1}
    consumer, output = FakeConsumer(), FakeOutput()
    bridge = bridge_with(consumer, service, output, max_strikes=2)
    batch = batch_of(FakeMessage(0, 5, insert(1)), FakeMessage(1, 7, insert(2)))
    bridge._handle(batch)  # listing 1 fails alone: strike 1 of 2

    bridge._on_revoke(consumer, [TopicPartition(TOPIC, 0)])  # type: ignore[arg-type]
    bridge._on_assign(consumer, [TopicPartition(TOPIC, 0)])  # type: ignore[arg-type]
    bridge._handle(batch)  # a fresh start for listing 1: strike 1 again

    assert [r.topic for r in published_records(output)] == [bridge.settings.predictions_topic] * 2
    assert [offsets for _, offsets in output.published] == [[(TOPIC, 1, 8)], [(TOPIC, 1, 8)]]


def test_record_failing_alone_on_every_pass_is_dead_lettered_at_the_last_strike() -> None:
    service = FakeService()
    service.failing = {1}
    consumer, output = FakeConsumer(), FakeOutput()
    bridge = bridge_with(consumer, service, output, max_strikes=2)
    batch = batch_of(FakeMessage(0, 5, insert(1)), FakeMessage(1, 7, insert(2)))
    bridge._handle(batch)
    bridge._handle(batch)

    records, offsets = output.published[-1]
    assert [r.topic for r in records] == [
        bridge.settings.dlq_topic,
        bridge.settings.predictions_topic,
    ]
    assert header(records[0], "reason") == (
        "service: HTTP 500: internal error "
        "(failed 2 times on its own while other records were priced)"
    )
    assert (records[0].key, records[0].value) == (b"key@0:5", b"value@0:5")
    assert offsets == [(TOPIC, 0, 6), (TOPIC, 1, 8)]


# -- per-partition order --


def test_record_failing_alone_holds_back_the_rest_of_its_partition_only() -> None:
    service = FakeService()
    service.failing = {2}
    consumer, output = FakeConsumer(), FakeOutput()
    bridge = bridge_with(consumer, service, output)
    bridge._handle(
        batch_of(
            FakeMessage(0, 10, insert(1)),
            FakeMessage(0, 11, insert(2)),  # fails on its own
            FakeMessage(1, 20, insert(4)),
            FakeMessage(0, 12, insert(3)),  # after it in partition 0: must wait
            FakeMessage(1, 21, insert(5)),
        )
    )
    [(records, offsets)] = output.published
    assert [listing_of(r) for r in records] == [1, 4, 5]
    assert offsets == [(TOPIC, 0, 11), (TOPIC, 1, 22)]  # partition 0: its first unfinished
    assert consumer.seeks == [(TOPIC, 0, 11)]
    assert bridge._pausing.pause is not None  # retried after a probe, not at once
    assert bridge.stats.events == 3 and bridge.stats.predicted == 3


# -- what is published --


def test_service_rejected_update_is_dead_lettered_and_its_old_price_withdrawn() -> None:
    service = FakeService()
    service.rejected = {7, 8}
    output = FakeOutput()
    bridge = bridge_with(FakeConsumer(), service, output)
    bridge._handle(batch_of(FakeMessage(0, 3, update(7)), FakeMessage(0, 4, insert(8))))

    [(records, offsets)] = output.published
    s = bridge.settings
    assert [(r.topic, r.key, r.value) for r in records] == [
        (s.dlq_topic, b"key@0:3", b"value@0:3"),
        (s.predictions_topic, b'{"listing_id": 7}', None),  # the update's tombstone
        (s.dlq_topic, b"key@0:4", b"value@0:4"),  # an insert had no price to withdraw
    ]
    assert header(records[0], "reason") == "service: HTTP 422: records[0].model: unknown model"
    source = ("source.topic", "source.partition", "source.offset")
    assert [header(records[0], name) for name in source] == [TOPIC, "0", "3"]
    assert offsets == [(TOPIC, 0, 5)]
    assert (bridge.stats.dlq, bridge.stats.tombstones, bridge.stats.predicted) == (2, 1, 0)
    assert (
        bridge.metrics.registry.get_sample_value("sml_bridge_dlq_total", {"stage": "service"}) == 2
    )


def test_prediction_record_carries_the_price_and_falls_back_to_a_dlq_record() -> None:
    output = FakeOutput()
    bridge = bridge_with(FakeConsumer(), FakeService(), output)
    bridge._handle(batch_of(FakeMessage(1, 9, insert(3))))

    [record] = published_records(output)
    value = json.loads(record.value or b"")
    assert (value["listing_id"], value["predicted_price"]) == (3, float(mileage_of(3)))
    assert (value["source_ts_ms"], value["kafka_ts_ms"]) == (SOURCE_TS_MS, KAFKA_TS_MS)
    assert record.fallback is not None and record.fallback.topic == bridge.settings.dlq_topic
    assert record.fallback.value == b"value@1:9"
    assert header(record.fallback, "reason") == "output: Kafka refused the prediction record"


def test_published_offsets_are_the_last_offset_plus_one_per_partition() -> None:
    price_only = frozenset(FEATURES)
    output = FakeOutput()
    bridge = bridge_with(FakeConsumer(), FakeService(), output)
    bridge._handle(
        batch_of(
            FakeMessage(0, 3, insert(1)),
            FakeMessage(1, 7, update(2, unchanged=price_only)),  # skipped, still consumed
            FakeMessage(0, 4, delete(3)),
            FakeMessage(1, 8, "deserialization: not Avro"),  # dead-lettered
            FakeMessage(0, 5, update(4)),
        )
    )
    [(records, offsets)] = output.published
    assert offsets == [(TOPIC, 0, 6), (TOPIC, 1, 9)]
    assert [r.topic for r in records] == [
        bridge.settings.predictions_topic,
        bridge.settings.predictions_topic,
        bridge.settings.dlq_topic,
        bridge.settings.predictions_topic,
    ]
    assert records[1].value is None  # the delete's tombstone
    assert bridge.stats.events == 5
    assert (bridge.stats.predicted, bridge.stats.skipped_unchanged) == (2, 1)


def without_mpg(change: Change) -> Change:
    """The change as Debezium sends it once ``mpg`` was dropped from the table."""
    assert change.row is not None
    return replace(change, row={k: v for k, v in change.row.items() if k != "mpg"})


def test_a_record_lacking_a_feature_is_dead_lettered_with_one_alert_per_partition() -> None:
    output = FakeOutput()
    bridge = bridge_with(FakeConsumer(), FakeService(), output)
    bridge._records.alerts_topic = "alerts"
    bridge._records._alert_key = lambda obj, _ctx: serialize(obj)  # type: ignore[method-assign]
    bridge._records._alert_value = lambda obj, _ctx: serialize(obj)  # type: ignore[method-assign]
    batch = batch_of(
        FakeMessage(0, 3, without_mpg(insert(1))),
        FakeMessage(0, 4, without_mpg(update(2))),
        FakeMessage(1, 9, insert(3)),
    )
    bridge._handle(batch)

    [(records, _offsets)] = output.published
    s = bridge.settings
    assert [(r.topic, r.key) for r in records] == [
        (s.dlq_topic, b"key@0:3"),
        ("alerts", b'{"alert_id": "missing_feature:mpg:p0"}'),
        (s.dlq_topic, b"key@0:4"),
        (s.predictions_topic, b'{"listing_id": 2}'),  # the update's old price withdrawn
        (s.predictions_topic, b'{"listing_id": 3}'),
    ]
    reason = header(records[0], "reason")
    assert (
        reason == "mpg: is not in the record: its column was dropped or renamed in the source table"
    )
    alert = json.loads(records[1].value or b"")
    assert (alert["kind"], alert["feature"], alert["source_partition"]) == (
        "missing_feature",
        "mpg",
        0,
    )
    assert "docs/schema-evolution.md" in alert["message"]
    assert (
        bridge.metrics.registry.get_sample_value("sml_bridge_dlq_total", {"stage": "schema"}) == 2
    )

    # Later records of that partition raise no new alert; the same batch consumed again
    # (its transaction aborted) raises it again, so an aborted alert is not lost.
    bridge._handle(batch_of(FakeMessage(0, 5, without_mpg(insert(4)))))
    bridge._handle(batch)
    alerts = [r for records, _ in output.published[1:] for r in records if r.topic == "alerts"]
    assert [json.loads(r.key or b"") for r in alerts] == [{"alert_id": "missing_feature:mpg:p0"}]


def test_aborted_output_rewinds_to_the_batch_start_and_counts_nothing_done() -> None:
    consumer = FakeConsumer()
    output = FakeOutput(OutputAborted("Broker: Specified group generation id is not valid"))
    bridge = bridge_with(consumer, FakeService(), output)
    bridge._handle(
        batch_of(
            FakeMessage(0, 3, insert(1)), FakeMessage(1, 8, insert(2)), FakeMessage(0, 4, insert(3))
        )
    )
    assert consumer.seeks == [(TOPIC, 0, 3), (TOPIC, 1, 8)]
    assert (bridge.stats.events, bridge.stats.batches, bridge.stats.predicted) == (0, 0, 0)
    assert bridge._pausing.pause is None  # consumed again at once
    assert bridge.metrics.registry.get_sample_value("sml_bridge_transactions_aborted_total") == 1


def test_fenced_output_is_dropped_and_the_batch_rewound() -> None:
    consumer = FakeConsumer()
    bridge = bridge_with(consumer, FakeService(), FakeOutput(OutputFatal("fenced")))
    bridge._handle(batch_of(FakeMessage(0, 3, insert(1)), FakeMessage(0, 4, insert(2))))
    assert bridge._output is None  # a new producer is made for the next batch
    assert consumer.seeks == [(TOPIC, 0, 3)]
    assert bridge.stats.events == 0


def test_rewind_leaves_partitions_that_are_no_longer_assigned_alone() -> None:
    consumer = FakeConsumer()
    bridge = bridge_with(consumer, FakeService(), FakeOutput(OutputAborted("aborted")))
    batch = batch_of(FakeMessage(0, 3, insert(1)), FakeMessage(1, 8, insert(2)))
    bridge._on_revoke(consumer, [TopicPartition(TOPIC, 1)])  # type: ignore[arg-type]
    bridge._handle(batch)
    assert consumer.seeks == [(TOPIC, 0, 3)]


# -- experiments --


def test_shadow_prices_go_to_the_shadow_topic_in_the_same_transaction() -> None:
    service = FakeService()
    service.shadow = 777.0
    consumer, output = FakeConsumer(), FakeOutput()
    bridge = bridge_with(consumer, service, output, shadow=True)
    bridge._handle(batch_of(FakeMessage(0, 5, insert(1)), FakeMessage(1, 7, delete(2))))

    ((records, offsets),) = output.published  # one transaction: both topics and the offsets
    by_topic = [(r.topic, json.loads(r.key), r.value and json.loads(r.value)) for r in records]
    predictions, shadow_topic = bridge.settings.predictions_topic, bridge.settings.shadow_topic
    served = next(v for t, _, v in by_topic if t == predictions and v)
    shadow = next(v for t, _, v in by_topic if t == shadow_topic and v)
    assert (served["predicted_price"], served["arm"]) == (mileage_of(1), "champion")
    assert (shadow["predicted_price"], shadow["model_tag"], shadow["arm"]) == (
        777.0, "ford_price:v9", "shadow",
    )  # fmt: skip
    assert shadow["listing_id"] == served["listing_id"] == 1
    # The delete clears both tables.
    tombstones = {(t, k["listing_id"]) for t, k, v in by_topic if v is None}
    assert tombstones == {(predictions, 2), (shadow_topic, 2)}
    assert offsets == [(TOPIC, 0, 6), (TOPIC, 1, 8)]
    # The service gets each listing's id, to keep it on one A/B arm.
    assert [row["listing_id"] for row in service.seen] == [1]


# -- explanations (SML_BRIDGE_EXPLAIN) --


def published_values(bridge: Bridge, output: FakeOutput) -> tuple[dict, dict]:
    """The served and the shadow prediction values of a one-listing batch."""
    values = {r.topic: json.loads(r.value) for r in published_records(output) if r.value}
    return values[bridge.settings.predictions_topic], values[bridge.settings.shadow_topic]


def top(value: dict[str, Any]) -> list[Any]:
    return [value[name] for name in ("base_price", "top1_feature", "top1_amount")]


def test_each_record_carries_the_top_contributions_of_the_model_that_priced_it() -> None:
    service = FakeService()
    service.shadow, service.explain = 777.0, True
    consumer, output = FakeConsumer(), FakeOutput()
    bridge = bridge_with(consumer, service, output, shadow=True, explain=True)
    bridge._handle(batch_of(FakeMessage(0, 5, insert(1))))

    served, shadow = published_values(bridge, output)
    assert top(served) == [100.0, "mileage", mileage_of(1) - 100.0 - 7]
    assert top(shadow) == [100.0, "year", 777.0 - 100.0 - 7]
    # The other places are 1.0 each, in the service's (data.FEATURES) order.
    assert (served["top2_feature"], served["top3_amount"]) == ("model", 1.0)
    assert bridge.metrics.registry.get_sample_value("sml_bridge_explained_total") == 1


def test_a_shadow_without_an_explanation_never_takes_the_served_models() -> None:
    service = FakeService()
    service.shadow, service.explain, service.shadow_explains = 777.0, True, False
    consumer, output = FakeConsumer(), FakeOutput()
    bridge = bridge_with(consumer, service, output, shadow=True, explain=True)
    bridge._handle(batch_of(FakeMessage(0, 5, insert(1))))

    served, shadow = published_values(bridge, output)
    assert top(served)[1] == "mileage"
    assert top(shadow) == [None, None, None] and shadow["top3_feature"] is None


def test_explanations_are_off_by_default_and_the_columns_null() -> None:
    service = FakeService()
    service.shadow = 777.0
    consumer, output = FakeConsumer(), FakeOutput()
    bridge = bridge_with(consumer, service, output, shadow=True)
    bridge._handle(batch_of(FakeMessage(0, 5, insert(1))))

    assert Settings.model_fields["bridge_explain"].default is False
    for value in published_values(bridge, output):
        assert top(value) == [None, None, None]
    assert bridge.metrics.registry.get_sample_value("sml_bridge_explained_total") == 0


def test_an_explaining_bridge_asks_for_them_and_caps_its_batch_at_the_explained_limit() -> None:
    plain = Bridge(Settings(batch_max_events=2_000), serve_metrics=False)
    explaining = Bridge(
        Settings(
            batch_max_events=2_000, bridge_explain=True, service_max_explained_rows=1_000,
            request_timeout_s=5.0, bridge_explain_timeout_s=45.0,
        ),
        serve_metrics=False,
    )  # fmt: skip
    assert (plain._batch_limit, explaining._batch_limit) == (2_000, 1_000)
    client = explaining._pricer.client
    assert (client.explain, client.predict_timeout_s) == (True, 45.0)
    assert plain._pricer.client.predict_timeout_s == 5.0


# -- step timing --


def spending(clock: FakeClock, ns: int, call: Callable[..., Any]) -> Callable[..., Any]:
    """``call`` that moves ``clock`` on by ``ns`` each time it is called."""

    def spend(*args: Any, **kwargs: Any) -> Any:
        clock.advance(ns)
        return call(*args, **kwargs)

    return spend


def test_each_step_is_charged_the_time_spent_in_it(monkeypatch: pytest.MonkeyPatch) -> None:
    now = FakeClock()
    monkeypatch.setattr(loop, "StepClock", lambda collect_ns: StepClock(collect_ns, now=now))
    monkeypatch.setattr(loop, "plan_actions", spending(now, 3, loop.plan_actions))
    monkeypatch.setattr(loop, "finished_actions", spending(now, 4, loop.finished_actions))
    service, output = FakeService(), FakeOutput()
    bridge = bridge_with(FakeConsumer(), service, output)
    bridge._decoder.decode = spending(now, 10, bridge._decoder.decode)  # type: ignore[method-assign]
    service.predict = spending(now, 1_000, service.predict)  # type: ignore[method-assign]
    bridge._records.value = spending(now, 100, bridge._records.value)  # type: ignore[method-assign]
    output.publish = spending(now, 10_000, output.publish)  # type: ignore[method-assign]
    bridge._update_lag = spending(now, 5, bridge._update_lag)  # type: ignore[method-assign]
    batch = batch_of(FakeMessage(0, 3, insert(1)), FakeMessage(0, 4, insert(2)))
    batch.collect_ns = 70

    bridge._handle(batch)

    expected = {
        "collect": 70, "decode": 2 * 10, "plan": 3 + 4, "model_call": 1_000,
        "encode": 2 * 100, "produce_commit": 10_000, "other": 5,
    }  # fmt: skip
    assert bridge.stats.step_ns == expected
    assert bridge.stats.summary()["step_seconds"]["produce_commit"] == 0.00001
    exported = bridge.metrics.registry.get_sample_value(
        "sml_bridge_step_seconds_total", {"step": "model_call"}
    )
    assert exported == pytest.approx(1_000 / 1e9)


def test_a_batch_dropped_for_backpressure_charges_no_step() -> None:
    service = FakeService()
    service.down = True
    bridge = bridge_with(FakeConsumer(), service)
    batch = batch_of(FakeMessage(0, 3, insert(1)))
    batch.collect_ns = 70
    bridge._handle(batch)
    # Consumed again later: its events and their time are counted once, when published.
    assert bridge.stats.step_ns == dict.fromkeys(STEPS, 0)


def test_collecting_is_timed_once_an_event_is_in_hand() -> None:
    consumer = FakeConsumer([FakeMessage(0, 5, insert(1)), FakeMessage(0, 6, insert(2))])
    bridge = bridge_with(consumer, FakeService())
    batch = bridge._collect(2)
    assert len(batch.messages) == 2
    assert batch.collect_ns > 0
