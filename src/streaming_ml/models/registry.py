"""The model registry: which stored model is the champion, which experiment runs, and
the history of both, kept in Kafka where every service replica reads it.

Two topics, nothing else shared:

- the model events topic (one partition, kept forever) is an append-only log of JSON
  events: a model published, claimed as first champion, promoted, rolled back, an
  experiment started or stopped. The aliases are a fold over that log, so every reader
  agrees on them, and the log itself is the history ``model list`` and ``describe`` show;
- the models topic (compacted, keyed by tag) holds each published model exported from
  the BentoML store (``bentoml.models.export_model``), so a replica started with an
  empty store imports what it has to serve (the model-topic pattern).

The local BentoML store stays the working copy: ``bentoml serve`` with a stored model
works as before, and a published model is imported once per store.
"""

from __future__ import annotations

import getpass
import logging
import socket
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import bentoml
from bentoml.exceptions import NotFound
from confluent_kafka import OFFSET_BEGINNING, KafkaError, KafkaException
from confluent_kafka.admin import NewTopic
from pydantic import BaseModel, Field

from streaming_ml.config import Settings
from streaming_ml.errors import ModelNotFoundError, RegistryError
from streaming_ml.kafka import clients
from streaming_ml.kafka.replay import read_until_end
from streaming_ml.models import signing
from streaming_ml.models.features import INPUT_NAMES
from streaming_ml.models.store import FEATURES_KEY, get_bento_model

logger = logging.getLogger(__name__)

EventKind = Literal[
    "published", "claimed", "promoted", "rolled_back", "experiment_started", "experiment_stopped"
]
# A model export is a few MB; the topics get room for larger boosters.
MAX_MODEL_BYTES = 64 * 1024 * 1024


class ModelSummary(BaseModel):
    """What the registry keeps about a published model (from its BentoML metadata)."""

    tag: str
    created_at: str = ""
    source: str = ""
    inputs: list[str] = Field(default_factory=list)
    cv: dict[str, Any] | None = None
    validation: dict[str, Any] | None = None
    size_bytes: int = 0


class ModelEvent(BaseModel):
    kind: EventKind
    tag: str | None = None
    challenger: str | None = None
    split_percent: float = 0.0
    shadow: str | None = None
    forced: bool = False
    summary: ModelSummary | None = None
    at: float = Field(default_factory=time.time)
    by: str = Field(default_factory=lambda: f"{getpass.getuser()}@{socket.gethostname()}")
    note: str = ""


@dataclass(frozen=True)
class Experiment:
    """A challenger takes ``split_percent`` of the listings; a shadow prices all of them."""

    challenger: str | None = None
    split_percent: float = 0.0
    shadow: str | None = None

    def tags(self) -> list[str]:
        return [t for t in (self.challenger, self.shadow) if t]


@dataclass
class Aliases:
    """The registry's state: a fold over the event log, in log order."""

    champions: list[str] = field(default_factory=list)
    experiment: Experiment | None = None
    published: dict[str, ModelSummary] = field(default_factory=dict)
    history: list[ModelEvent] = field(default_factory=list)

    @property
    def champion(self) -> str | None:
        return self.champions[-1] if self.champions else None

    @property
    def previous_champion(self) -> str | None:
        return self.champions[-2] if len(self.champions) > 1 else None

    def apply(self, event: ModelEvent) -> None:
        self.history.append(event)
        if event.kind == "published" and event.summary is not None:
            self.published[event.summary.tag] = event.summary
        elif event.kind == "claimed" and event.tag and not self.champions:
            # Several replicas may claim at once; the first claim in the log wins.
            self.champions.append(event.tag)
        elif event.kind == "promoted" and event.tag:
            self.champions.append(event.tag)
        elif event.kind == "rolled_back" and len(self.champions) > 1:
            self.champions.pop()
        elif event.kind == "experiment_started":
            self.experiment = Experiment(event.challenger, event.split_percent, event.shadow)
        elif event.kind == "experiment_stopped":
            self.experiment = None

    def wanted_tags(self) -> list[str]:
        """Every model the service must hold: champion first, then experiment models."""
        tags = [self.champion] if self.champion else []
        if self.experiment is not None:
            tags += [t for t in self.experiment.tags() if t not in tags]
        return tags

    def aliases_of(self, tag: str) -> list[str]:
        names = []
        if tag == self.champion:
            names.append("champion")
        if tag == self.previous_champion:
            names.append("previous")
        if self.experiment is not None:
            if tag == self.experiment.challenger:
                names.append(f"challenger ({self.experiment.split_percent:g}%)")
            if tag == self.experiment.shadow:
                names.append("shadow")
        return names


def fold(events: list[ModelEvent]) -> Aliases:
    aliases = Aliases()
    for event in events:
        aliases.apply(event)
    return aliases


# --- Reading a BentoML model's registry facts ----------------------------------------


def summarise(bento_model: Any) -> ModelSummary:
    """The registry's summary of a stored model (no filesystem paths)."""
    info = bento_model.info
    metadata = dict(info.metadata)
    return ModelSummary(
        tag=str(bento_model.tag),
        created_at=info.creation_time.isoformat(),
        source=str(info.labels.get("source", "")),
        inputs=list((metadata.get(FEATURES_KEY) or {}).get("inputs", [])),
        cv=metadata.get("cv"),
        validation=metadata.get("validation"),
    )


def gate(candidate: ModelSummary, champion: ModelSummary | None) -> list[str]:
    """Why ``candidate`` may not replace ``champion`` (empty: it may).

    Offline metrics are compared only under the same protocol: both cross-validated with
    the same folds and seed on the same data (fingerprint), else the comparison says
    nothing and the promotion needs ``--force``. A schema mismatch is never forceable
    (see ``schema_problem``)."""
    if champion is None or champion.tag == candidate.tag:
        return []
    mine, theirs = candidate.cv, champion.cv
    if not mine or not theirs:
        which = candidate.tag if not mine else champion.tag
        return [
            f"{which} has no stored cross-validation metrics to compare (train with --cv-folds)"
        ]
    same = ("folds", "seed", "data_fingerprint_sha256")
    differing = [k for k in same if mine.get(k) != theirs.get(k)]
    if differing:
        return [
            f"offline metrics not comparable: {', '.join(differing)} differ "
            f"({candidate.tag} vs champion {champion.tag})"
        ]
    if float(mine["rmse"]) > float(theirs["rmse"]):
        return [
            f"CV RMSE {float(mine['rmse']):,.1f} is worse than champion {champion.tag}'s "
            f"{float(theirs['rmse']):,.1f}"
        ]
    return []


def schema_problem(candidate: ModelSummary) -> str | None:
    """Why the service could not use this model's inputs, or None."""
    if candidate.inputs != list(INPUT_NAMES):
        return (
            f"{candidate.tag} takes inputs {candidate.inputs}, the pipeline sends "
            f"{list(INPUT_NAMES)}; retrain it with this version of `streaming-ml train`"
        )
    return None


# --- Kafka -----------------------------------------------------------------------------


# Failures reach the user as RegistryError messages; librdkafka's own lines are noise.
QUIET = {"log_level": 2}


def ensure_registry_topics(settings: Settings, timeout_s: float = 30.0) -> None:
    """Create both registry topics if missing (idempotent)."""
    admin = clients.admin(settings, QUIET)
    size = str(MAX_MODEL_BYTES)
    replicas = settings.kafka_replication_factor
    topics = [
        NewTopic(
            settings.model_events_topic,
            num_partitions=1,
            replication_factor=replicas,
            config={
                "retention.ms": "-1",
                "retention.bytes": "-1",
                **settings.kafka_topic_configs(),
            },
        ),
        NewTopic(
            settings.models_topic,
            num_partitions=1,
            replication_factor=replicas,
            config={
                "cleanup.policy": "compact",
                "max.message.bytes": size,
                "compression.type": "producer",
                **settings.kafka_topic_configs(),
            },
        ),
    ]
    for topic, future in admin.create_topics(topics, request_timeout=timeout_s).items():
        try:
            future.result(timeout=timeout_s)
            logger.info("registry topic created", extra={"topic": topic})
        except KafkaException as error:
            if error.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise RegistryError(
                    f"cannot create the registry topic {topic} on {settings.kafka_bootstrap}: "
                    f"{error}. Is Kafka up? Try `streaming-ml stack status`."
                ) from error


def read_to_end(
    settings: Settings,
    topic: str,
    on_record: Callable[[bytes | None, bytes | None], None],
    timeout_s: float = 30.0,
) -> int:
    """Call ``on_record(key, value)`` for every record of ``topic`` (all partitions), from
    the beginning to its end when called; return the count. An unknown topic is empty."""
    consumer = clients.consumer(
        settings,
        f"sml-registry-reader-{uuid.uuid4().hex[:8]}",
        {**QUIET, "enable.partition.eof": True, "fetch.message.max.bytes": MAX_MODEL_BYTES},
    )
    try:
        try:
            meta = consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
        except Exception as error:
            raise RegistryError(
                f"cannot reach Kafka at {settings.kafka_bootstrap} to read the model "
                f"registry ({error}); start the stack with `streaming-ml stack up`."
            ) from error
        if meta is None or meta.error is not None:
            return 0
        count, complete = read_until_end(
            consumer,
            topic,
            dict.fromkeys(meta.partitions, OFFSET_BEGINNING),
            lambda msg: on_record(msg.key(), msg.value()),
            timeout_s,
        )
    finally:
        consumer.close()
    if not complete:
        raise RegistryError(
            f"read only {count} records of {topic} in {timeout_s:.0f}s; "
            "is Kafka overloaded? See `streaming-ml stack logs kafka`."
        )
    return count


def read_events(settings: Settings, timeout_s: float = 30.0) -> list[ModelEvent]:
    events: list[ModelEvent] = []

    def keep(_key: bytes | None, value: bytes | None) -> None:
        if value is not None:
            events.append(ModelEvent.model_validate_json(value))

    read_to_end(settings, settings.model_events_topic, keep, timeout_s)
    return events


def read_aliases(settings: Settings, timeout_s: float = 30.0) -> Aliases:
    return fold(read_events(settings, timeout_s))


def _produce(settings: Settings, topic: str, key: bytes, value: bytes) -> None:
    producer = clients.producer(
        settings,
        {
            **QUIET,
            "acks": "all",
            "enable.idempotence": True,
            "message.max.bytes": MAX_MODEL_BYTES,
            "compression.type": "zstd",
        },
    )
    errors: list[str] = []

    def delivered(error: Any, _msg: Any) -> None:
        if error is not None:
            errors.append(str(error))

    try:
        producer.produce(topic, key=key, value=value, on_delivery=delivered)
    except KafkaException as error:
        raise RegistryError(f"cannot write to {topic}: {error}") from error
    if producer.flush(30) != 0 or errors:
        raise RegistryError(
            f"write to {topic} not acknowledged ({'; '.join(errors) or 'timed out'}); "
            "is Kafka up? Try `streaming-ml stack status`."
        )


def append_event(settings: Settings, event: ModelEvent) -> None:
    ensure_registry_topics(settings)
    _produce(
        settings, settings.model_events_topic, event.kind.encode(), event.model_dump_json().encode()
    )
    logger.info("registry event", extra={"kind": event.kind, "tag": event.tag})


# --- Moving models between the store and Kafka ----------------------------------------


def export_bytes(tag: str) -> bytes:
    with tempfile.TemporaryDirectory(prefix="sml-export-") as tmp:
        path = Path(tmp) / "model.bentomodel"
        bentoml.models.export_model(tag, str(path))
        return path.read_bytes()


def import_bytes(data: bytes) -> str:
    """Import an exported model into the local store; return its tag."""
    with tempfile.TemporaryDirectory(prefix="sml-import-") as tmp:
        path = Path(tmp) / "model.bentomodel"
        path.write_bytes(data)
        return str(bentoml.models.import_model(str(path)).tag)


def publish(settings: Settings, tag: str, aliases: Aliases | None = None) -> ModelSummary:
    """Put a stored model on the models topic (once) and record it in the event log."""
    bento_model = get_bento_model(tag)
    summary = summarise(bento_model)
    aliases = aliases if aliases is not None else read_aliases(settings)
    if summary.tag in aliases.published:
        return aliases.published[summary.tag]
    data = signing.sign(signing.signing_key(settings), summary.tag, export_bytes(summary.tag))
    summary.size_bytes = len(data)
    ensure_registry_topics(settings)
    _produce(settings, settings.models_topic, summary.tag.encode(), data)
    append_event(settings, ModelEvent(kind="published", tag=summary.tag, summary=summary))
    logger.info("model published", extra={"tag": summary.tag, "bytes": len(data)})
    return summary


def fetch(settings: Settings, tag: str, timeout_s: float = 60.0) -> str:
    """Make ``tag`` available in the local store, importing it from the models topic if
    it is not there yet; return the stored tag. An export not signed with the registry's
    key as ``tag`` is refused (``UntrustedModelError``) before any of it is extracted."""

    try:
        return str(bentoml.models.get(tag).tag)
    except NotFound:
        pass
    registry_key = signing.signing_key(settings)  # before reading: no key, nothing can be checked
    found: list[bytes] = []

    def keep(key: bytes | None, value: bytes | None) -> None:
        if key is not None and key.decode() == tag:
            # Compaction keeps the last value per key; before it runs, the last one wins too.
            found[:] = [value] if value is not None else []

    read_to_end(settings, settings.models_topic, keep, timeout_s)
    if not found:
        raise ModelNotFoundError(
            f"model {tag} is neither in the local store nor on the models topic "
            f"{settings.models_topic}; publish it with `streaming-ml model promote` "
            "from the machine that trained it."
        )
    stored = import_bytes(signing.verify(registry_key, tag, found[0]))
    logger.info("model imported from Kafka", extra={"tag": stored})
    return stored


def iter_local_models(name: str) -> Iterator[Any]:
    yield from sorted(
        (m for m in bentoml.models.list() if m.tag.name == name),
        key=lambda m: m.info.creation_time,
    )
