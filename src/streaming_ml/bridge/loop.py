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
import functools
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass

from confluent_kafka import OFFSET_INVALID, Consumer, KafkaException, Message, TopicPartition
from prometheus_client import start_http_server

from streaming_ml.bridge.faults import KillPoint
from streaming_ml.bridge.metrics import BridgeMetrics, BridgeStats, StepClock
from streaming_ml.bridge.pausing import Pausing
from streaming_ml.bridge.plan import Action, finished_actions, plan_actions, service_records
from streaming_ml.bridge.pricing import Backpressure, PredictionClient, Priced, Pricer
from streaming_ml.bridge.records import Built, RecordBuilder
from streaming_ml.config import Settings
from streaming_ml.connect import commands, watchdog
from streaming_ml.errors import BridgeError
from streaming_ml.kafka import clients, topics
from streaming_ml.kafka.changes import Change, ChangeDecoder, RegistryUnavailable
from streaming_ml.kafka.loop import seek, usable
from streaming_ml.kafka.offsets import (
    Position,
    offsets_to_commit,
    positions_of,
    rewind_points,
    split_at_unfinished,
)
from streaming_ml.kafka.output import OutputAborted, OutputFatal, OutRecord, TransactionalOutput
from streaming_ml.schema import avro
from streaming_ml.system.processes import stop_on_signals

logger = logging.getLogger(__name__)


@dataclass
class Batch:
    """Messages as collected; read-only once handed to ``_handle``."""

    messages: list[Message]
    received_ms: list[int]
    collect_ns: int = 0  # from the first event in hand until the batch was complete

    @functools.cached_property
    def positions(self) -> list[Position]:
        # Cached: indexed once per action, so rebuilding it each time was O(n²) a batch.
        return positions_of(self.messages)


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
        watch_connectors: bool = False,
    ) -> None:
        self.settings = settings
        self.group_id = group_id or settings.consumer_group
        self.serve_metrics = serve_metrics
        self.metrics = BridgeMetrics()
        self.stats = BridgeStats()
        self.assignment: set[tuple[str, int]] = set()
        self.ready = threading.Event()  # set once subscribed (for demo/tests)
        self.assigned = threading.Event()  # set once the group gave us partitions
        # With watch_connectors, restart FAILED connectors while owning partition 0.
        self._watchdog = (
            watchdog.partition_zero_watchdog(settings, self.metrics.connector_restarts)
            if watch_connectors
            else None
        )
        self._stop = threading.Event()
        self._pausing = Pausing(settings.service_backoff_s, self.metrics.paused.set)
        self._consumer: Consumer | None = None
        self._output: TransactionalOutput | None = None
        self._kill_at = KillPoint.parse(settings.fault_kill_at)
        # An explained batch must fit the service's limit on explained rows, or every
        # call would be refused (413) and bisected.
        self._batch_limit = (
            min(settings.batch_max_events, settings.service_max_explained_rows)
            if settings.bridge_explain
            else settings.batch_max_events
        )
        self._pricer = Pricer(
            PredictionClient(
                settings.prediction_url,
                settings.request_timeout_s,
                explain=settings.bridge_explain,
                explain_timeout_s=settings.bridge_explain_timeout_s,
            ),
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
                if self._pausing.paused:
                    self._while_paused()
                    continue
                limit = self._batch_limit
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
        """One batch: decode and plan, price, publish with its offsets.

        Each step is timed (``StepClock``): collect (in ``_collect``, from the first
        event in hand), decode (Avro and the Debezium envelope to a Change), plan
        (validation, features hash, actions; then settling them with the service's
        answers), model_call (the request rows, the /predict_batch round trip with its
        retries, the answers checked), encode (the output records built and serialised),
        produce_commit (produce, offsets, commit) and other (the bookkeeping after the
        commit: metrics, lag). A batch that is dropped and consumed again is counted once,
        when it is published, with the time of that pass.
        """
        started = time.monotonic()
        clock = StepClock(batch.collect_ns)
        try:
            decoded = self._decode(batch)
            clock.lap("decode")
            actions = plan_actions(decoded)
            clock.lap("plan")
            priced, model_ms = self._price(batch, actions)
            clock.lap("model_call")
            self._fault("priced")
        except RegistryUnavailable as error:
            self._pause_and_rewind(batch, "schema registry", self._registry_ready, str(error))
            return
        except Backpressure as error:
            ready = self._pricer.client.ready
            self._pause_and_rewind(batch, "prediction service", ready, str(error))
            return
        done, rewinds = split_at_unfinished(batch.positions, priced.retry_later)
        finished = finished_actions(actions, set(done), priced.rejected)
        clock.lap("plan")
        built = self._records.build(
            batch.messages, batch.received_ms, finished, priced.results, model_ms
        )
        clock.lap("encode")
        if not self._publish(batch, built.records, done):
            return
        clock.lap("produce_commit")
        self._account(len(done), built, model_ms, started, clock)
        if rewinds:
            # Some records failed on their own this pass: let the rest go, retry them soon.
            self._seek(rewinds)
            self._enter_pause("prediction service", self._pricer.client.ready)
        else:
            self._pausing.succeeded()

    def _price(self, batch: Batch, actions: list[Action]) -> tuple[Priced, float]:
        """Price the batch's "predict" actions; the outcome is keyed by message index."""
        to_price = [a for a in actions if a.kind == "predict"]
        started = time.perf_counter()
        priced = self._pricer.price(
            service_records(
                [a.change.row for a in to_price if a.change and a.change.row is not None],
                [a.listing_id for a in to_price],
            ),
            [batch.positions[a.index] for a in to_price],
        )
        model_ms = (time.perf_counter() - started) * 1000
        if to_price:
            self.metrics.latency.labels("model_call").observe(model_ms / 1000)
        self.metrics.service_calls.inc(priced.calls)
        return priced.reindexed([a.index for a in to_price]), model_ms

    def _publish(self, batch: Batch, records: list[OutRecord], done: list[int]) -> bool:
        """One transaction; False (and the batch rewound) when it did not commit."""
        try:
            self._output_or_fail().publish(
                records,
                offsets_to_commit(batch.positions[i] for i in done),
                after_produce=(lambda: self._fault("produced")) if self._kill_at else None,
            )
            return True
        except OutputAborted as error:
            logger.warning("batch not published; consuming it again", extra={"error": str(error)})
            self.metrics.aborted.inc()
            self._seek(rewind_points(batch.positions))
        except (OutputFatal, KafkaException) as error:
            # Fenced, or Kafka away: a new producer (same transactional id, so it aborts
            # whatever this one left open) is made once Kafka answers again.
            self.metrics.aborted.inc()
            self._drop_output()
            reason = (
                f"{error}; is the broker up? See `streaming-ml stack status` and "
                "`streaming-ml stack logs kafka` (a full or failed log dir stops the broker)"
            )
            self._pause_and_rewind(batch, "Kafka producer", self._output_ready, reason)
        return False

    def _fault(self, point: str) -> None:
        if self._kill_at is not None:
            self._kill_at.reached(point, self.stats.batches + 1)

    def _account(
        self, events: int, built: Built, model_ms: float, started: float, clock: StepClock
    ) -> None:
        for stage, n in built.dlq_stages.items():
            self.metrics.dlq.labels(stage).inc(n)
        self.metrics.observe_batch(events, built.counts, built.predictions)
        unexplained = built.counts["predicted"] - built.counts["explained"]
        if self.settings.bridge_explain and unexplained:
            # The prices are good; only their explanations are missing (written as nulls).
            logger.warning(
                "the service answered prices without explanations; is it a build from "
                "before explanations?",
                extra={"unexplained": unexplained, "service": self.settings.prediction_url},
            )
        self._update_lag()
        clock.lap("other")
        batch_ms = (time.monotonic() - started) * 1000
        self.stats.add_batch(events, built.counts, model_ms, batch_ms, clock.ns)
        self.metrics.add_step_times(clock.ns)
        logger.info("batch done", extra=self.stats.last_batch)

    # -- collecting --

    def _collect(self, limit: int) -> Batch:
        """Wait up to 1 s for the first event, then up to the linger time to fill the batch."""
        assert self._consumer is not None
        batch = Batch([], [])
        linger = self.settings.batch_linger_ms / 1000
        deadline = time.monotonic() + 1.0
        in_hand_ns: int | None = None
        while len(batch.messages) < limit and not self._stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            # consume() returns once `wanted` messages arrived or the timeout passed: with
            # nothing in hand ask for one, so the first event starts the linger at once.
            wanted = limit - len(batch.messages) if batch.messages else 1
            first = not batch.messages
            for msg in self._consumer.consume(num_messages=wanted, timeout=left):
                if usable(msg):
                    batch.messages.append(msg)
                    batch.received_ms.append(int(time.time() * 1000))
            if first and batch.messages:
                deadline = time.monotonic() + linger
                # Waiting for the first event is idle time, not a cost of the events.
                in_hand_ns = time.perf_counter_ns()
        # A rebalance during consume() may have taken partitions away: not ours to handle.
        keep = [
            i for i, m in enumerate(batch.messages) if (m.topic(), m.partition()) in self.assignment
        ]
        if len(keep) < len(batch.messages):
            batch = Batch([batch.messages[i] for i in keep], [batch.received_ms[i] for i in keep])
        if in_hand_ns is not None:
            batch.collect_ns = time.perf_counter_ns() - in_hand_ns
        return batch

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
        self._enter_pause(what, ready)

    def _enter_pause(self, what: str, ready: Callable[[], bool]) -> None:
        assert self._consumer is not None
        self._pausing.start(self._consumer, self._partitions(), what, ready)

    def _while_paused(self) -> None:
        """One pass while paused: keep group membership alive, probe when it is time."""
        assert self._consumer is not None
        for msg in self._consumer.consume(num_messages=1, timeout=self._pausing.wait_s()):
            # Nothing comes from paused partitions; a message here is an error event.
            usable(msg)
        if not self._stop.is_set():
            self._pausing.probe(self._consumer, self._partitions())

    def _registry_ready(self) -> bool:
        try:
            self._registry.get_subjects()
            return True
        except Exception:  # any failure means "not yet"
            return False

    def _seek(self, points: list[TopicPartition]) -> None:
        assert self._consumer is not None
        seek(self._consumer, points, self.assignment)

    def _partitions(self) -> list[TopicPartition]:
        return [TopicPartition(t, p) for t, p in sorted(self.assignment)]

    # -- rebalance callbacks: record the assignment, forget revoked state --

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        added = {(tp.topic, tp.partition) for tp in partitions}
        self.assignment |= added
        if partitions:
            self._pausing.assigned(consumer, partitions)
        self.metrics.rebalances.labels("assigned").inc()
        self.metrics.assigned.set(len(self.assignment))
        logger.info(
            "partitions assigned", extra={"added": sorted(added), "now": sorted(self.assignment)}
        )
        self.assigned.set()
        if self._watchdog is not None:
            self._watchdog.on_partitions(self.assignment)

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
        if self._watchdog is not None:
            self._watchdog.on_partitions(self.assignment)

    # -- start and stop --

    def _start(self, stack: ExitStack) -> None:
        s = self.settings
        stack.callback(self._log_stopped)
        if self._watchdog is not None:
            stack.callback(self._watchdog.stop)
        counts = topics.ensure_topics(s)
        self._registry = avro.registry_client(s.registry_url, s.registry_basic_auth)
        self._decoder = ChangeDecoder(self._registry)
        self._records = RecordBuilder(
            self._registry, s.registry_url, s.predictions_topic, s.dlq_topic, s.shadow_topic,
            copartition=topics.copartitioned(s, counts), alerts_topic=s.alerts_topic,
        )  # fmt: skip
        self._records.register_schemas()
        self._consumer = clients.group_consumer(s, self.group_id)
        stack.callback(self._close_consumer)
        self._producer_config = clients.producer_config(s, self.group_id)
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
                s.bridge_metrics_port, addr=s.listen_host, registry=self.metrics.registry
            )
        except OSError as error:
            raise BridgeError(
                f"cannot serve metrics on {s.host}:{s.bridge_metrics_port} ({error}); "
                "is another bridge running? Set SML_BRIDGE_METRICS_PORT or --metrics-port"
            ) from error
        stack.callback(server.server_close)
        stack.callback(server.shutdown)

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

    # -- bookkeeping --

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
    if apply_connectors:
        commands.apply(settings)
    bridge = Bridge(settings, group_id=group_id, watch_connectors=apply_connectors)
    if install_signal_handlers:
        stop_on_signals(bridge.stop, "finishing the batch in hand")
    return bridge.run(max_events=max_events, timeout=timeout, once=once)
