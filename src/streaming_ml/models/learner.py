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
"""

from __future__ import annotations

import logging
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
from streaming_ml.models import lifecycle, loader, registry
from streaming_ml.models.online import OnlinePriceModel, is_online
from streaming_ml.models.store import FEATURES_KEY, get_bento_model, remove_damaged_versions
from streaming_ml.schema import avro
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


def newest_online(settings: Settings) -> OnlinePriceModel:
    """The newest stored version of the online model (imported from the registry when
    this store lacks it) that loads: a snapshot a kill cut short is removed and the one
    before it taken, whose offsets say where to resume, so nothing is learned twice."""
    name = settings.online_model_name
    remove_damaged_versions(name)
    aliases = registry.read_aliases(settings)
    published = [t for t in aliases.published if t.split(":")[0] == name]
    local = [str(m.tag) for m in registry.iter_local_models(name)]
    candidates = []
    # Published versions too, not only local ones: another machine's learner may have gone
    # further. fetch() reads the models topic only for a version this store lacks.
    for tag in dict.fromkeys([*published, *local]):
        try:
            stored = registry.fetch(settings, tag)
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

    def stop(self) -> None:
        self._stop.set()

    def run(self, timeout: float | None = None) -> LearnerStats:
        s = self.settings
        model = newest_online(s)
        self.stats.tag = model.tag
        decode = avro.writer_schema_deserializer(
            avro.registry_client(s.registry_url, s.registry_basic_auth)
        )
        # The group is for lag tooling only: the offsets live in the snapshots.
        consumer = clients.consumer(s, s.learner_group, {"isolation.level": "read_committed"})

        def handle(batch: list[Message]) -> None:
            nonlocal model
            for msg in batch:
                self._learn(model, msg, decode)
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
        loop.assign(
            [
                TopicPartition(topic, p, model.positions.get(str(p), OFFSET_BEGINNING))
                for p in partitions
            ]
        )
        return partitions

    def _report_position(self, consumer: Consumer) -> None:
        """Commit what has been read, for lag tooling only (`kafka-consumer-groups`, the
        bench's probe): a restart resumes from the snapshot's positions, not these."""
        # The consumer's position, which moves past transaction markers too, so a learner
        # that has read everything shows a lag of 0.
        offsets = [tp for tp in consumer.position(consumer.assignment()) if tp.offset >= 0]
        if offsets:
            consumer.commit(offsets=offsets, asynchronous=True)

    def _learn(self, model: OnlinePriceModel, msg: Message, decode: Any) -> None:
        self.stats.outcomes += 1
        # The offset after this outcome: where a successor resumes.
        _, partition, offset = position_of(msg)
        model.positions[str(partition)] = offset + 1
        if msg.value() is None:
            return
        outcome = Outcome.from_record(decode(msg.value(), None))
        if outcome.arm not in SERVED_ARMS or outcome.features is None:
            return
        model.learn(outcome.features, outcome.actual_price)
        self.stats.learned += 1
        self._since_snapshot += 1

    def _snapshot(self, model: OnlinePriceModel) -> OnlinePriceModel:
        """Save, publish, move the aliases; the returned model carries the new tag."""
        started = time.monotonic()
        name = self.settings.online_model_name
        tag = model.save(name, self._carried_metadata(model), source="online learner")
        aliases = registry.read_aliases(self.settings)  # once, for both steps below
        registry.publish(self.settings, tag, aliases)
        moved = advance_aliases(self.settings, name, tag, aliases)
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

    def _carried_metadata(self, model: OnlinePriceModel) -> dict[str, Any]:
        """What a snapshot keeps of the model it came from: the feature spec (the service
        checks inputs) and the training reference (drift)."""
        previous = get_bento_model(model.tag).info.metadata if model.tag else {}
        return {k: previous[k] for k in (FEATURES_KEY, "reference", "data") if k in previous}


def advance_aliases(
    settings: Settings, name: str, tag: str, aliases: registry.Aliases | None = None
) -> list[str]:
    """Point every alias now on a version of ``name`` at ``tag``; the aliases moved.
    ``aliases``: the registry's state if just read (publishing does not change them)."""
    aliases = aliases if aliases is not None else registry.read_aliases(settings)

    def ours(current: str | None) -> bool:
        return current is not None and current != tag and current.split(":")[0] == name

    moved = []
    if ours(aliases.champion):
        registry.append_event(
            settings,
            registry.ModelEvent(
                kind="promoted", tag=tag, forced=True, note="online model snapshot"
            ),
        )
        moved.append("champion")
    experiment = aliases.experiment
    if experiment is not None and (ours(experiment.challenger) or ours(experiment.shadow)):
        challenger = tag if ours(experiment.challenger) else experiment.challenger
        shadow = tag if ours(experiment.shadow) else experiment.shadow
        lifecycle.start_experiment(settings, challenger, experiment.split_percent, shadow)
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
