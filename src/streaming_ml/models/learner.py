"""The learner: an online model that learns from every served outcome as it arrives, and
snapshots itself into the registry so the services serve what it has learnt.

It reads the outcomes topic (the evaluator's output), not the change topic: an outcome
exists only once the listing has been priced, so the model never learns a listing's
label before that listing was priced. It learns from the outcomes of the served arms
(champion or challenger: exactly one per labelled listing), not from shadow outcomes,
which would be the same label again.

One learner reads every partition: one model learns from every label, so there is
nothing to split (several learners would be several models). Its position is part of
each snapshot: every ``SML_ONLINE_SNAPSHOT_LABELS`` labels it saves a new version of the
model in the store with the offset of each outcomes partition it has consumed, publishes
it to the registry and moves whatever alias pointed at the online model's name (champion,
challenger or shadow) to the new version. A restart loads the newest version and resumes
at its offsets, so each outcome is learned exactly once by the model's lineage: the
outcomes learned after the last snapshot by a killed learner are learned again by its
successor, whose model had not learned them.

A record that cannot be learned (a label that is not a price, an undecodable value, any
error while learning it) is skipped, counted and logged with its position: one record
must never stop the learner, or a restart at the same offset would stop it again. The
counts travel with each snapshot (its ``learner`` metadata, shown by `monitor`).

One learner per model: it writes its snapshots through a transactional producer whose
id names the registry and the model, and opens it before it loads the newest version. A second
learner's start fences the first, whose next snapshot is refused, so two learners never
fork one lineage into two (docs/models.md).
"""

from __future__ import annotations

import logging
import math
import pickle
import threading
import time
from dataclasses import dataclass
from typing import Any

import bentoml
from confluent_kafka import OFFSET_BEGINNING, Consumer, Message, TopicPartition

from streaming_ml.config import Settings
from streaming_ml.errors import ModelNotFoundError, RegistryError, UntrustedModelError
from streaming_ml.kafka import clients
from streaming_ml.kafka.loop import ConsumeLoop
from streaming_ml.kafka.offsets import position_of
from streaming_ml.models import loader, registry
from streaming_ml.models.online import OnlinePriceModel, is_online
from streaming_ml.models.registry_state import LEARNER_COUNTERS
from streaming_ml.models.store import FEATURES_KEY, get_bento_model, remove_damaged_versions
from streaming_ml.schema import avro
from streaming_ml.schema.listing import COLUMNS_BY_NAME, TARGET
from streaming_ml.schema.outcome import Outcome
from streaming_ml.system.processes import stop_on_signals

logger = logging.getLogger(__name__)

SERVED_ARMS = frozenset({"champion", "challenger"})


@dataclass
class LearnerStats:
    outcomes: int = 0  # read from the topic, shadow ones included
    learned: int = 0  # by this process
    snapshots: int = 0
    tag: str = ""
    skipped_labels: int = 0  # a label that is not a plausible price
    failed_records: int = 0  # a record that raised while decoded or learned
    retention_gaps: int = 0  # partitions whose next outcome was deleted by retention
    outcomes_lost: int = 0  # outcomes deleted before they were learned

    def counters(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in LEARNER_COUNTERS}


def label_problem(price: float) -> str | None:
    """Why ``price`` cannot be learned as a listing's price, or None. The bounds are the
    listing schema's: a label outside them is a data error, not a price to fit."""
    column = COLUMNS_BY_NAME[TARGET]
    low = column.minimum if column.minimum is not None else 0.0
    high = column.maximum if column.maximum is not None else math.inf
    if not math.isfinite(price):
        return f"price {price} is not a number"
    if price <= 0 or price < low:
        return f"price {price:g} is below the schema's minimum {low:g}"
    if price > high:
        return f"price {price:g} is above the schema's maximum {high:g}"
    return None


def newest_online(settings: Settings) -> OnlinePriceModel:
    """The newest published version of the online model (imported from the registry
    when this store lacks it; the newest local one while none is published) that loads:
    a snapshot a kill cut short is removed and the one before it taken, whose offsets
    say where to resume, so nothing is learned twice."""
    name = settings.online_model_name
    remove_damaged_versions(name)
    aliases = registry.read_aliases(settings)
    published = [t for t in aliases.published if t.split(":")[0] == name]
    # Published ones only once there are any: another machine's learner may have gone
    # further, and a local version that was never published is a fenced learner's
    # snapshot, a fork. fetch() reads the models topic only for a version this store lacks.
    tags = published or [str(m.tag) for m in registry.iter_local_models(name)]
    candidates = []
    for tag in tags:
        try:
            stored = registry.fetch(settings, tag, aliases=aliases)
        except UntrustedModelError as error:
            # Never loaded: whoever wrote it to the topic does not hold the registry's key.
            logger.error("model refused", extra={"tag": tag, "reason": str(error)})
            continue
        bento_model = bentoml.models.get(stored)
        if is_online(bento_model):
            candidates.append(bento_model)
    if not candidates:
        raise ModelNotFoundError(
            f"no online model {name!r} in the store or the registry; create one with "
            "`streaming-ml train --online`."
        )
    candidates.sort(
        key=lambda m: (int(str(m.info.metadata.get("learned", 0))), m.info.creation_time),
        reverse=True,
    )
    for bento_model in candidates:
        try:
            model = loader.from_bento_model(bento_model)
        except (pickle.UnpicklingError, EOFError, OSError, KeyError) as error:
            logger.error(
                "damaged online model removed from the store",
                extra={"tag": str(bento_model.tag), "reason": f"{type(error).__name__}: {error}"},
            )
            bentoml.models.delete(bento_model.tag)
            continue
        if not isinstance(model, OnlinePriceModel):
            raise ModelNotFoundError(f"{bento_model.tag} is not an online model; it cannot learn")
        return model
    raise ModelNotFoundError(
        f"every stored version of the online model {name!r} was damaged and removed; "
        "create a new one with `streaming-ml train --online`."
    )


class Learner:
    """``run()`` learns until ``stop()`` or ``timeout``; snapshots every N labels and on a
    graceful stop."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.stats = LearnerStats()
        self.ready = threading.Event()
        self._stop = threading.Event()
        self._since_snapshot = 0
        self._carried_counters: dict[str, int] = {}
        self._writer: registry.RegistryWriter | None = None

    def stop(self) -> None:
        self._stop.set()

    def run(self, timeout: float | None = None) -> LearnerStats:
        s = self.settings
        # Before the newest version is loaded: from here on an older learner of this
        # model (in this registry) can publish nothing more.
        self._writer = registry.RegistryWriter(
            s, transactional_id=f"sml-learner-{s.model_events_topic}-{s.online_model_name}"
        )
        try:
            return self._learn_until_stopped(timeout)
        finally:
            self._writer.close()

    def _learn_until_stopped(self, timeout: float | None) -> LearnerStats:
        s = self.settings
        model = newest_online(s)
        self.stats.tag = model.tag
        self._carried_counters = dict(self._stored_metadata(model).get("learner") or {})
        decode = avro.writer_schema_deserializer(
            avro.registry_client(s.registry_url, s.registry_basic_auth)
        )
        # The group is for lag tooling only: the offsets live in the snapshots. A position
        # out of the partition's range (retention deleted it) restarts at the oldest
        # outcome left rather than the newest: learn what is still there.
        consumer = clients.consumer(
            s,
            s.learner_group,
            {"isolation.level": "read_committed", "auto.offset.reset": "earliest"},
        )

        def handle(batch: list[Message]) -> None:
            nonlocal model
            for msg in batch:
                self._learn_or_skip(model, msg, decode)
                if self._since_snapshot >= s.online_snapshot_labels:
                    model = self._snapshot(model)
            if batch:
                self._report_position(consumer)

        try:
            loop = ConsumeLoop(consumer, handle, stopping=self._stop)
            partitions = self._assign(loop, model)
            logger.info(
                "learner started",
                extra={"model_tag": model.tag, "learned": model.learned, "partitions": partitions},
            )
            self.ready.set()
            loop.run(timeout=timeout)
            if self._since_snapshot:
                model = self._snapshot(model)
        finally:
            consumer.close()
        return self.stats

    def _assign(self, loop: ConsumeLoop, model: OnlinePriceModel) -> list[int]:
        topic = self.settings.outcomes_topic
        metadata = loop.consumer.list_topics(topic, timeout=30).topics.get(topic)
        if metadata is None or metadata.error is not None:
            raise RegistryError(
                f"no outcomes topic {topic}: start the evaluator first (`streaming-ml "
                "evaluator`, or `streaming-ml demo`)."
            )
        partitions = sorted(metadata.partitions)
        start = []
        for p in partitions:
            position = model.positions.get(str(p), OFFSET_BEGINNING)
            if position >= 0:
                position = self._check_retention(loop.consumer, topic, p, position)
            start.append(TopicPartition(topic, p, position))
        loop.assign(start)
        return partitions

    def _check_retention(
        self, consumer: Consumer, topic: str, partition: int, position: int
    ) -> int:
        """Where to resume ``partition``: ``position``, or the oldest outcome left when
        retention deleted the outcomes from ``position`` on (reported: never learned)."""
        low, _high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=30)
        if position >= low:
            return position
        self.stats.retention_gaps += 1
        self.stats.outcomes_lost += low - position
        logger.error(
            "outcomes deleted by retention before the learner read them",
            extra={"topic": topic, "partition": partition, "position": position, "oldest": low,
                   "lost": low - position},
        )  # fmt: skip
        return low

    def _report_position(self, consumer: Consumer) -> None:
        """Commit what has been read, for lag tooling only (`kafka-consumer-groups`, the
        bench's probe): a restart resumes from the snapshot's positions, not these."""
        # The consumer's position, which moves past transaction markers too, so a learner
        # that has read everything shows a lag of 0.
        offsets = [tp for tp in consumer.position(consumer.assignment()) if tp.offset >= 0]
        if offsets:
            consumer.commit(offsets=offsets, asynchronous=True)

    def _learn_or_skip(self, model: OnlinePriceModel, msg: Message, decode: Any) -> None:
        self.stats.outcomes += 1
        # The offset after this outcome: where a successor resumes, learned or skipped.
        topic, partition, offset = position_of(msg)
        model.positions[str(partition)] = offset + 1
        try:
            self._learn(model, msg, decode)
        except Exception as error:
            self.stats.failed_records += 1
            # Counted towards the next snapshot, so the position past it is kept.
            self._since_snapshot += 1
            logger.exception(
                "outcome skipped: it could not be learned",
                extra={"topic": topic, "partition": partition, "offset": offset,
                       "error": str(error)[:300]},
            )  # fmt: skip

    def _learn(self, model: OnlinePriceModel, msg: Message, decode: Any) -> None:
        if msg.value() is None:
            return
        outcome = Outcome.from_record(decode(msg.value(), None))
        if outcome.arm not in SERVED_ARMS or outcome.features is None:
            return
        problem = label_problem(outcome.actual_price)
        if problem is not None:
            self.stats.skipped_labels += 1
            self._since_snapshot += 1
            _, partition, offset = position_of(msg)
            logger.warning(
                "label skipped",
                extra={"partition": partition, "offset": offset, "reason": problem},
            )
            return
        model.learn(outcome.features, outcome.actual_price)
        self.stats.learned += 1
        self._since_snapshot += 1

    def _snapshot(self, model: OnlinePriceModel) -> OnlinePriceModel:
        """Save, publish, move the aliases; the returned model carries the new tag."""
        started = time.monotonic()
        name = self.settings.online_model_name
        tag = model.save(name, self._carried_metadata(model), source="online learner")
        writer = self._writer
        assert writer is not None, "run() opens the writer"
        aliases = registry.read_aliases(self.settings)  # once, for every step below
        # One transaction: a fenced learner's snapshot leaves no trace in the registry.
        writer.begin()
        try:
            writer.publish([tag], aliases)
            moved = advance_aliases(writer, name, tag, aliases)
            writer.retire_old(aliases, name)
            writer.commit()
        except Exception:
            writer.abort()
            raise
        self.stats.snapshots += 1
        self.stats.tag = tag
        self._since_snapshot = 0
        logger.info(
            "online model snapshot",
            extra={
                "model_tag": tag, "learned": model.learned, "aliases": moved,
                "seconds": round(time.monotonic() - started, 2),
            },
        )  # fmt: skip
        return model

    @staticmethod
    def _stored_metadata(model: OnlinePriceModel) -> dict[str, Any]:
        return dict(get_bento_model(model.tag).info.metadata) if model.tag else {}

    def _carried_metadata(self, model: OnlinePriceModel) -> dict[str, Any]:
        """What a snapshot keeps of the model it came from: the feature spec (the service
        checks inputs), the training reference (drift), and the learner's counters."""
        previous = self._stored_metadata(model)
        carried = {k: previous[k] for k in (FEATURES_KEY, "reference", "data") if k in previous}
        now = self.stats.counters()
        carried["learner"] = {k: int(self._carried_counters.get(k, 0)) + n for k, n in now.items()}
        return carried


def advance_aliases(
    writer: registry.RegistryWriter, name: str, tag: str, aliases: registry.Aliases
) -> list[str]:
    """Point every alias now on a version of ``name`` at ``tag`` (events appended
    through ``writer`` and applied to ``aliases``); the aliases moved."""

    def ours(current: str | None) -> bool:
        return current is not None and current != tag and current.split(":")[0] == name

    moved = []
    if ours(aliases.champion):
        writer.append(
            registry.ModelEvent(
                kind="promoted", tag=tag, forced=True, note="online model snapshot"
            ),
            aliases=aliases,
        )
        moved.append("champion")
    experiment = aliases.experiment
    if experiment is not None and (ours(experiment.challenger) or ours(experiment.shadow)):
        challenger = tag if ours(experiment.challenger) else experiment.challenger
        shadow = tag if ours(experiment.shadow) else experiment.shadow
        # The same experiment with the new version: the checks `experiment start` makes
        # held for the version it replaces, and this one was just published.
        writer.append(
            registry.ModelEvent(
                kind="experiment_started", challenger=challenger,
                split_percent=experiment.split_percent, shadow=shadow,
                note="online model snapshot",
            ),
            aliases=aliases,
        )  # fmt: skip
        moved += [a for a, t in (("challenger", challenger), ("shadow", shadow)) if t == tag]
    return moved


def run_learner(
    settings: Settings, timeout: float | None = None, install_signal_handlers: bool = True
) -> LearnerStats:
    """Entry point of ``streaming-ml learn``: SIGTERM/SIGINT snapshot and stop."""
    learner = Learner(settings)
    if install_signal_handlers:
        stop_on_signals(learner.stop, "snapshotting and stopping")
    return learner.run(timeout=timeout)
