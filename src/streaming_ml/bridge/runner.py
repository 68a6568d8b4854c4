"""The Bridge (the consume, price, produce, commit loop) and ``run_bridge``."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

import httpx
import requests
from confluent_kafka import (
    OFFSET_INVALID,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext, SerializationError
from prometheus_client import start_http_server

from streaming_ml import connect, serde
from streaming_ml.bridge.batch import (
    Action,
    Change,
    _listing_id,
    backoff_delays,
    dlq_headers,
    offsets_to_commit,
    parse_change,
    plan_actions,
    prediction_record,
    registry_unavailable,
    service_records,
)
from streaming_ml.bridge.metrics import BridgeMetrics, BridgeStats
from streaming_ml.bridge.watchdog import ConnectorWatchdog
from streaming_ml.config import Settings
from streaming_ml.exceptions import BridgeError, ServiceUnavailableError

logger = logging.getLogger(__name__)

HASH_CACHE_SIZE = 1_000_000


class _Stopped(Exception):
    """stop() was called while a batch could not be finished (service down)."""


class _RegistryDown(Exception):
    """The schema registry did not answer; the batch is decoded again later."""


class _Rejected(Exception):
    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {body}")
        self.status = status
        self.body = body


class Bridge:
    """Consume listing changes, price them with the service, produce predictions.

    ``run()`` blocks until ``stop()``, ``max_events`` or ``timeout``; with
    ``once=True`` it returns as soon as the assigned partitions are drained.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        dsn: str | None = None,
        group_id: str | None = None,
        register_connectors: bool = True,
        serve_metrics: bool = True,
        max_retries: int = 4,
        backoff_s: float = 0.25,
        max_backoff_s: float = 4.0,
    ) -> None:
        self.settings = settings
        self.dsn = dsn
        self.group_id = group_id or settings.consumer_group
        self.register_connectors = register_connectors
        self.serve_metrics = serve_metrics
        self.delays = backoff_delays(max_retries, backoff_s, max_backoff_s)
        self.max_backoff_s = max_backoff_s
        self.metrics = BridgeMetrics()
        self.stats = BridgeStats()
        self._stop = threading.Event()
        self._hashes: OrderedDict[int, str] = OrderedDict()
        self._assignment: set[tuple[str, int]] = set()
        self._paused = False
        self._busy = False
        self._in_hand: list[Message] = []
        self._carry: list[Message] = []
        self._received_ms: dict[tuple[str, int, int], int] = {}
        self._unsettled: dict[tuple[str, int], TopicPartition] = {}  # async commits
        self._consumer: Consumer | None = None
        self._producer: Producer | None = None
        self._metrics_server: Any = None
        self._watchdog: ConnectorWatchdog | None = None
        self._session = requests.Session()
        self.ready = threading.Event()  # set once subscribed (for demo/tests)
        self.assigned = threading.Event()  # set once the group gave us partitions

    # -- lifecycle --

    def stop(self) -> None:
        """Ask run() to finish the batch in hand, commit, close and return."""
        self._stop.set()
        if self._watchdog is not None:
            self._watchdog.stop(wait=False)  # may run in a signal handler: do not block

    def run(
        self, max_events: int | None = None, timeout: float | None = None, once: bool = False
    ) -> BridgeStats:
        deadline = time.monotonic() + timeout if timeout is not None else None
        try:
            self._setup()
            while not self._stop.is_set():
                if max_events is not None and self.stats.events >= max_events:
                    break
                if deadline is not None and time.monotonic() >= deadline:
                    logger.info("bridge timeout reached", extra={"timeout_s": timeout})
                    break
                limit = self.settings.batch_max_events
                if max_events is not None:
                    limit = min(limit, max_events - self.stats.events)
                batch = self._collect(limit)
                if not batch:
                    if once and self._drained():
                        logger.info("drained assigned partitions (--once)")
                        break
                    continue
                try:
                    self._process(batch)
                except _Stopped:
                    logger.warning(
                        "stopped while the service was down; batch left uncommitted "
                        "(it is redelivered on the next start)",
                        extra={"events": len(batch)},
                    )
                    break
        finally:
            self._teardown()
        return self.stats

    def _setup(self) -> None:
        s = self.settings
        if self.register_connectors:
            connect.ensure_connectors(s)
            if s.connector_check_interval_s > 0:
                self._watchdog = ConnectorWatchdog(
                    s.connect_url,
                    (s.source_connector, s.sink_connector),
                    s.connector_check_interval_s,
                    self.metrics.connector_restarts,
                )
                self._watchdog.start()
        self._ensure_topics()
        self._registry = serde.registry_client(s.registry_url)
        self._decode = serde.writer_schema_deserializer(self._registry)
        self._key_ser, self._value_ser = serde.prediction_serializers(self._registry)
        self._register_schemas()
        self._producer = Producer(
            {
                "bootstrap.servers": s.kafka_bootstrap,
                "client.id": "streaming-ml-bridge",
                "enable.idempotence": True,
                "linger.ms": 5,
                # Bounds _flush_all: a record Kafka cannot take within 5 min is reported
                # failed and produced again (3 attempts), then the bridge stops without
                # committing, so a restart redelivers the batch.
                "message.timeout.ms": 300_000,
            }
        )
        self._consumer = Consumer(
            {
                "bootstrap.servers": s.kafka_bootstrap,
                "group.id": self.group_id,
                "client.id": "streaming-ml-bridge",
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": "earliest",
                # The change topic appears with the first captured row: notice it soon.
                "topic.metadata.refresh.interval.ms": 5000,
                # A crashed bridge's partitions move to a restarted one after 10 s instead
                # of 45 s; heartbeats come from librdkafka's thread, not from poll().
                "session.timeout.ms": 10000,
                "on_commit": self._on_commit,
            }
        )
        self._consumer.subscribe(
            [s.listings_topic], on_assign=self._on_assign, on_revoke=self._on_revoke
        )
        if self.serve_metrics:
            try:
                self._metrics_server, _ = start_http_server(
                    s.bridge_metrics_port, addr=s.host, registry=self.metrics.registry
                )
            except OSError as error:
                raise BridgeError(
                    f"cannot serve metrics on {s.host}:{s.bridge_metrics_port} ({error}); "
                    "is another bridge running? Set SML_BRIDGE_METRICS_PORT or --metrics-port"
                ) from error
        logger.info(
            "bridge started",
            extra={
                "topic": s.listings_topic,
                "group": self.group_id,
                "service": s.prediction_url,
                "metrics": f"http://{s.host}:{s.bridge_metrics_port}/metrics"
                if self.serve_metrics
                else "off",
            },
        )
        self.ready.set()

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
            # Only the registry's answers: a bug in the sample or the schema must surface
            # as itself, not as "is the registry up?".
            raise BridgeError(
                f"cannot register the prediction schemas in {self.settings.registry_url}: "
                f"{error}. Is the registry up? Try `streaming-ml stack status`."
            ) from error

    def _teardown(self) -> None:
        if self._watchdog is not None:
            self._watchdog.stop()
            self._watchdog = None
        try:
            if self._producer is not None:
                self._flush_all()
        finally:
            # Dropping the last reference destroys the client; a kept one would keep
            # reconnecting (and logging) after the stack is gone.
            self._producer = None
            if self._consumer is not None:
                self._settle_commits()
                self._consumer.close()
                self._consumer = None
            if self._metrics_server is not None:
                self._metrics_server.shutdown()
                self._metrics_server.server_close()
                self._metrics_server = None
            self._session.close()
            logger.info("bridge stopped", extra=self.stats.summary())

    def _ensure_topics(self) -> None:
        """Create the topics up front: the broker may not auto-create the output ones, and
        with the change topic in place the group is assigned at once instead of after the
        first captured row plus a metadata refresh (seconds of latency on a fresh stack)."""
        admin = AdminClient({"bootstrap.servers": self.settings.kafka_bootstrap})
        wanted = [
            self.settings.listings_topic,
            self.settings.predictions_topic,
            self.settings.dlq_topic,
        ]
        # Broker append time makes a record's timestamp mean "reached Kafka", which is
        # what kafka_ts_ms and the benchmark's per-stage figures rely on.
        append_time = {"message.timestamp.type": "LogAppendTime"}
        futures = admin.create_topics(
            [NewTopic(t, num_partitions=1, config=append_time) for t in wanted]
        )
        for topic, future in futures.items():
            try:
                future.result(timeout=30)
            except KafkaException as error:
                if error.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise BridgeError(
                        f"cannot create topic {topic} on {self.settings.kafka_bootstrap}: "
                        f"{error}. Is Kafka up? Try `streaming-ml stack status`."
                    ) from error

    # -- rebalance --

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._assignment = {(tp.topic, tp.partition) for tp in partitions}
        consumer.assign(partitions)
        if self._paused:
            consumer.pause(partitions)
        logger.info("partitions assigned", extra={"partitions": sorted(self._assignment)})
        self.assigned.set()

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        revoked = {(tp.topic, tp.partition) for tp in partitions}
        if self._in_hand and not self._busy:
            # Finish what was collected while we still own the partitions.
            batch, self._in_hand = self._in_hand, []
            try:
                self._busy = True
                self._process(batch, allow_pause=False)
            except (ServiceUnavailableError, _Stopped) as error:
                logger.warning(
                    "revoked with an unfinished batch; it is redelivered to the new owner",
                    extra={"events": len(batch), "error": str(error)},
                )
            finally:
                self._busy = False
        self._settle_commits(revoked)
        self._assignment -= revoked
        self._carry = [m for m in self._carry if (m.topic(), m.partition()) not in revoked]
        logger.info("partitions revoked", extra={"partitions": sorted(revoked)})

    # -- the loop --

    def _collect(self, limit: int) -> list[Message]:
        """Block up to 1 s for the first event, then linger to fill the batch."""
        assert self._consumer is not None
        self._in_hand = self._carry[:limit]
        self._carry = self._carry[limit:]
        linger = self.settings.batch_linger_ms / 1000
        first_deadline = time.monotonic() + 1.0
        linger_deadline: float | None = time.monotonic() + linger if self._in_hand else None
        while len(self._in_hand) < limit and not self._stop.is_set():
            now = time.monotonic()
            deadline = linger_deadline if linger_deadline is not None else first_deadline
            if now >= deadline:
                break
            # consume() returns only once `wanted` messages arrived or the timeout passed:
            # with nothing in hand ask for one, so the first event starts the linger at
            # once instead of after the whole first-event wait (up to 1 s of latency).
            wanted = limit - len(self._in_hand) if self._in_hand else 1
            for msg in self._consumer.consume(num_messages=wanted, timeout=deadline - now):
                if self._usable(msg):
                    self._note_received(msg)
                    self._in_hand.append(msg)
            if self._in_hand and linger_deadline is None:
                linger_deadline = time.monotonic() + linger
        batch, self._in_hand = self._in_hand, []
        return [m for m in batch if (m.topic(), m.partition()) in self._assignment]

    def _note_received(self, msg: Message) -> None:
        self._received_ms[(msg.topic(), msg.partition(), msg.offset())] = int(time.time() * 1000)

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

    def _drained(self) -> bool:
        assert self._consumer is not None
        if not self._assignment:
            # No assignment yet: done only if there is no change topic at all (no row
            # was ever captured), otherwise wait for the group to assign it.
            topic = self.settings.listings_topic
            meta = self._consumer.list_topics(topic, timeout=10).topics.get(topic)
            return meta is None or meta.error is not None
        tps = [TopicPartition(t, p) for t, p in sorted(self._assignment)]
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

    def _process(self, batch: list[Message], allow_pause: bool = True) -> None:
        started = time.monotonic()
        now_ms = int(time.time() * 1000)
        received = [
            self._received_ms.pop((m.topic(), m.partition(), m.offset()), now_ms) for m in batch
        ]
        decoded = self._decode_batch(batch, allow_pause)
        ops = Counter(item.op if isinstance(item, Change) else "undecodable" for item in decoded)
        for op, n in ops.items():
            self.metrics.events.labels(op).inc(n)
        actions = plan_actions(decoded, self._known_hash, self._stored_hashes)

        to_price = [a for a in actions if a.kind == "predict"]
        results, rejected, model_ms = self._price(to_price, allow_pause)
        predicted_ms = int(time.time() * 1000)

        outputs: list[tuple[str, bytes | None, bytes | None, list[tuple[str, bytes]] | None]] = []
        counts = {"predicted": 0, "tombstones": 0, "dlq": 0, "skipped": 0, "unchanged": 0}
        new_hashes: dict[int, str | None] = {}
        records: list[dict[str, Any]] = []
        s = self.settings
        for action in actions:
            msg = batch[action.index]
            kafka_ts = msg.timestamp()[1]
            if action.kind == "predict" and id(action) in rejected:
                action.kind, action.reason = "dlq", rejected[id(action)]
            if action.kind == "dlq":
                stage = "decode" if action.change is None else "validation"
                if id(action) in rejected:
                    stage = "service"
                headers = dlq_headers(
                    action.reason or "", msg.topic(), msg.partition(), msg.offset()
                )
                outputs.append((s.dlq_topic, msg.key(), msg.value(), headers))
                self.metrics.dlq.labels(stage).inc()
                counts["dlq"] += 1
                logger.warning(
                    "event dead-lettered",
                    extra={
                        "listing_id": action.listing_id,
                        "offset": msg.offset(),
                        "partition": msg.partition(),
                        "reason": action.reason,
                    },
                )
            elif action.kind == "tombstone":
                outputs.append((s.predictions_topic, self._key(action.listing_id), None, None))
                new_hashes[action.listing_id] = None  # type: ignore[index]
                counts["tombstones"] += 1
            elif action.kind == "skip":
                counts["unchanged" if action.skip_why == "unchanged" else "skipped"] += 1
            else:
                record = prediction_record(
                    action,
                    results[id(action)],
                    kafka_ts_ms=kafka_ts,
                    received_ts_ms=received[action.index],
                    predicted_ts_ms=predicted_ms,
                    model_latency_ms=model_ms,
                )
                outputs.append(
                    (s.predictions_topic, self._key(action.listing_id), self._value(record), None)
                )
                new_hashes[action.listing_id] = action.features_hash  # type: ignore[index]
                counts["predicted"] += 1
                records.append(record)

        self._observe_latency(records)
        self._produce_and_wait(outputs)
        self._commit(batch)
        for lid, digest in new_hashes.items():
            self._remember(lid, digest)
        self._update_stats(batch, counts, model_ms, started)

    # -- decoding and state --

    def _decode_batch(self, batch: list[Message], allow_pause: bool) -> list[Change | str]:
        """Decode every message; while the registry is down, pause and try again (a
        registry outage must not send good events to the DLQ)."""
        while True:
            try:
                return [self._decode_message(m) for m in batch]
            except _RegistryDown as error:
                if not allow_pause:
                    raise ServiceUnavailableError(
                        f"schema registry unavailable: {error}"
                    ) from error
                self._pause_until(self._registry_ready, "schema registry", self._registry_probe)

    def _decode_message(self, msg: Message) -> Change | str:
        """A Change, or the DLQ reason when the bytes cannot be read."""
        try:
            # No SerializationContext: it only names the subject for data-contract rules
            # (none are defined on the change topic), and with it the library walks the
            # whole Debezium schema for rule tags on every message (~40 % of decode time).
            # The writer schema still comes from the registry by the id in the framing.
            key = self._decode(msg.key(), None)
            value = self._decode(msg.value(), None)
        except Exception as error:  # anything but an unreachable registry is a poison message
            if registry_unavailable(error):
                raise _RegistryDown(f"{type(error).__name__}: {error}") from error
            return f"deserialization: {type(error).__name__}: {error}"
        if value is None:
            # Debezium's tombstone after a delete event: nothing to price.
            return Change("tombstone", _listing_id(key, None), None, None, None)
        if not isinstance(value, Mapping):
            return f"deserialization: expected a record, got {type(value).__name__}"
        try:
            return parse_change(key if isinstance(key, Mapping) else None, value)
        except (TypeError, ValueError) as error:
            return f"deserialization: not a change event ({error})"

    def _known_hash(self, listing_id: int) -> str | None:
        return self._hashes.get(listing_id)

    def _remember(self, listing_id: int, digest: str | None) -> None:
        if digest is None:
            self._hashes.pop(listing_id, None)
            return
        self._hashes[listing_id] = digest
        self._hashes.move_to_end(listing_id)
        while len(self._hashes) > HASH_CACHE_SIZE:
            self._hashes.popitem(last=False)

    def _stored_hashes(self, listing_ids: list[int]) -> dict[int, str]:
        """features_hash of the stored predictions, in one query per batch."""
        if not self.dsn or not listing_ids:
            return {}
        import psycopg2

        table = self.settings.predictions_table
        try:
            with psycopg2.connect(self.dsn, connect_timeout=5) as conn, conn.cursor() as cur:
                cur.execute(
                    f"SELECT listing_id, features_hash FROM public.{table} "
                    "WHERE listing_id = ANY(%s)",
                    (listing_ids,),
                )
                found = {int(lid): digest for lid, digest in cur.fetchall() if digest}
            conn.close()
            return found
        except psycopg2.Error as error:
            # Without the lookup the update is re-priced: correct, only slower.
            logger.warning("predictions lookup failed", extra={"error": str(error).strip()})
            return {}

    # -- the model call --

    def _price(
        self, actions: list[Action], allow_pause: bool
    ) -> tuple[dict[int, Mapping[str, Any]], dict[int, str], float]:
        """(results by id(action), DLQ reasons by id(action), model latency ms)."""
        if not actions:
            return {}, {}, 0.0
        started = time.perf_counter()
        results: dict[int, Mapping[str, Any]] = {}
        rejected: dict[int, str] = {}
        self._price_isolating(actions, results, rejected, allow_pause)
        model_ms = (time.perf_counter() - started) * 1000
        self.metrics.latency.labels("model_call").observe(model_ms / 1000)
        return results, rejected, model_ms

    def _price_isolating(
        self,
        actions: list[Action],
        results: dict[int, Mapping[str, Any]],
        rejected: dict[int, str],
        allow_pause: bool,
    ) -> None:
        """Price ``actions``; on a 4xx split the batch until the offending records are
        found, so only they are dead-lettered."""
        rows = service_records(a.change.row for a in actions)  # type: ignore[union-attr]
        try:
            answer = self._call_until_answered(rows, allow_pause)
        except _Rejected as error:
            if len(actions) == 1:
                rejected[id(actions[0])] = f"service: {error}"
                return
            middle = len(actions) // 2
            self._price_isolating(actions[:middle], results, rejected, allow_pause)
            self._price_isolating(actions[middle:], results, rejected, allow_pause)
            return
        for action, result in zip(actions, answer, strict=True):
            results[id(action)] = result

    def _call_until_answered(self, rows: list[dict[str, Any]], allow_pause: bool) -> list[Any]:
        while True:
            try:
                return self._call_with_retries(rows)
            except ServiceUnavailableError:
                if not allow_pause:
                    raise
                self._pause_until(self._service_ready, "prediction service", self._service_probe)

    def _call_with_retries(self, rows: list[dict[str, Any]]) -> list[Any]:
        url = self.settings.prediction_url.rstrip("/") + "/predict_batch"
        problem = ""
        for attempt, delay in enumerate([*self.delays, None]):
            try:
                response = self._session.post(
                    url, json={"records": rows}, timeout=self.settings.request_timeout_s
                )
                if 400 <= response.status_code < 500:
                    raise _Rejected(response.status_code, response.text[:500])
                if response.status_code == 200:
                    answer = response.json()
                    if not isinstance(answer, list) or len(answer) != len(rows):
                        got = len(answer) if isinstance(answer, list) else repr(answer)[:200]
                        raise BridgeError(
                            f"{url} answered {got} for {len(rows)} records; "
                            "is the service the right version?"
                        )
                    return answer
                problem = f"HTTP {response.status_code}: {response.text[:200]}"
            except requests.RequestException as error:
                problem = f"{type(error).__name__}: {error}"
            if delay is None:
                break
            logger.warning(
                "prediction call failed, retrying",
                extra={"attempt": attempt + 1, "retry_in_s": delay, "error": problem},
            )
            if self._stop.wait(delay):
                raise _Stopped
        raise ServiceUnavailableError(
            f"prediction service {self.settings.prediction_url} failed {len(self.delays) + 1} "
            f"times ({problem}); start it with `bentoml serve service:PricePredictor` or "
            "check SML_SERVICE_URL"
        )

    @property
    def _service_probe(self) -> str:
        return self.settings.prediction_url.rstrip("/") + "/readyz"

    def _service_ready(self) -> bool:
        timeout = self.settings.request_timeout_s
        return self._session.get(self._service_probe, timeout=timeout).ok

    @property
    def _registry_probe(self) -> str:
        return self.settings.registry_url.rstrip("/") + "/subjects"

    def _registry_ready(self) -> bool:
        return self._session.get(self._registry_probe, timeout=5).ok

    def _pause_until(self, is_up: Callable[[], bool], what: str, probe: str) -> None:
        """Pause the partitions and keep polling (group membership stays alive) until
        ``is_up()`` (a readiness probe of ``what``) says it is back."""
        assert self._consumer is not None
        tps = [TopicPartition(t, p) for t, p in sorted(self._assignment)]
        self._paused = True
        self.metrics.paused.set(1)
        if tps:
            self._consumer.pause(tps)
        waited_since = time.monotonic()
        next_report = waited_since + 5.0
        delay = self.delays[0] if self.delays else 0.5
        logger.error(
            f"{what} unavailable: consumption paused until it is back",
            extra={"probe": probe},
        )
        try:
            while True:
                self._busy = True
                try:
                    msg = self._consumer.poll(min(delay, 1.0))
                finally:
                    self._busy = False
                if msg is not None and self._usable(msg):
                    self._note_received(msg)
                    self._carry.append(msg)  # fetched before the pause took effect
                if self._stop.is_set():
                    raise _Stopped
                try:
                    if is_up():
                        break
                except requests.RequestException:
                    pass
                delay = min(self.max_backoff_s, delay * 2)
                if time.monotonic() >= next_report:
                    next_report = time.monotonic() + 5.0
                    logger.info(
                        f"waiting for the {what}",
                        extra={
                            "probe": probe,
                            "waited_s": round(time.monotonic() - waited_since, 1),
                        },
                    )
        finally:
            self._paused = False
            self.metrics.paused.set(0)
            tps = [TopicPartition(t, p) for t, p in sorted(self._assignment)]
            if tps:
                self._consumer.resume(tps)
        logger.info(
            f"{what} is back: resuming",
            extra={"paused_s": round(time.monotonic() - waited_since, 1)},
        )

    # -- output --

    def _key(self, listing_id: int | None) -> bytes:
        ctx = SerializationContext(self.settings.predictions_topic, MessageField.KEY)
        return self._key_ser({serde.KEY_FIELD: listing_id}, ctx)

    def _value(self, record: dict[str, Any]) -> bytes:
        ctx = SerializationContext(self.settings.predictions_topic, MessageField.VALUE)
        return self._value_ser(record, ctx)

    def _produce_and_wait(
        self,
        outputs: list[tuple[str, bytes | None, bytes | None, list[tuple[str, bytes]] | None]],
        attempts: int = 3,
    ) -> None:
        """Produce and block until every record is acknowledged; re-produce failures.
        The idempotent producer keeps the per-partition order of a batch."""
        assert self._producer is not None
        pending = list(outputs)
        for attempt in range(1, attempts + 1):
            failed: list[Any] = []

            def on_delivery(
                error: KafkaError | None, _msg: Message, item: Any, failed: list[Any] = failed
            ) -> None:
                if error is not None:
                    failed.append((item, error))

            for item in pending:
                topic, key, value, headers = item
                while True:
                    try:
                        self._producer.produce(
                            topic,
                            key=key,
                            value=value,
                            headers=headers,
                            on_delivery=lambda e, m, item=item: on_delivery(e, m, item),
                        )
                        break
                    except BufferError:
                        self._producer.poll(0.1)  # local queue full: let deliveries drain
                self._producer.poll(0)
            self._flush_all()
            if not failed:
                return
            pending = [item for item, _ in failed]
            logger.warning(
                "some records were not acknowledged, producing them again",
                extra={"failed": len(failed), "attempt": attempt, "error": str(failed[0][1])},
            )
        raise BridgeError(
            f"{len(pending)} records were not acknowledged by Kafka after {attempts} attempts; "
            "offsets were not committed, so a restart redelivers the batch"
        )

    def _flush_all(self) -> None:
        assert self._producer is not None
        waited = 0.0
        while (left := self._producer.flush(5.0)) > 0:
            waited += 5.0
            logger.warning(
                "waiting for Kafka to acknowledge records",
                extra={"in_flight": left, "waited_s": waited},
            )

    def _commit(self, batch: list[Message]) -> None:
        assert self._consumer is not None
        offsets = offsets_to_commit((m.topic(), m.partition(), m.offset()) for m in batch)
        offsets = [tp for tp in offsets if (tp.topic, tp.partition) in self._assignment]
        if not offsets:
            return
        # Asynchronous: the outputs are acknowledged already, so the next batch need not
        # wait for the coordinator. _settle_commits() commits the latest offsets again
        # synchronously before partitions move or the consumer closes.
        for tp in offsets:
            self._unsettled[(tp.topic, tp.partition)] = tp
        try:
            self._consumer.commit(offsets=offsets, asynchronous=True)
        except KafkaException as error:
            self._on_commit(error.args[0], offsets)

    def _settle_commits(self, partitions: set[tuple[str, int]] | None = None) -> None:
        """Commit the latest offsets of ``partitions`` (default all) and wait for it."""
        assert self._consumer is not None
        keys = [k for k in self._unsettled if partitions is None or k in partitions]
        offsets = [self._unsettled.pop(k) for k in keys]
        if not offsets:
            return
        try:
            self._consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as error:
            self._on_commit(error.args[0], offsets)

    def _on_commit(self, error: KafkaError | None, _offsets: list[TopicPartition]) -> None:
        if error is not None and error.code() != KafkaError._NO_OFFSET:
            # Outputs are acknowledged; redelivery after a failed commit only upserts again.
            logger.warning("offset commit failed", extra={"error": str(error)})

    # -- bookkeeping --

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

    def _update_stats(
        self, batch: list[Message], counts: dict[str, int], model_ms: float, started: float
    ) -> None:
        st = self.stats
        st.events += len(batch)
        st.predicted += counts["predicted"]
        st.tombstones += counts["tombstones"]
        st.dlq += counts["dlq"]
        st.skipped_unchanged += counts["unchanged"]
        st.skipped_other += counts["skipped"]
        st.batches += 1
        m = self.metrics
        m.predictions.inc(counts["predicted"])
        m.tombstones.inc(counts["tombstones"])
        m.skipped.inc(counts["unchanged"])
        m.batch_size.observe(len(batch))
        self._update_lag()
        st.last_batch = {
            "events": len(batch),
            **counts,
            "model_ms": round(model_ms, 1),
            "batch_ms": round((time.monotonic() - started) * 1000, 1),
        }
        logger.info("batch done", extra=st.last_batch)

    def _update_lag(self) -> None:
        assert self._consumer is not None
        tps = [TopicPartition(t, p) for t, p in sorted(self._assignment)]
        if not tps:
            return
        try:
            for tp in self._consumer.position(tps):
                _, high = self._consumer.get_watermark_offsets(tp, cached=True)
                if tp.offset >= 0 and high >= 0:
                    self.metrics.lag.labels(str(tp.partition)).set(max(0, high - tp.offset))
        except KafkaException as error:
            logger.debug("lag not available", extra={"error": str(error)})


def run_bridge(
    settings: Settings,
    *,
    dsn: str | None = None,
    group_id: str | None = None,
    once: bool = False,
    max_events: int | None = None,
    timeout: float | None = None,
    register_connectors: bool = True,
    install_signal_handlers: bool = True,
) -> BridgeStats:
    """Entry point of ``streaming-ml bridge``: SIGTERM/SIGINT stop it gracefully."""
    bridge = Bridge(settings, dsn=dsn, group_id=group_id, register_connectors=register_connectors)
    if install_signal_handlers:
        import signal

        def _handle(signum: int, _frame: Any) -> None:
            logger.info("signal received: finishing the batch in hand", extra={"signal": signum})
            bridge.stop()

        signal.signal(signal.SIGTERM, _handle)
        signal.signal(signal.SIGINT, _handle)
    stats = bridge.run(max_events=max_events, timeout=timeout, once=once)
    return stats
