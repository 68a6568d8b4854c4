"""The transactional output without Kafka: call order, fallbacks, aborts, fatal errors."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from streaming_ml.kafka.output import OutputAborted, OutputFatal, OutRecord, TransactionalOutput

PREDICTIONS = "car_price_predictions"
DLQ = "car_listings.dlq"
GROUP_METADATA = object()  # what the consumer's consumer_group_metadata() returns
OFFSETS = [TopicPartition("cars.public.car_listings", 0, 6)]


def kafka_exception(
    code: int, *, fatal: bool = False, retriable: bool = False, txn_requires_abort: bool = False
) -> KafkaException:
    return KafkaException(
        KafkaError(code, fatal=fatal, retriable=retriable, txn_requires_abort=txn_requires_abort)
    )


class FakeProducer:
    """Records every call, in order, into a log shared by the producers of one output.

    ``fail`` scripts exceptions per method (popped one per call; None lets it succeed);
    ``refuse(record)`` is the error ``produce()`` raises at once (too large, say);
    ``undeliverable(record)`` is the error its delivery report carries when
    ``commit_transaction`` flushes, which then fails as librdkafka does: abortable.
    """

    def __init__(
        self,
        log: list[tuple[Any, ...]],
        *,
        fail: dict[str, list[KafkaException | None]] | None = None,
        refuse: Callable[[OutRecord], KafkaError | None] = lambda _record: None,
        undeliverable: Callable[[OutRecord], KafkaError | None] = lambda _record: None,
    ) -> None:
        self.log = log
        self.fail = fail or {}
        self.refuse = refuse
        self.undeliverable = undeliverable
        self.in_flight: list[tuple[OutRecord, Callable[[KafkaError | None, Any], None]]] = []

    def _call(self, name: str, *details: Any) -> None:
        self.log.append((name, *details))
        script = self.fail.get(name)
        if script:
            error = script.pop(0)
            if error is not None:
                raise error

    def init_transactions(self, timeout: float) -> None:
        self._call("init_transactions")

    def begin_transaction(self) -> None:
        self.in_flight = []
        self._call("begin_transaction")

    def produce(
        self,
        topic: str,
        *,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, bytes]] | None,
        on_delivery: Callable[[KafkaError | None, Any], None],
    ) -> None:
        record = OutRecord(topic, key, value, headers)
        error = self.refuse(record)
        if error is not None:
            self.log.append(("produce refused", topic, value))
            raise KafkaException(error)
        self._call("produce", topic, value)
        self.in_flight.append((record, on_delivery))

    def send_offsets_to_transaction(
        self, offsets: list[TopicPartition], metadata: Any, timeout: float
    ) -> None:
        sent = [(tp.topic, tp.partition, tp.offset) for tp in offsets]
        self._call("send_offsets_to_transaction", sent, metadata)

    def commit_transaction(self, timeout: float) -> None:
        # Committing flushes first: every delivery report comes before the commit's outcome.
        undelivered = False
        for record, on_delivery in self.in_flight:
            error = self.undeliverable(record)
            undelivered = undelivered or error is not None
            on_delivery(error, None)
        self.in_flight = []
        if undelivered:
            self.log.append(("commit_transaction failed: undelivered records",))
            raise kafka_exception(KafkaError._INCONSISTENT, txn_requires_abort=True)
        self._call("commit_transaction")

    def abort_transaction(self, timeout: float) -> None:
        self.in_flight = []
        self._call("abort_transaction")

    def poll(self, timeout: float) -> int:
        return 0

    def flush(self, timeout: float) -> int:
        self._call("flush")
        return 0


class Producers:
    """``make_producer`` for the output: each call makes the next scripted producer."""

    def __init__(self, *producers: dict[str, Any]) -> None:
        self.log: list[tuple[Any, ...]] = []
        self.scripts = list(producers) or [{}]
        self.made: list[tuple[dict[str, Any], FakeProducer]] = []

    def __call__(self, config: dict[str, Any]) -> FakeProducer:
        script = self.scripts.pop(0) if len(self.scripts) > 1 else self.scripts[0]
        producer = FakeProducer(self.log, **script)
        self.made.append((config, producer))
        return producer

    def names(self) -> list[str]:
        return [entry[0] for entry in self.log]


def output(producers: Producers) -> TransactionalOutput:
    return TransactionalOutput(
        {"transactional.id": "bridge-1"}, lambda: GROUP_METADATA, 10.0, make_producer=producers
    )


def prediction(listing: int, size: int = 10) -> OutRecord:
    """A prediction record whose fallback is a DLQ record, whose fallback drops the value."""
    source = b"change-%d" % listing
    bare = OutRecord(DLQ, b"%d" % listing, None, [("value.dropped", b"too large")])
    dlq = OutRecord(DLQ, b"%d" % listing, source, [("reason", b"output")], fallback=bare)
    return OutRecord(PREDICTIONS, b"%d" % listing, b"p" * size, fallback=dlq)


def larger_than(limit: int) -> Callable[[OutRecord], KafkaError | None]:
    """Kafka's answer to a record whose value is over ``limit`` bytes."""

    def check(record: OutRecord) -> KafkaError | None:
        too_large = len(record.value or b"") > limit
        return KafkaError(KafkaError.MSG_SIZE_TOO_LARGE) if too_large else None

    return check


def test_offsets_are_sent_inside_the_transaction_after_every_record_and_commit_is_last() -> None:
    producers = Producers()
    out = output(producers)
    records = [prediction(1), OutRecord(PREDICTIONS, b"2", None), prediction(3)]
    out.publish(records, OFFSETS)
    assert producers.log == [
        ("init_transactions",),
        ("begin_transaction",),
        ("produce", PREDICTIONS, b"p" * 10),
        ("produce", PREDICTIONS, None),
        ("produce", PREDICTIONS, b"p" * 10),
        ("send_offsets_to_transaction", [("cars.public.car_listings", 0, 6)], GROUP_METADATA),
        ("commit_transaction",),
    ]


def test_fault_hook_runs_after_every_record_is_acknowledged_and_before_the_offsets() -> None:
    producers = Producers()
    out = output(producers)
    out.publish([prediction(1)], OFFSETS, after_produce=lambda: producers.log.append(("hook",)))
    assert producers.names()[2:] == [
        "produce", "flush", "hook", "send_offsets_to_transaction", "commit_transaction",
    ]  # fmt: skip


def test_kill_point_parses_point_and_batch_and_refuses_anything_else() -> None:
    from streaming_ml.bridge.faults import KillPoint
    from streaming_ml.errors import ConfigError

    assert KillPoint.parse(None) is None and KillPoint.parse("") is None
    assert KillPoint.parse("produced:3") == KillPoint("produced", 3)
    for bad in ("produced", "produced:0", "committed:2", "priced:x"):
        with pytest.raises(ConfigError, match="SML_FAULT_KILL_AT"):
            KillPoint.parse(bad)


def test_each_batch_is_its_own_transaction_on_one_producer() -> None:
    producers = Producers()
    out = output(producers)
    out.publish([prediction(1)], OFFSETS)
    out.publish([prediction(2)], [TopicPartition("cars.public.car_listings", 0, 7)])
    assert producers.names().count("init_transactions") == 1
    assert producers.names().count("begin_transaction") == 2
    assert producers.names()[-1] == "commit_transaction"
    assert len(producers.made) == 1


def test_a_batch_without_offsets_commits_its_records_alone() -> None:
    producers = Producers()
    output(producers).publish([prediction(1)], [])
    assert "send_offsets_to_transaction" not in producers.names()
    assert producers.names()[-1] == "commit_transaction"


def test_record_kafka_refuses_at_produce_is_replaced_by_its_fallback() -> None:
    producers = Producers({"refuse": larger_than(1_000)})
    out = output(producers)
    out.publish([prediction(1), prediction(2, size=5_000), prediction(3)], OFFSETS)
    produced = [entry[1:] for entry in producers.log if entry[0] == "produce"]
    assert produced == [
        (PREDICTIONS, b"p" * 10),
        (DLQ, b"change-2"),  # in place of the refused prediction, in its place in order
        (PREDICTIONS, b"p" * 10),
    ]
    assert producers.names()[-2:] == ["send_offsets_to_transaction", "commit_transaction"]
    assert "abort_transaction" not in producers.names()


def test_fallbacks_are_tried_in_turn_until_one_is_accepted() -> None:
    producers = Producers({"refuse": larger_than(5)})  # even the DLQ copy is too large
    output(producers).publish([prediction(1, size=100)], OFFSETS)
    produced = [entry[1:] for entry in producers.log if entry[0] == "produce"]
    assert produced == [(DLQ, None)]  # the bare DLQ record, without the original bytes
    assert producers.names()[-1] == "commit_transaction"


def test_record_refused_at_delivery_is_replaced_by_its_fallback_in_a_new_transaction() -> None:
    producers = Producers({"undeliverable": larger_than(1_000)})
    out = output(producers)
    out.publish([prediction(1), prediction(2, size=5_000)], OFFSETS)
    assert producers.names() == [
        "init_transactions",
        "begin_transaction",
        "produce",
        "produce",
        "send_offsets_to_transaction",
        "commit_transaction failed: undelivered records",
        "abort_transaction",
        "begin_transaction",
        "produce",
        "produce",
        "send_offsets_to_transaction",
        "commit_transaction",
    ]
    second = [entry[1:] for entry in producers.log[-4:-2]]
    assert second == [(PREDICTIONS, b"p" * 10), (DLQ, b"change-2")]


def test_records_purged_by_an_aborted_transaction_are_not_swapped_for_fallbacks() -> None:
    """An abort (a rebalance's ILLEGAL_GENERATION, say) fails every in-flight record with
    a purge error: that says nothing about the records, so no prediction becomes a DLQ
    record; the batch is consumed again instead."""
    purged = KafkaError(KafkaError._PURGE_INFLIGHT)
    producers = Producers({"undeliverable": lambda _record: purged})
    with pytest.raises(OutputAborted):
        output(producers).publish([prediction(1), prediction(2)], OFFSETS)
    produced = [entry[1] for entry in producers.log if entry[0] == "produce"]
    assert produced == [PREDICTIONS, PREDICTIONS]


def test_abortable_error_when_sending_offsets_aborts_and_raises_output_aborted() -> None:
    fenced = kafka_exception(KafkaError.ILLEGAL_GENERATION, txn_requires_abort=True)
    producers = Producers({"fail": {"send_offsets_to_transaction": [fenced]}})
    out = output(producers)
    with pytest.raises(OutputAborted, match="generation"):
        out.publish([prediction(1)], OFFSETS)
    assert producers.names()[-2:] == ["send_offsets_to_transaction", "abort_transaction"]
    assert "commit_transaction" not in producers.names()


def test_abortable_error_from_produce_aborts_instead_of_using_the_fallback() -> None:
    producers = Producers(
        {"refuse": lambda _record: KafkaError(KafkaError._FENCED, txn_requires_abort=True)}
    )
    with pytest.raises(OutputAborted):
        output(producers).publish([prediction(1)], OFFSETS)
    assert producers.names() == [
        "init_transactions", "begin_transaction", "produce refused", "abort_transaction",
    ]  # fmt: skip


def test_output_that_aborted_publishes_the_next_batch() -> None:
    fenced = kafka_exception(KafkaError.ILLEGAL_GENERATION, txn_requires_abort=True)
    producers = Producers({"fail": {"send_offsets_to_transaction": [fenced, None]}})
    out = output(producers)
    with pytest.raises(OutputAborted):
        out.publish([prediction(1)], OFFSETS)
    out.publish([prediction(1)], OFFSETS)
    assert producers.names()[-1] == "commit_transaction"


@pytest.mark.parametrize(
    "method", ["begin_transaction", "send_offsets_to_transaction", "commit_transaction"]
)
def test_fatal_error_raises_output_fatal_without_trying_to_abort(method: str) -> None:
    fatal = kafka_exception(KafkaError.PRODUCER_FENCED, fatal=True)
    producers = Producers({"fail": {method: [fatal]}})
    with pytest.raises(OutputFatal):
        output(producers).publish([prediction(1)], OFFSETS)
    assert producers.names()[-1] == method
    assert "abort_transaction" not in producers.names()


def test_fatal_error_while_aborting_raises_output_fatal() -> None:
    abortable = kafka_exception(KafkaError.ILLEGAL_GENERATION, txn_requires_abort=True)
    fatal = kafka_exception(KafkaError.PRODUCER_FENCED, fatal=True)
    producers = Producers(
        {"fail": {"send_offsets_to_transaction": [abortable], "abort_transaction": [fatal]}}
    )
    with pytest.raises(OutputFatal):
        output(producers).publish([prediction(1)], OFFSETS)


def test_retriable_commit_error_is_retried_in_the_same_transaction() -> None:
    timed_out = kafka_exception(KafkaError._TIMED_OUT, retriable=True)
    producers = Producers({"fail": {"commit_transaction": [timed_out, timed_out, None]}})
    output(producers).publish([prediction(1)], OFFSETS)
    assert producers.names() == [
        "init_transactions",
        "begin_transaction",
        "produce",
        "send_offsets_to_transaction",
        "commit_transaction",
        "commit_transaction",
        "commit_transaction",
    ]


def test_producer_that_cannot_abort_is_given_up_as_fatal() -> None:
    """Kafka away: the abort fails too. The caller drops this producer; the next one,
    with the same transactional id, aborts what was left open."""
    abortable = kafka_exception(KafkaError.ILLEGAL_GENERATION, txn_requires_abort=True)
    broker_down = kafka_exception(KafkaError._TRANSPORT, retriable=True)
    producers = Producers(
        {"fail": {"send_offsets_to_transaction": [abortable], "abort_transaction": [broker_down]}},
    )
    with pytest.raises(OutputFatal, match="abort failed"):
        output(producers).publish([prediction(1)], OFFSETS)
    assert producers.names()[-1] == "abort_transaction"
    assert "commit_transaction" not in producers.names()


def test_commit_that_keeps_timing_out_is_given_up_instead_of_blocking() -> None:
    timeout = kafka_exception(KafkaError._TIMED_OUT, retriable=True)
    producers = Producers({"fail": {"commit_transaction": [timeout, timeout, timeout]}})
    with pytest.raises(OutputFatal, match="did not commit"):
        output(producers).publish([prediction(1)], OFFSETS)
    assert producers.names().count("commit_transaction") == 3


def test_close_flushes_the_producer() -> None:
    producers = Producers()
    out = output(producers)
    out.close()
    assert producers.names() == ["init_transactions", "flush"]


def test_send_offsets_that_never_returns_gives_the_producer_up_instead_of_blocking() -> None:
    """librdkafka#5456: after a broker restart the call can block past its timeout."""
    released = threading.Event()

    class Hanging(FakeProducer):
        def send_offsets_to_transaction(
            self, offsets: list[TopicPartition], metadata: Any, timeout: float
        ) -> None:
            released.wait(30)

    log: list[tuple[Any, ...]] = []
    out = TransactionalOutput(
        {"transactional.id": "bridge-1"}, lambda: GROUP_METADATA, 0.05,
        make_producer=lambda _config: Hanging(log),
    )  # fmt: skip
    started = time.monotonic()
    try:
        with pytest.raises(OutputFatal, match="did not return"):
            out.publish([prediction(1)], OFFSETS)
    finally:
        released.set()
    assert time.monotonic() - started < 5
    assert "commit_transaction" not in [entry[0] for entry in log]
