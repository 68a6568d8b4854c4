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
nothing is lost. The changelog also holds each partition's running metrics (a snapshot
per batch), so a restore reads the compacted changelog, never the outcomes topic.

On assignment the committed offsets are fetched first, the partitions are assigned at
them and paused, and the loop (not the rebalance callback) reads the changelog to its
end, which holds the state those offsets stand for (the transaction that committed them
wrote it), then resumes them. After an aborted transaction the same happens to every
owned partition.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, Message, TopicPartition

from streaming_ml.config import Settings
from streaming_ml.errors import BridgeError
from streaming_ml.evaluation import outcomes as joins
from streaming_ml.evaluation.accuracy import Scoreboard, coverage_of
from streaming_ml.evaluation.drift import DriftWindow
from streaming_ml.evaluation.metrics import EvaluatorMetrics
from streaming_ml.evaluation.publishing import (
    Alert,
    Publisher,
    degraded_alert,
    drift_alert,
)
from streaming_ml.evaluation.state import CHANGELOG_CONFIG, PartitionState, read_states
from streaming_ml.kafka import clients
from streaming_ml.kafka import topics as topics_mod
from streaming_ml.kafka.changes import (
    Change,
    ChangeDecoder,
    RegistryUnavailable,
    registry_unavailable,
)
from streaming_ml.kafka.loop import ConsumeLoop, seek
from streaming_ml.kafka.offsets import (
    Position,
    offsets_to_commit,
    partition_of,
    positions_of,
    rewind_points,
)
from streaming_ml.kafka.output import OutputAborted, OutputFatal, TransactionalOutput
from streaming_ml.models import registry, store
from streaming_ml.models.reference import PREDICTION
from streaming_ml.schema import avro
from streaming_ml.schema.listing import ALL_FEATURES, FEATURES, feature_problems
from streaming_ml.schema.outcome import Outcome
from streaming_ml.system.clock import now_ms
from streaming_ml.system.processes import stop_on_signals

logger = logging.getLogger(__name__)

CLIENT_ID = "streaming-ml-evaluator"
COMMITTED_TIMEOUT_S = 30.0


def owned_positions(positions: list[Position], owned: Collection[int]) -> list[Position]:
    """The positions of a batch whose partition number is still ``owned``: a message of
    a partition revoked (or being restored) while the batch was in flight was not
    handled, so its offset is not committed; its next owner reads it."""
    return [p for p in positions if p[1] in owned]


def committed_positions(
    consumer: Consumer, partitions: list[TopicPartition]
) -> list[TopicPartition]:
    """Where the group left ``partitions``: the committed offsets (stable ones: with
    read_committed the fetch waits for a pending transaction), the beginning if none."""
    committed = consumer.committed(partitions, timeout=COMMITTED_TIMEOUT_S)
    return [
        TopicPartition(tp.topic, tp.partition, tp.offset if tp.offset >= 0 else OFFSET_BEGINNING)
        for tp in committed
    ]


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
        self._loop: ConsumeLoop | None = None
        self._output: TransactionalOutput | None = None
        self._references: dict[str, dict[str, Any] | None] = {}
        self._champion: str | None = None
        self._needs_restore = False
        self._restoring: list[TopicPartition] = []  # assigned, paused until restored
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
        counts = topics_mod.ensure_topics(s, {s.evaluator_state_topic: CHANGELOG_CONFIG})
        wanted = [*self._inputs, s.outcomes_topic, s.alerts_topic, s.evaluator_state_topic]
        sizes = {topic: counts.get(topic) for topic in wanted}
        if len(set(sizes.values())) != 1:
            raise BridgeError(
                f"the evaluator needs co-partitioned topics (one partition count), got {sizes}. "
                "Topics keep the count they were created with: stop the bridges and run "
                "`streaming-ml topics migrate` to repartition them to SML_PARTITIONS."
            )

    def _start(self) -> ConsumeLoop:
        s = self.settings
        self._ensure_topics()
        self._champion = self._registry_champion()
        schemas = avro.registry_client(s.registry_url, s.registry_basic_auth)
        self._changes = ChangeDecoder(schemas)
        self._decode = avro.writer_schema_deserializer(schemas)
        self._publisher = Publisher(s, schemas)
        consumer = clients.group_consumer(
            s, self.group_id, client_id=CLIENT_ID, static=False,
            # Range hands one member the same partition number of every input topic.
            extra={"partition.assignment.strategy": "range"},
        )  # fmt: skip
        self._loop = ConsumeLoop(consumer, self._handle, stopping=self._stop)
        self._output = self._new_output()
        self._loop.subscribe(list(self._inputs), self._on_assign, self._on_revoke)
        if self.serve_metrics:
            self.metrics.serve(s.evaluator_metrics_port, s.listen_host)
        logger.info(
            "evaluator started",
            extra={"group": self.group_id, "inputs": list(self._inputs)},
        )
        return self._loop

    def _registry_champion(self) -> str | None:
        """The registry's champion, so drift is measured from the first row; without a
        registry (a pinned service) it is learnt from the first champion prediction."""
        try:
            return registry.read_aliases(self.settings, timeout_s=10).champion
        except Exception as error:
            logger.info("no champion in the registry yet", extra={"error": str(error)})
            return None

    def _new_output(self) -> TransactionalOutput:
        assert self._loop is not None
        config = clients.producer_config(self.settings, self.group_id, client_id=CLIENT_ID)
        return TransactionalOutput(
            config, self._loop.consumer.consumer_group_metadata, self.settings.transaction_timeout_s
        )

    # -- rebalances and restores --

    def _on_assign(self, assigned: list[TopicPartition]) -> None:
        """Fetch the committed offsets, then hold the partitions at them: the loop reads
        their state (``_restore``) before a record of theirs is handled."""
        assert self._loop is not None
        consumer = self._loop.consumer
        positions = committed_positions(consumer, assigned)
        consumer.assign(positions)
        consumer.pause(positions)
        self._restoring = positions
        if not positions:
            self.assigned.set()  # a member with nothing to read (more members than partitions)
        logger.info(
            "evaluator assigned; restoring",
            extra={"partitions": sorted({tp.partition for tp in assigned})},
        )

    def _on_revoke(self, revoked: list[TopicPartition]) -> None:
        # The next assignment rebuilds what it needs; a revoked partition's state may
        # be changed by its next owner meanwhile, so none of it is kept.
        gone = {tp.partition for tp in revoked}
        for number in gone:
            self.partitions.pop(number, None)
        self.scoreboard.forget_partitions(gone)
        self._restoring = [tp for tp in self._restoring if tp.partition not in gone]

    def _restore(self, numbers: list[int]) -> None:
        """Rebuild the state and running metrics of ``numbers`` from the changelog; the
        caller knows the committed offsets already, so this is the state they stand for."""
        started = time.monotonic()
        fresh = read_states(self.settings, self.group_id, numbers, self.scoreboard)
        for state in fresh.values():
            self._apply_reference(state)
        self.partitions.update(fresh)
        self.stats.restores += 1
        self._export()
        logger.info(
            "evaluator state restored",
            extra={
                "partitions": numbers,
                "listings": sum(len(p.listings) for p in fresh.values()),
                "outcomes": sum(m.n for m in self.scoreboard.pairs.values()),
                "seconds": round(time.monotonic() - started, 2),
            },
        )

    def _restore_assigned(self) -> None:
        """The partitions assigned (and paused) since the last pass: restore, resume."""
        assert self._loop is not None
        positions, self._restoring = self._restoring, []
        self._restore(sorted({tp.partition for tp in positions}))
        self._loop.consumer.resume(positions)
        self.assigned.set()

    # -- the loop --

    def run(self, timeout: float | None = None) -> EvaluatorStats:
        loop = self._start()
        try:
            loop.run(timeout=timeout)
        finally:
            self._close()
        return self.stats

    def _recover(self) -> None:
        """After an aborted batch: forget what it did and start again from the last
        committed offsets and state."""
        assert self._loop is not None
        consumer = self._loop.consumer
        self._needs_restore = False
        # The committed offsets first: the changelog read after them holds their state.
        positions = committed_positions(consumer, consumer.assignment())
        self._restore(sorted({tp.partition for tp in positions}))
        seek(consumer, positions)

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
        """One pass of the loop: after an aborted batch, recover first (what was just
        consumed is read again); otherwise fold the batch and publish it with its offsets."""
        assert self._loop is not None and self._output is not None
        if self._needs_restore:
            self._recover()
            return
        if self._restoring:
            # Nothing of the restoring partitions is here (they are paused); what else
            # the batch holds comes again.
            seek(self._loop.consumer, rewind_points(positions_of(batch)), self._loop.assignment)
            self._restore_assigned()
            return
        if not batch:
            return
        try:
            decoded = self._decode_batch(batch)
        except RegistryUnavailable as error:
            logger.warning("registry unavailable; retrying the batch", extra={"error": str(error)})
            seek(self._loop.consumer, rewind_points(positions_of(batch)))
            self._loop.wait(1.0)
            return
        now = now_ms()
        found, alerts = self._fold(batch, decoded, now)
        for partition, outcome in found:
            self.partitions[partition].changed = True  # its running metrics moved
            degraded = self.scoreboard.add(outcome, partition)
            if degraded is not None:
                threshold = self.settings.degraded_threshold
                alerts.append((partition, degraded_alert(degraded, now, threshold)))
        records = self._publisher.records(found, alerts, self.partitions.values(), self.scoreboard)
        handled = owned_positions(positions_of(batch), self.partitions)
        try:
            self._output.publish(records, offsets_to_commit(handled))
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
            state.published()
        self.stats.batches += 1
        self.stats.outcomes += len(found)
        self.stats.alerts += len(alerts)
        for _partition, alert in alerts:
            logger.warning("ALERT %s", alert["message"], extra={"alert_id": alert["alert_id"]})
        self.metrics.observe_alerts(a for _p, a in alerts)
        self.metrics.observe_outcomes(o for _p, o in found)
        self._export()

    def _fold(
        self, batch: list[Message], decoded: list[Change | dict[str, Any] | str | None], now: int
    ) -> tuple[list[tuple[int, Outcome]], list[tuple[int, Alert]]]:
        """Join the batch into the partitions' state: the outcomes found, the drift alerts."""
        found: list[tuple[int, Outcome]] = []
        alerts: list[tuple[int, Alert]] = []
        for msg, item in zip(batch, decoded, strict=True):
            state = self.partitions.get(partition_of(msg)[1])
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
                assert not isinstance(item, Change)  # a prediction, decoded as a record
                transition = self._on_prediction(state, listing_id, item, now, alerts)
            if transition is not None:
                found.extend((state.partition, o) for o in transition.outcomes)
                state.predicted.update(transition.first_predicted)
                state.labelled.update(transition.first_labelled)
                if transition.first_predicted or transition.first_labelled:
                    state.changed = True
        return found, alerts

    # -- one event --

    def _on_change(
        self,
        state: PartitionState,
        change: Change,
        now: int,
        alerts: list[tuple[int, Alert]],
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
        return joins.on_row(lid, state.listing(lid), change.row, ts, now)

    def _on_prediction(
        self,
        state: PartitionState,
        listing_id: int | None,
        record: Mapping[str, Any] | None,
        now: int,
        alerts: list[tuple[int, Alert]],
    ) -> joins.Transition | None:
        if listing_id is None:
            return None
        if record is None:
            if listing_id in state.listings:
                joins.on_retraction(state.listing(listing_id))
            return None
        if (record.get("arm") or "champion") == "champion":
            self._follow_champion(str(record["model_tag"]))
            self._observe(state, state.prediction, {PREDICTION: record["predicted_price"]}, alerts)
        return joins.on_prediction(listing_id, state.listing(listing_id), record, now)

    # -- drift --

    def _reference(self, tag: str) -> dict[str, Any] | None:
        """The champion's training reference (``metadata["reference"]``), or None for a
        model trained before references were stored (drift is then not measured)."""
        if tag not in self._references:
            reference = None
            try:
                stored = registry.fetch(self.settings, tag)
                found = store.metadata_of(store.get_bento_model(stored)).get("reference")
                reference = found if isinstance(found, dict) else None
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
        alerts: list[tuple[int, Alert]],
    ) -> None:
        if not window.ready:
            return  # no reference yet (no champion seen, or one trained without it)
        state.changed = True
        result = window.observe(values)
        if result is None:
            return
        self.metrics.observe_window(state.partition, result)
        for name in result.alerts:
            alerts.append((state.partition, drift_alert(state.partition, window, result, name)))

    def coverage(self) -> dict[str, Any]:
        return coverage_of((p.predicted, p.labelled) for p in self.partitions.values())

    def snapshot(self) -> dict[str, Any]:
        """What this process measures, as ``streaming-ml monitor --json`` shows it."""
        return {
            "pairs": self.scoreboard.snapshot(now_ms(), self.coverage()),
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
        if self._loop is not None:
            self._loop.consumer.close()
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
