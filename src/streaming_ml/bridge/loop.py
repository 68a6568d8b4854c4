"""The Bridge: collect → decode and plan → price → publish, one batch at a time.

Nothing blocks inside a batch waiting for the service or the registry: when either is
unavailable the batch is dropped, its partitions are rewound to their first unfinished
offsets and paused, and later passes of the loop probe readiness and resume. Rebalance
callbacks only record the assignment and forget what belonged to revoked partitions;
offsets are committed inside each batch's output transaction (``output``), never from a
callback.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import httpx
from confluent_kafka import (
    OFFSET_INVALID,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext, SerializationError
from prometheus_client import start_http_server

from streaming_ml import serde
from streaming_ml.bridge import kafka_setup
from streaming_ml.bridge.changes import Change, ChangeDecoder, RegistryUnavailable
from streaming_ml.bridge.metrics import BridgeMetrics, BridgeStats
from streaming_ml.bridge.offsets import (
    Position,
    offsets_to_commit,
    rewind_points,
    split_at_unfinished,
)
from streaming_ml.bridge.output import OutputAborted, OutputFatal, OutRecord, TransactionalOutput
from streaming_ml.bridge.plan import (
    Action,
    dead_letter,
    dlq_headers,
    plan_actions,
    prediction_record,
    service_records,
)
from streaming_ml.bridge.pricing import Backpressure, PredictionClient, Pricer
from streaming_ml.config import Settings
from streaming_ml.exceptions import BridgeError

logger = logging.getLogger(__name__)

PROBE_CAP_S = 4.0


@dataclass
class Batch:
    messages: list[Message]
    received_ms: list[int]

    @property
    def positions(self) -> list[Position]:
        return [(m.topic(), m.partition(), m.offset()) for m in self.messages]


@dataclass
class Pause:
    """Consumption is paused until ``ready()`` says yes, tried at growing intervals."""

    what: str
    ready: Callable[[], bool]
    next_try: float
    delay: float
    since: float = field(default_factory=time.monotonic)


class Bridge:
    """Consume listing changes, price them with the service, publish predictions.

    ``run()`` blocks until ``stop()``, ``max_events`` or ``timeout``; with ``once=True``
    it returns as soon as the assigned partitions are drained.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        group_id: str | None = None,
        serve_metrics: bool = True,
        metrics: BridgeMetrics | None = None,
        on_partitions: Callable[[set[tuple[str, int]]], None] | None = None,
    ) -> None:
        self.settings = settings
        self.group_id = group_id or settings.consumer_group
        self.serve_metrics = serve_metrics
        self.metrics = metrics or BridgeMetrics()
        self.stats = BridgeStats()
        self.assignment: set[tuple[str, int]] = set()
        self.ready = threading.Event()  # set once subscribed (for demo/tests)
        self.assigned = threading.Event()  # set once the group gave us partitions
        self._on_partitions = on_partitions
        self._stop = threading.Event()
        self._pause: Pause | None = None
        self._pauses_in_a_row = 0  # makes each pause longer while batches keep failing
        self._consumer: Consumer | None = None
        self._output: TransactionalOutput | None = None
        self._pricer = Pricer(
            PredictionClient(settings.prediction_url, settings.request_timeout_s),
            retry_delays=[
                settings.service_backoff_s * 2**i for i in range(settings.service_retries)
            ],
            max_strikes=settings.service_max_strikes,
            wait=self._stop.wait,
        )

    def stop(self) -> None:
        """Ask run() to return after the batch in hand (safe from a signal handler)."""
        self._stop.set()

    # -- the loop --

    def run(
        self, max_events: int | None = None, timeout: float | None = None, once: bool = False
    ) -> BridgeStats:
        deadline = time.monotonic() + timeout if timeout is not None else None
        with ExitStack() as stack:
            self._start(stack)
            while not self._stop.is_set():
                if max_events is not None and self.stats.events >= max_events:
                    break
                if deadline is not None and time.monotonic() >= deadline:
                    logger.info("bridge timeout reached", extra={"timeout_s": timeout})
                    break
                if self._pause is not None:
                    self._while_paused()
                    continue
                limit = self.settings.batch_max_events
                if max_events is not None:
                    limit = min(limit, max_events - self.stats.events)
                batch = self._collect(limit)
                if batch.messages:
                    self._handle(batch)
                elif once and self._drained():
                    logger.info("drained assigned partitions (--once)")
                    break
        return self.stats

    def _handle(self, batch: Batch) -> None:
        """One batch: decode and plan, price, publish with its offsets."""
        started = time.monotonic()
        try:
            decoded = self._decode(batch)
        except RegistryUnavailable as error:
            self._pause_and_rewind(batch, "schema registry", self._registry_ready, str(error))
            return
        actions = plan_actions(decoded)
        to_price = [a for a in actions if a.kind == "predict"]
        call_started = time.perf_counter()
        try:
            priced = self._pricer.price(
                service_records(a.change.row for a in to_price),  # type: ignore[union-attr]
                [batch.positions[a.index] for a in to_price],
            )
        except Backpressure as error:
            self._pause_and_rewind(
                batch, "prediction service", self._pricer.client.ready, str(error)
            )
            return
        model_ms = (time.perf_counter() - call_started) * 1000
        if to_price:
            self.metrics.latency.labels("model_call").observe(model_ms / 1000)
        self.metrics.service_calls.inc(priced.calls)

        unfinished = {to_price[i].index for i in priced.retry_later}
        rejected = {to_price[i].index: reason for i, reason in priced.rejected.items()}
        results = {to_price[i].index: r for i, r in priced.results.items()}
        done, rewinds = split_at_unfinished(batch.positions, unfinished)
        done_set = set(done)
        finished: list[Action] = []
        for a in actions:
            if a.index not in done_set:
                continue
            if a.kind == "predict" and a.index in rejected:
                finished += dead_letter(a.index, a.change, rejected[a.index], "service")
            else:
                finished.append(a)
        records, counts = self._outputs(batch, finished, results, model_ms)
        try:
            self._output_or_fail().publish(
                records, offsets_to_commit(batch.positions[i] for i in done)
            )
        except OutputAborted as error:
            logger.warning("batch not published; consuming it again", extra={"error": str(error)})
            self.metrics.aborted.inc()
            self._seek(rewind_points(batch.positions))
            return
        except (OutputFatal, KafkaException) as error:
            # Fenced, or Kafka away: a new producer (same transactional id, so it aborts
            # whatever this one left open) is made once Kafka answers again.
            self.metrics.aborted.inc()
            self._drop_output()
            self._pause_and_rewind(batch, "Kafka producer", self._output_ready, str(error))
            return
        done_messages = [batch.messages[i] for i in done]
        self._count(done_messages, counts, model_ms, started)
        if rewinds:
            # Some records failed on their own this pass: let the rest go, retry them soon.
            self._seek(rewinds)
            self._enter_pause("prediction service", self._pricer.client.ready, "records to retry")
        else:
            self._pauses_in_a_row = 0

    def _outputs(
        self,
        batch: Batch,
        actions: Iterable[Action],
        results: dict[int, Any],
        model_ms: float,
    ) -> tuple[list[OutRecord], Counter[str]]:
        s = self.settings
        predicted_ms = int(time.time() * 1000)
        records: list[OutRecord] = []
        counts: Counter[str] = Counter()
        observed: list[dict[str, Any]] = []
        for action in actions:
            msg = batch.messages[action.index]
            dlq = self._dlq_record(msg, action.reason or "") if action.kind != "predict" else None
            if action.kind == "dlq":
                records.append(dlq)  # type: ignore[arg-type]
                self.metrics.dlq.labels(action.stage).inc()
                counts["dlq"] += 1
                logger.warning(
                    "event dead-lettered",
                    extra={
                        "listing_id": action.listing_id, "partition": msg.partition(),
                        "offset": msg.offset(), "reason": action.reason,
                    },
                )  # fmt: skip
            elif action.kind == "tombstone":
                records.append(OutRecord(s.predictions_topic, self._key(action.listing_id), None))
                counts["tombstones"] += 1
            elif action.kind == "skip":
                counts["unchanged" if action.skip_why == "unchanged" else "skipped"] += 1
            else:
                record = prediction_record(
                    action, results[action.index],
                    kafka_ts_ms=msg.timestamp()[1], received_ts_ms=batch.received_ms[action.index],
                    predicted_ts_ms=predicted_ms, model_latency_ms=model_ms,
                )  # fmt: skip
                fallback = self._dlq_record(msg, "output: Kafka refused the prediction record")
                records.append(
                    OutRecord(
                        s.predictions_topic,
                        self._key(action.listing_id),
                        self._value(record),
                        fallback=fallback,
                    )
                )
                counts["predicted"] += 1
                observed.append(record)
        self._observe_latency(observed)
        return records, counts

    def _dlq_record(self, msg: Message, reason: str) -> OutRecord:
        headers = dlq_headers(reason, msg.topic(), msg.partition(), msg.offset())
        bare = OutRecord(
            self.settings.dlq_topic, msg.key(), None, [*headers, ("value.dropped", b"too large")]
        )
        return OutRecord(self.settings.dlq_topic, msg.key(), msg.value(), headers, fallback=bare)

    # -- collecting --

    def _collect(self, limit: int) -> Batch:
        """Wait up to 1 s for the first event, then up to the linger time to fill the batch."""
        assert self._consumer is not None
        batch = Batch([], [])
        linger = self.settings.batch_linger_ms / 1000
        deadline = time.monotonic() + 1.0
        while len(batch.messages) < limit and not self._stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            # consume() returns once `wanted` messages arrived or the timeout passed: with
            # nothing in hand ask for one, so the first event starts the linger at once.
            wanted = limit - len(batch.messages) if batch.messages else 1
            first = not batch.messages
            for msg in self._consumer.consume(num_messages=wanted, timeout=left):
                if self._usable(msg):
                    batch.messages.append(msg)
                    batch.received_ms.append(int(time.time() * 1000))
            if first and batch.messages:
                deadline = time.monotonic() + linger
        # A rebalance during consume() may have taken partitions away: not ours to handle.
        keep = [
            i for i, m in enumerate(batch.messages) if (m.topic(), m.partition()) in self.assignment
        ]
        if len(keep) < len(batch.messages):
            batch = Batch([batch.messages[i] for i in keep], [batch.received_ms[i] for i in keep])
        return batch

    def _usable(self, msg: Message) -> bool:
        error = msg.error()
        if error is None:
            return True
        if error.code() != KafkaError._PARTITION_EOF:
            # Broker restarts and unknown topics show up here; librdkafka recovers.
            logger.warning("consumer error", extra={"error": str(error)})
        if error.fatal():
            raise BridgeError(f"fatal Kafka consumer error: {error}; restart the bridge")
        return False

    def _decode(self, batch: Batch) -> list[Change | str]:
        decoded = [self._decoder.decode(m) for m in batch.messages]
        ops = Counter(c.op if isinstance(c, Change) else "undecodable" for c in decoded)
        for op, n in ops.items():
            self.metrics.events.labels(op).inc(n)
        return decoded

    def _drained(self) -> bool:
        assert self._consumer is not None
        if not self.assignment:
            # No assignment yet: done only if there is no change topic at all (no row
            # was ever captured), otherwise wait for the group to assign it.
            topic = self.settings.listings_topic
            meta = self._consumer.list_topics(topic, timeout=10).topics.get(topic)
            return meta is None or meta.error is not None
        tps = [TopicPartition(t, p) for t, p in sorted(self.assignment)]
        positions = self._consumer.position(tps)
        committed = self._consumer.committed(tps, timeout=10)
        for pos, com in zip(positions, committed, strict=True):
            low, high = self._consumer.get_watermark_offsets(pos, timeout=10, cached=False)
            at = pos.offset if pos.offset != OFFSET_INVALID else com.offset
            if at == OFFSET_INVALID or at < 0:
                at = low
            if at < high:
                return False
        return True

    # -- backpressure --

    def _pause_and_rewind(
        self, batch: Batch, what: str, ready: Callable[[], bool], reason: str
    ) -> None:
        """Drop the batch: it is consumed again, from its first offsets, once ``what`` is back."""
        self._seek(rewind_points(batch.positions))
        logger.error(
            f"{what} unavailable: consumption paused until it is back",
            extra={"reason": reason, "events_to_redo": len(batch.messages)},
        )
        self._enter_pause(what, ready, reason)

    def _enter_pause(self, what: str, ready: Callable[[], bool], reason: str) -> None:
        assert self._consumer is not None
        # A record failing alone in a quiet topic (no other record to prove the service
        # works) must not spin: each pause in a row waits twice as long, up to the cap.
        first = min(PROBE_CAP_S, self.settings.service_backoff_s * 2**self._pauses_in_a_row)
        self._pauses_in_a_row = min(self._pauses_in_a_row + 1, 8)
        self._pause = Pause(what, ready, time.monotonic() + first, first)
        self.metrics.paused.set(1)
        self._consumer.pause(self._partitions())

    def _while_paused(self) -> None:
        """One pass while paused: keep group membership alive, probe when it is time."""
        assert self._consumer is not None and self._pause is not None
        pause = self._pause
        wait = max(0.0, min(pause.next_try - time.monotonic(), 1.0))
        for msg in self._consumer.consume(num_messages=1, timeout=wait):
            # Nothing comes from paused partitions; a message here is an error event.
            self._usable(msg)
        if time.monotonic() < pause.next_try or self._stop.is_set():
            return
        if not pause.ready():
            pause.delay = min(PROBE_CAP_S, pause.delay * 2)
            pause.next_try = time.monotonic() + pause.delay
            logger.info(
                f"waiting for the {pause.what}",
                extra={"waited_s": round(time.monotonic() - pause.since, 1)},
            )
            return
        self._pause = None
        self.metrics.paused.set(0)
        self._consumer.resume(self._partitions())
        logger.info(
            f"{pause.what} is back: resuming",
            extra={"paused_s": round(time.monotonic() - pause.since, 1)},
        )

    def _registry_ready(self) -> bool:
        try:
            self._registry.get_subjects()
            return True
        except Exception:  # any failure means "not yet"
            return False

    def _seek(self, points: list[TopicPartition]) -> None:
        assert self._consumer is not None
        for tp in points:
            if (tp.topic, tp.partition) in self.assignment:
                self._consumer.seek(tp)

    def _partitions(self) -> list[TopicPartition]:
        return [TopicPartition(t, p) for t, p in sorted(self.assignment)]

    # -- rebalance callbacks: record the assignment, forget revoked state --

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        added = {(tp.topic, tp.partition) for tp in partitions}
        self.assignment |= added
        if self._pause is not None and partitions:
            consumer.incremental_assign(partitions)
            consumer.pause(partitions)
        self.metrics.rebalances.labels("assigned").inc()
        self.metrics.assigned.set(len(self.assignment))
        logger.info(
            "partitions assigned", extra={"added": sorted(added), "now": sorted(self.assignment)}
        )
        self.assigned.set()
        if self._on_partitions is not None:
            self._on_partitions(set(self.assignment))

    def _on_revoke(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        revoked = {(tp.topic, tp.partition) for tp in partitions}
        self.assignment -= revoked
        self._pricer.forget(lambda key: (key[0], key[1]) in revoked)
        self.metrics.rebalances.labels("revoked").inc()
        self.metrics.assigned.set(len(self.assignment))
        for tp in partitions:
            with contextlib.suppress(KeyError):
                self.metrics.lag.remove(str(tp.partition))
        logger.info(
            "partitions revoked", extra={"revoked": sorted(revoked), "now": sorted(self.assignment)}
        )
        if self._on_partitions is not None:
            self._on_partitions(set(self.assignment))

    # -- start and stop --

    def _start(self, stack: ExitStack) -> None:
        s = self.settings
        stack.callback(self._log_stopped)
        kafka_setup.ensure_topics(s)
        self._registry = serde.registry_client(s.registry_url)
        self._decoder = ChangeDecoder(self._registry)
        self._key_ser, self._value_ser = serde.prediction_serializers(self._registry)
        self._register_schemas()
        self._consumer = Consumer(kafka_setup.consumer_config(s, self.group_id))
        stack.callback(self._close_consumer)
        self._producer_config = kafka_setup.producer_config(s, self.group_id)
        self._output_or_fail()
        stack.callback(self._close_output)
        stack.callback(lambda: self._pricer.client.close())
        self._consumer.subscribe(
            [s.listings_topic],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_revoke,
        )
        if self.serve_metrics:
            self._serve_metrics(stack)
        logger.info(
            "bridge started",
            extra={
                "topic": s.listings_topic, "group": self.group_id, "service": s.prediction_url,
                "transactional_id": self._producer_config["transactional.id"],
            },
        )  # fmt: skip
        self.ready.set()

    def _output_ready(self) -> bool:
        """Readiness probe while Kafka is away: can a transactional producer start?"""
        try:
            self._output_or_fail()
            return True
        except KafkaException as error:
            logger.info("Kafka transactions not available yet", extra={"error": str(error)})
            return False

    def _drop_output(self) -> None:
        # Not closed: flushing a producer whose broker is away would block.
        self._output = None

    def _output_or_fail(self) -> TransactionalOutput:
        if self._output is None:
            assert self._consumer is not None
            self._output = TransactionalOutput(
                self._producer_config,
                self._consumer.consumer_group_metadata,
                self.settings.transaction_timeout_s,
            )
        return self._output

    def _serve_metrics(self, stack: ExitStack) -> None:
        s = self.settings
        try:
            server, _ = start_http_server(
                s.bridge_metrics_port, addr=s.host, registry=self.metrics.registry
            )
        except OSError as error:
            raise BridgeError(
                f"cannot serve metrics on {s.host}:{s.bridge_metrics_port} ({error}); "
                "is another bridge running? Set SML_BRIDGE_METRICS_PORT or --metrics-port"
            ) from error
        stack.callback(server.server_close)
        stack.callback(server.shutdown)

    def _register_schemas(self) -> None:
        """Register the prediction schemas now, so a registry problem shows at start-up
        and the serializers need no registry call while a batch is in flight."""
        from streaming_ml.data import PREDICTION_FIELDS

        # Any value of the declared type will do; nullable fields take None.
        zero = {"long": 0, "double": 0.0, "string": ""}
        sample = {
            f.name: None if isinstance(f.avro_type, list) else zero[f.avro_type]
            for f in PREDICTION_FIELDS
        }
        try:
            self._key(0)
            self._value(sample)
        except (SchemaRegistryError, SerializationError, httpx.TransportError) as error:
            raise BridgeError(
                f"cannot register the prediction schemas in {self.settings.registry_url}: "
                f"{error}. Is the registry up? Try `streaming-ml stack status`."
            ) from error

    def _close_consumer(self) -> None:
        if self._consumer is not None:
            self._consumer.close()  # leaves the group: the partitions move at once
            self._consumer = None

    def _close_output(self) -> None:
        if self._output is not None:
            self._output.close()
            self._output = None

    def _log_stopped(self) -> None:
        logger.info("bridge stopped", extra=self.stats.summary())

    # -- serialisation and bookkeeping --

    def _key(self, listing_id: int | None) -> bytes:
        ctx = SerializationContext(self.settings.predictions_topic, MessageField.KEY)
        return self._key_ser({serde.KEY_FIELD: listing_id}, ctx)

    def _value(self, record: dict[str, Any]) -> bytes:
        ctx = SerializationContext(self.settings.predictions_topic, MessageField.VALUE)
        return self._value_ser(record, ctx)

    def _observe_latency(self, records: list[dict[str, Any]]) -> None:
        # labels() takes a lock and a dict lookup: resolve each stage once per batch.
        lat = self.metrics.latency
        to_kafka = lat.labels("commit_to_kafka").observe
        to_bridge = lat.labels("kafka_to_bridge").observe
        end_to_end = lat.labels("end_to_end").observe
        for r in records:
            to_kafka(max(0.0, (r["kafka_ts_ms"] - r["source_ts_ms"]) / 1000))
            to_bridge(max(0.0, (r["bridge_received_ts_ms"] - r["kafka_ts_ms"]) / 1000))
            end_to_end(max(0.0, r["end_to_end_ms"] / 1000))

    def _count(
        self, messages: list[Message], counts: Counter[str], model_ms: float, started: float
    ) -> None:
        st, m = self.stats, self.metrics
        st.events += len(messages)
        st.predicted += counts["predicted"]
        st.tombstones += counts["tombstones"]
        st.dlq += counts["dlq"]
        st.skipped_unchanged += counts["unchanged"]
        st.skipped_other += counts["skipped"]
        st.batches += 1
        m.predictions.inc(counts["predicted"])
        m.tombstones.inc(counts["tombstones"])
        m.skipped.inc(counts["unchanged"])
        m.batch_size.observe(len(messages))
        self._update_lag()
        st.last_batch = {
            "events": len(messages),
            **{k: counts[k] for k in ("predicted", "tombstones", "dlq", "skipped", "unchanged")},
            "model_ms": round(model_ms, 1),
            "batch_ms": round((time.monotonic() - started) * 1000, 1),
        }
        logger.info("batch done", extra=st.last_batch)

    def _update_lag(self) -> None:
        assert self._consumer is not None
        tps = self._partitions()
        if not tps:
            return
        for tp in self._consumer.position(tps):
            _, high = self._consumer.get_watermark_offsets(tp, cached=True)
            if tp.offset >= 0 and high >= 0:
                self.metrics.lag.labels(str(tp.partition)).set(max(0, high - tp.offset))


def run_bridge(
    settings: Settings,
    *,
    group_id: str | None = None,
    once: bool = False,
    max_events: int | None = None,
    timeout: float | None = None,
    apply_connectors: bool = False,
    install_signal_handlers: bool = True,
) -> BridgeStats:
    """Entry point of ``streaming-ml bridge``: SIGTERM/SIGINT stop it gracefully.

    ``apply_connectors``: create the topics and apply the connectors first, then watch
    them while this replica owns partition 0 of the change topic.
    """
    from streaming_ml import connectors

    watchdog: connectors.PartitionZeroWatchdog | None = None
    metrics = BridgeMetrics()
    if apply_connectors:
        connectors.apply(settings)
        watchdog = connectors.partition_zero_watchdog(settings, metrics.connector_restarts)
    bridge = Bridge(
        settings,
        group_id=group_id,
        metrics=metrics,
        on_partitions=watchdog.on_partitions if watchdog else None,
    )
    if install_signal_handlers:
        import signal

        def _handle(signum: int, _frame: Any) -> None:
            logger.info("signal received: finishing the batch in hand", extra={"signal": signum})
            bridge.stop()

        signal.signal(signal.SIGTERM, _handle)
        signal.signal(signal.SIGINT, _handle)
    try:
        return bridge.run(max_events=max_events, timeout=timeout, once=once)
    finally:
        if watchdog is not None:
            watchdog.stop()
