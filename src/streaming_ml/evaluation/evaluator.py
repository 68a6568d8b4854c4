"""The evaluator: labels and predictions in, outcomes, running metrics and alerts out.

A consumer group of its own reads the change topic (labels, and the features drift is
measured on), the predictions topic and the shadow topic. Those three are
co-partitioned: the bridge writes a listing's predictions to the partition number its
change came from, and the range assignor hands one member the same partition number of
every topic, so everything about a listing meets in one process.

Per partition, the state is each listing's label and predictions (``outcomes``), the
label coverage counts and the drift windows. It lives in memory and in a compacted
changelog topic. Each batch is one Kafka transaction holding the outcomes, the alerts,
the changelog records and the consumed offsets (KIP-447, as the bridge does), so after
a crash the state, the offsets and the outputs agree: nothing is emitted twice and
nothing is lost. On assignment, and after an aborted transaction, the state is rebuilt
from the changelog and the running metrics by replaying the partition's outcomes.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    Message,
    TopicPartition,
)
from confluent_kafka.serialization import MessageField, SerializationContext

from streaming_ml.config import Settings
from streaming_ml.errors import BridgeError
from streaming_ml.evaluation import outcomes as joins
from streaming_ml.evaluation.accuracy import Degraded, Scoreboard, coverage_of
from streaming_ml.evaluation.drift import DriftWindow, WindowResult
from streaming_ml.evaluation.metrics import EvaluatorMetrics
from streaming_ml.kafka import clients, replay
from streaming_ml.kafka import topics as topics_mod
from streaming_ml.kafka.changes import (
    Change,
    ChangeDecoder,
    RegistryUnavailable,
    registry_unavailable,
)
from streaming_ml.kafka.output import OutputAborted, OutputFatal, OutRecord, TransactionalOutput
from streaming_ml.models.reference import PREDICTION
from streaming_ml.schema import avro
from streaming_ml.schema.fields import (
    ALERT_FIELDS,
    ALERT_KEY_FIELDS,
    OUTCOME_FIELDS,
    OUTCOME_KEY_FIELDS,
)
from streaming_ml.schema.listing import ALL_FEATURES, FEATURES, feature_problems
from streaming_ml.schema.outcome import Outcome
from streaming_ml.system.processes import stop_on_signals

logger = logging.getLogger(__name__)

PARTITION_KEY = b"partition"
LISTING_PREFIX = "listing:"
RESTORE_TIMEOUT_S = 120.0


def _now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class PartitionState:
    """Everything the evaluator keeps about one co-partitioned partition number."""

    partition: int
    features: DriftWindow
    prediction: DriftWindow
    listings: dict[int, joins.ListingState] = field(default_factory=dict)
    predicted: Counter[str] = field(default_factory=Counter)  # pairs first predicted
    labelled: Counter[str] = field(default_factory=Counter)  # pairs first labelled
    dirty: set[int] = field(default_factory=set)  # listings changed in this batch
    deleted: set[int] = field(default_factory=set)
    changed: bool = False  # counters or windows changed in this batch

    def record(self) -> dict[str, Any]:
        return {
            "predicted": dict(self.predicted),
            "labelled": dict(self.labelled),
            "features": self.features.to_json(),
            "prediction": self.prediction.to_json(),
        }

    def restore(self, raw: Mapping[str, Any]) -> None:
        self.predicted = Counter(raw.get("predicted") or {})
        self.labelled = Counter(raw.get("labelled") or {})
        self.features.restore(raw.get("features") or {})
        self.prediction.restore(raw.get("prediction") or {})


@dataclass
class EvaluatorStats:
    events: int = 0
    outcomes: int = 0
    alerts: int = 0
    batches: int = 0
    restores: int = 0


class Evaluator:
    """Consume labels and predictions; publish outcomes and alerts; export metrics.

    ``run()`` blocks until ``stop()`` or ``timeout``.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        group_id: str | None = None,
        serve_metrics: bool = True,
    ) -> None:
        self.settings = settings
        self.group_id = group_id or settings.evaluator_group
        self.serve_metrics = serve_metrics
        self.stats = EvaluatorStats()
        self.metrics = EvaluatorMetrics()
        self.scoreboard = self._new_scoreboard()
        self.partitions: dict[int, PartitionState] = {}
        self.assigned = threading.Event()
        self._stop = threading.Event()
        self._consumer: Consumer | None = None
        self._output: TransactionalOutput | None = None
        self._references: dict[str, dict[str, Any] | None] = {}
        self._champion: str | None = None
        self._needs_restore = False
        self._inputs = (settings.listings_topic, settings.predictions_topic, settings.shadow_topic)

    def stop(self) -> None:
        self._stop.set()

    def _new_scoreboard(self) -> Scoreboard:
        s = self.settings
        return Scoreboard(s.metrics_window_outcomes, s.metrics_window_minutes, s.degraded_threshold)

    # -- set-up --

    def _ensure_topics(self) -> None:
        """The inputs (as the bridge creates them), the outputs and the changelog, all
        with the same partition count: co-partitioning is what makes the join local."""
        s = self.settings
        # Compaction keeps each listing's last state; the lag leaves recent records alone.
        changelog = {"cleanup.policy": "compact", "min.compaction.lag.ms": "60000"}
        counts = topics_mod.ensure_topics(s, {s.evaluator_state_topic: changelog})
        wanted = [*self._inputs, s.outcomes_topic, s.alerts_topic, s.evaluator_state_topic]
        sizes = {topic: counts.get(topic) for topic in wanted}
        if len(set(sizes.values())) != 1:
            raise BridgeError(
                f"the evaluator needs co-partitioned topics (one partition count), got {sizes}. "
                "Topics keep the count they were created with: recreate the odd ones "
                "(`streaming-ml stack down --purge` for a local stack) with SML_PARTITIONS."
            )

    def _start(self) -> None:
        s = self.settings
        self._ensure_topics()
        self._champion = self._registry_champion()
        registry = avro.registry_client(s.registry_url)
        self._changes = ChangeDecoder(registry)
        self._decode = avro.writer_schema_deserializer(registry)
        self._outcome_ser = avro.table_serializers(
            registry, "CarPriceOutcome", "A prediction judged against the listing's price",
            OUTCOME_FIELDS, OUTCOME_KEY_FIELDS,
        )  # fmt: skip
        self._alert_ser = avro.table_serializers(
            registry, "CarPriceAlert", "Drift or degradation alert", ALERT_FIELDS, ALERT_KEY_FIELDS
        )
        config = {
            **clients.consumer_config(s, self.group_id),
            "client.id": "streaming-ml-evaluator",
            # Range hands one member the same partition number of every input topic.
            "partition.assignment.strategy": "range",
        }
        config.pop("group.instance.id", None)
        self._consumer = Consumer(config)
        self._output = self._new_output()
        self._consumer.subscribe(
            list(self._inputs), on_assign=self._on_assign, on_revoke=self._on_revoke
        )
        if self.serve_metrics:
            self.metrics.serve(s.evaluator_metrics_port, s.host)
        logger.info(
            "evaluator started",
            extra={"group": self.group_id, "inputs": list(self._inputs)},
        )

    def _registry_champion(self) -> str | None:
        """The registry's champion, so drift is measured from the first row; without a
        registry (a pinned service) it is learnt from the first champion prediction."""
        from streaming_ml.models import registry

        try:
            return registry.read_aliases(self.settings, timeout_s=10).champion
        except Exception as error:
            logger.info("no champion in the registry yet", extra={"error": str(error)})
            return None

    def _new_output(self) -> TransactionalOutput:
        assert self._consumer is not None
        config = {
            **clients.producer_config(self.settings, self.group_id),
            "client.id": "streaming-ml-evaluator",
        }
        return TransactionalOutput(
            config, self._consumer.consumer_group_metadata, self.settings.transaction_timeout_s
        )

    # -- rebalances and restores --

    def _on_assign(self, consumer: Consumer, assigned: list[TopicPartition]) -> None:
        numbers = sorted({tp.partition for tp in assigned})
        self._restore(numbers)
        self.assigned.set()
        logger.info("evaluator assigned", extra={"partitions": numbers})

    def _on_revoke(self, consumer: Consumer, revoked: list[TopicPartition]) -> None:
        # The next assignment rebuilds what it needs; a revoked partition's state may
        # be changed by its next owner meanwhile, so none of it is kept.
        for number in {tp.partition for tp in revoked}:
            self.partitions.pop(number, None)

    def _new_partition(self, number: int) -> PartitionState:
        s = self.settings

        def window() -> DriftWindow:
            return DriftWindow(s.drift_window_rows, s.drift_psi_threshold, s.drift_alert_windows)

        return PartitionState(number, window(), window())

    def _reader(self) -> Consumer:
        return Consumer(
            {
                "bootstrap.servers": self.settings.kafka_bootstrap,
                "group.id": f"{self.group_id}-restore",
                "enable.auto.commit": False,
                "enable.partition.eof": True,
                "isolation.level": "read_committed",
            }
        )

    def _read(self, topic: str, numbers: Iterable[int], on_message: Callable[[Any], None]) -> None:
        start = {n: OFFSET_BEGINNING for n in numbers}
        if not start:
            return
        reader = self._reader()
        try:
            _count, complete = replay.read_until_end(
                reader, topic, start, on_message, RESTORE_TIMEOUT_S
            )
        finally:
            reader.close()
        if not complete:
            raise BridgeError(f"could not read {topic} to its end in {RESTORE_TIMEOUT_S:g} s")

    def _restore(self, numbers: list[int]) -> None:
        """Rebuild the state of ``numbers`` from the changelog and the outcomes topic."""
        started = time.monotonic()
        fresh = {n: self._new_partition(n) for n in numbers}

        def on_state(msg: Message) -> None:
            state = fresh[msg.partition()]
            key = msg.key() or b""
            if key == PARTITION_KEY:
                if msg.value() is not None:
                    state.restore(json.loads(msg.value()))
                return
            listing_id = int(key.decode().removeprefix(LISTING_PREFIX))
            if msg.value() is None:
                state.listings.pop(listing_id, None)
            else:
                state.listings[listing_id] = joins.ListingState.from_json(json.loads(msg.value()))

        self._read(self.settings.evaluator_state_topic, numbers, on_state)
        for state in fresh.values():
            self._apply_reference(state)
        self.partitions.update(fresh)
        self._rebuild_scoreboard()
        self.stats.restores += 1
        logger.info(
            "evaluator state restored",
            extra={
                "partitions": numbers,
                "listings": sum(len(p.listings) for p in fresh.values()),
                "outcomes": sum(m.n for m in self.scoreboard.pairs.values()),
                "seconds": round(time.monotonic() - started, 2),
            },
        )

    def _rebuild_scoreboard(self) -> None:
        """Replay the owned partitions' committed outcomes: exact cumulative metrics and
        the detectors in the state they reached."""
        self.scoreboard = self._new_scoreboard()

        def on_outcome(msg: Message) -> None:
            if msg.value() is None:
                return
            record = self._decode(msg.value(), None)
            self.scoreboard.add(Outcome.from_record(record), msg.partition())

        self._read(self.settings.outcomes_topic, sorted(self.partitions), on_outcome)
        self.scoreboard.degraded.clear()
        self._export()

    # -- the loop --

    def run(self, timeout: float | None = None) -> EvaluatorStats:
        deadline = time.monotonic() + timeout if timeout is not None else None
        self._start()
        assert self._consumer is not None
        try:
            while not self._stop.is_set():
                if deadline is not None and time.monotonic() >= deadline:
                    break
                messages = self._consumer.consume(num_messages=500, timeout=0.5)
                if self._needs_restore:
                    self._recover()
                    continue
                batch = [m for m in messages if self._usable(m)]
                if batch:
                    self._handle(batch)
        finally:
            self._close()
        return self.stats

    def _usable(self, msg: Message) -> bool:
        error = msg.error()
        if error is None:
            return True
        if error.code() != KafkaError._PARTITION_EOF:
            logger.warning("consume error", extra={"error": str(error)})
        return False

    def _recover(self) -> None:
        """After an aborted batch: forget what it did and start again from the last
        committed offsets and state."""
        assert self._consumer is not None
        self._needs_restore = False
        assignment = self._consumer.assignment()
        self._restore(sorted({tp.partition for tp in assignment}))
        for tp in self._consumer.committed(assignment, timeout=30):
            offset = tp.offset if tp.offset >= 0 else OFFSET_BEGINNING
            self._consumer.seek(TopicPartition(tp.topic, tp.partition, offset))

    def _decode_batch(self, batch: list[Message]) -> list[Change | dict[str, Any] | str | None]:
        decoded: list[Change | dict[str, Any] | str | None] = []
        for msg in batch:
            if msg.topic() == self.settings.listings_topic:
                decoded.append(self._changes.decode(msg))
            elif msg.value() is None:
                decoded.append(None)  # a withdrawn prediction
            else:
                try:
                    decoded.append(self._decode(msg.value(), None))
                except Exception as error:
                    if registry_unavailable(error):
                        raise RegistryUnavailable(str(error)) from error
                    decoded.append(f"undecodable prediction: {error}")
        return decoded

    def _handle(self, batch: list[Message]) -> None:
        assert self._consumer is not None and self._output is not None
        try:
            decoded = self._decode_batch(batch)
        except RegistryUnavailable as error:
            logger.warning("registry unavailable; retrying the batch", extra={"error": str(error)})
            self._rewind(batch)
            self._stop.wait(1.0)
            return
        now = _now_ms()
        found: list[tuple[int, Outcome]] = []
        alerts: list[tuple[int, dict[str, Any]]] = []
        for msg, item in zip(batch, decoded, strict=True):
            state = self.partitions.get(msg.partition())
            if state is None:
                continue  # revoked while the batch was in flight
            self.stats.events += 1
            if isinstance(item, str):
                logger.debug("skipped an undecodable record", extra={"reason": item})
                continue
            if msg.topic() == self.settings.listings_topic:
                assert isinstance(item, Change | type(None))
                transition = self._on_change(state, item, now, alerts) if item else None
            else:
                key = self._decode(msg.key(), None) if msg.key() else None
                listing_id = int(key[avro.KEY_FIELD]) if key else None
                transition = self._on_prediction(state, listing_id, item, now, alerts)
            if transition is not None:
                found.extend((state.partition, o) for o in transition.outcomes)
                state.predicted.update(transition.first_predicted)
                state.labelled.update(transition.first_labelled)
                if transition.first_predicted or transition.first_labelled:
                    state.changed = True
        for partition, outcome in found:
            degraded = self.scoreboard.add(outcome, partition)
            if degraded is not None:
                alerts.append((partition, self._degraded_alert(degraded, now)))
        records = self._records(found, alerts)
        offsets = self._offsets(batch)
        try:
            self._output.publish(records, offsets)
        except OutputAborted as error:
            logger.warning("evaluator batch aborted; restoring", extra={"error": str(error)})
            self._needs_restore = True
            return
        except OutputFatal as error:
            logger.warning("evaluator producer replaced", extra={"error": str(error)})
            self._output = self._new_output()
            self._needs_restore = True
            return
        for state in self.partitions.values():
            state.dirty.clear()
            state.deleted.clear()
            state.changed = False
        self.stats.batches += 1
        self.stats.outcomes += len(found)
        self.stats.alerts += len(alerts)
        for _partition, alert in alerts:
            logger.warning("ALERT %s", alert["message"], extra={"alert_id": alert["alert_id"]})
        self.metrics.observe_alerts(a for _p, a in alerts)
        self._export()

    def _rewind(self, batch: list[Message]) -> None:
        assert self._consumer is not None
        first: dict[tuple[str, int], int] = {}
        for msg in batch:
            first.setdefault((msg.topic(), msg.partition()), msg.offset())
        for (topic, partition), offset in first.items():
            self._consumer.seek(TopicPartition(topic, partition, offset))

    @staticmethod
    def _offsets(batch: list[Message]) -> list[TopicPartition]:
        last: dict[tuple[str, int], int] = {}
        for msg in batch:
            last[(msg.topic(), msg.partition())] = msg.offset() + 1
        return [TopicPartition(t, p, o) for (t, p), o in last.items()]

    # -- one event --

    def _listing(self, state: PartitionState, listing_id: int) -> joins.ListingState:
        state.dirty.add(listing_id)
        state.deleted.discard(listing_id)
        return state.listings.setdefault(listing_id, joins.ListingState())

    def _on_change(
        self,
        state: PartitionState,
        change: Change,
        now: int,
        alerts: list[tuple[int, dict[str, Any]]],
    ) -> joins.Transition | None:
        lid = change.listing_id
        if lid is None:
            return None
        if change.op == "d":
            state.listings.pop(lid, None)
            state.dirty.discard(lid)
            state.deleted.add(lid)
            return None
        if change.row is None or change.op not in ("c", "u", "r"):
            return None
        new_features = change.op != "u" or not change.unchanged >= ALL_FEATURES
        if new_features and not feature_problems(change.row):
            self._observe(state, state.features, {n: change.row.get(n) for n in FEATURES}, alerts)
        ts = change.source_ts_ms if change.source_ts_ms is not None else now
        return joins.on_row(lid, self._listing(state, lid), change.row, ts, now)

    def _on_prediction(
        self,
        state: PartitionState,
        listing_id: int | None,
        record: Mapping[str, Any] | None,
        now: int,
        alerts: list[tuple[int, dict[str, Any]]],
    ) -> joins.Transition | None:
        if listing_id is None:
            return None
        if record is None:
            if listing_id in state.listings:
                joins.on_retraction(self._listing(state, listing_id))
            return None
        if (record.get("arm") or "champion") == "champion":
            self._follow_champion(str(record["model_tag"]))
            self._observe(state, state.prediction, {PREDICTION: record["predicted_price"]}, alerts)
        return joins.on_prediction(listing_id, self._listing(state, listing_id), record, now)

    # -- drift --

    def _reference(self, tag: str) -> dict[str, Any] | None:
        """The champion's training reference (``metadata["reference"]``), or None for a
        model trained before references were stored (drift is then not measured)."""
        if tag not in self._references:
            from streaming_ml.models import registry, store

            reference = None
            try:
                stored = registry.fetch(self.settings, tag)
                reference = store.get_bento_model(stored).info.metadata.get("reference")
            except Exception as error:
                logger.warning(
                    "no drift reference for the champion",
                    extra={"model_tag": tag, "error": str(error)},
                )
            if reference is None:
                logger.warning(
                    "champion has no stored reference distribution: drift is not measured "
                    "(retrain it with this version to store one)",
                    extra={"model_tag": tag},
                )
            self._references[tag] = reference
        return self._references[tag]

    def _follow_champion(self, tag: str) -> None:
        if tag == self._champion:
            return
        self._champion = tag
        for state in self.partitions.values():
            self._apply_reference(state)

    def _apply_reference(self, state: PartitionState) -> None:
        """Score the partition's windows against the champion's reference."""
        reference = self._reference(self._champion) if self._champion else None
        if reference is None:
            return
        assert self._champion is not None
        state.features.use(self._champion, reference["features"])
        state.prediction.use(self._champion, {PREDICTION: reference[PREDICTION]})
        state.changed = True

    def _observe(
        self,
        state: PartitionState,
        window: DriftWindow,
        values: Mapping[str, Any],
        alerts: list[tuple[int, dict[str, Any]]],
    ) -> None:
        if not window.ready:
            return  # no reference yet (no champion seen, or one trained without it)
        state.changed = True
        result = window.observe(values)
        if result is None:
            return
        self.metrics.observe_window(state.partition, result)
        for name in result.alerts:
            alerts.append(
                (state.partition, self._drift_alert(state.partition, window, result, name))
            )

    def _drift_alert(
        self, partition: int, window: DriftWindow, result: WindowResult, name: str
    ) -> dict[str, Any]:
        psi = result.scores[name]["psi"]
        kind = "prediction_drift" if name == PREDICTION else "feature_drift"
        subject = "the predicted price" if name == PREDICTION else f"feature {name}"
        return {
            "alert_id": f"{kind}:{name}:p{partition}:w{result.window}:{window.reference_tag}",
            "kind": kind,
            "feature": name,
            "model_tag": window.reference_tag,
            "arm": None,
            "score": psi,
            "threshold": window.threshold,
            "source_partition": partition,
            "raised_ts_ms": _now_ms(),
            "message": (
                f"{subject} drifted from the training data of {window.reference_tag}: "
                f"PSI {psi:.3f} > {window.threshold:g} in {window.alert_windows} windows "
                f"of {window.size} rows in a row (partition {partition}). Check the source "
                "of the listings, or retrain on recent data."
            ),
        }

    def _degraded_alert(self, found: Degraded, now: int) -> dict[str, Any]:
        mae = f"£{found.window_mae:,.0f}" if found.window_mae is not None else "n/a"
        return {
            "alert_id": (
                f"model_degraded:{found.model_tag}:{found.arm}:p{found.partition}:n{found.outcomes}"
            ),
            "kind": "model_degraded",
            "feature": None,
            "model_tag": found.model_tag,
            "arm": found.arm,
            "score": float(found.outcomes),
            "threshold": self.settings.degraded_threshold,
            "source_partition": found.partition,
            "raised_ts_ms": now,
            "message": (
                f"model {found.model_tag} ({found.arm}) degraded: its errors shifted "
                f"(Page-Hinkley on the log error) after {found.outcomes} outcomes in partition "
                f"{found.partition}; windowed MAE {mae}. If the features did not drift, "
                "the world did: retrain on recent labels."
            ),
        }

    # -- output --

    def _records(
        self,
        found: list[tuple[int, Outcome]],
        alerts: list[tuple[int, dict[str, Any]]],
    ) -> list[OutRecord]:
        s = self.settings
        records: list[OutRecord] = []
        key_ser, value_ser = self._outcome_ser
        key_ctx = SerializationContext(s.outcomes_topic, MessageField.KEY)
        value_ctx = SerializationContext(s.outcomes_topic, MessageField.VALUE)
        for partition, outcome in found:
            value = outcome.record()
            key = {k: value[k] for k in OUTCOME_KEY_FIELDS}
            records.append(
                OutRecord(
                    s.outcomes_topic,
                    key_ser(key, key_ctx),
                    value_ser(value, value_ctx),
                    partition=partition,
                )
            )
        alert_key, alert_value = self._alert_ser
        alert_key_ctx = SerializationContext(s.alerts_topic, MessageField.KEY)
        alert_value_ctx = SerializationContext(s.alerts_topic, MessageField.VALUE)
        for partition, alert in alerts:
            records.append(
                OutRecord(
                    s.alerts_topic,
                    alert_key({"alert_id": alert["alert_id"]}, alert_key_ctx),
                    alert_value(alert, alert_value_ctx),
                    partition=partition,
                )
            )
        for state in self.partitions.values():
            for listing_id in sorted(state.dirty):
                value = json.dumps(state.listings[listing_id].to_json()).encode()
                records.append(self._state_record(state.partition, listing_id, value))
            for listing_id in sorted(state.deleted):
                records.append(self._state_record(state.partition, listing_id, None))
            if state.changed:
                records.append(
                    OutRecord(
                        s.evaluator_state_topic,
                        PARTITION_KEY,
                        json.dumps(state.record()).encode(),
                        partition=state.partition,
                    )
                )
        return records

    def _state_record(self, partition: int, listing_id: int, value: bytes | None) -> OutRecord:
        return OutRecord(
            self.settings.evaluator_state_topic,
            f"{LISTING_PREFIX}{listing_id}".encode(),
            value,
            partition=partition,
        )

    def coverage(self) -> dict[str, Any]:
        return coverage_of((p.predicted, p.labelled) for p in self.partitions.values())

    def snapshot(self) -> dict[str, Any]:
        """What this process measures, as ``streaming-ml monitor --json`` shows it."""
        return {
            "pairs": self.scoreboard.snapshot(_now_ms(), self.coverage()),
            "drift": {
                str(n): {"features": p.features.last, "prediction": p.prediction.last}
                for n, p in sorted(self.partitions.items())
            },
        }

    def _export(self) -> None:
        self.metrics.export(self.snapshot())

    def _close(self) -> None:
        if self._output is not None:
            try:
                self._output.close()
            except Exception as error:
                logger.debug("producer close failed", extra={"error": str(error)})
        if self._consumer is not None:
            self._consumer.close()
        self.metrics.stop()
        logger.info("evaluator stopped", extra={"events": self.stats.events})


def run_evaluator(
    settings: Settings,
    *,
    group_id: str | None = None,
    timeout: float | None = None,
    install_signal_handlers: bool = True,
) -> EvaluatorStats:
    """Entry point of ``streaming-ml evaluator``: SIGTERM/SIGINT stop it gracefully."""
    evaluator = Evaluator(settings, group_id=group_id)
    if install_signal_handlers:
        stop_on_signals(evaluator.stop, "finishing the batch in hand")
    return evaluator.run(timeout=timeout)
