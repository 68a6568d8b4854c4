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

The events and their fold into aliases are plain data (``registry_state``); this module
moves them, and the models, through Kafka.

The local BentoML store stays the working copy: ``bentoml serve`` with a stored model
works as before, and a published model is imported once per store.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import bentoml
from bentoml.exceptions import NotFound
from confluent_kafka import OFFSET_BEGINNING, KafkaError, KafkaException
from confluent_kafka.admin import NewTopic

from streaming_ml.config import Settings
from streaming_ml.errors import ModelNotFoundError, RegistryError
from streaming_ml.kafka import clients
from streaming_ml.kafka.replay import read_one, read_until_end
from streaming_ml.models import signing
from streaming_ml.models.registry_state import Aliases, ModelEvent, ModelSummary, retired_tags
from streaming_ml.models.store import FEATURES_KEY, export_bytes, get_bento_model, import_bytes

logger = logging.getLogger(__name__)

# A model export is a few MB; the topics get room for larger boosters.
MAX_MODEL_BYTES = 64 * 1024 * 1024


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
        learner=metadata.get("learner"),
    )


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


def read_aliases(settings: Settings, timeout_s: float = 30.0) -> Aliases:
    """The registry's state from its whole log; an unreadable event is skipped and
    counted in ``Aliases.unreadable``."""
    aliases = Aliases()

    def keep(_key: bytes | None, value: bytes | None) -> None:
        aliases.apply_record(value)

    read_to_end(settings, settings.model_events_topic, keep, timeout_s)
    return aliases


def read_events(settings: Settings, timeout_s: float = 30.0) -> list[ModelEvent]:
    return read_aliases(settings, timeout_s).history


class RegistryWriter:
    """Writes to both registry topics through one producer.

    With a ``transactional_id`` the writes between ``begin()`` and ``commit()`` land
    together or not at all, and a newer writer with the same id fences this one: its
    next commit fails (the online learner's single-writer guarantee, docs/models.md).
    """

    def __init__(self, settings: Settings, transactional_id: str | None = None) -> None:
        ensure_registry_topics(settings)
        self.settings = settings
        config: dict[str, Any] = {
            **QUIET,
            "acks": "all",
            "enable.idempotence": True,
            "message.max.bytes": MAX_MODEL_BYTES,
            "compression.type": "zstd",
        }
        if transactional_id is not None:
            config["transactional.id"] = transactional_id
        self._producer = clients.producer(settings, config)
        self._errors: list[KafkaError] = []  # delivery failures not yet raised by flush()
        self.transactional = transactional_id is not None
        if self.transactional:
            self._call("start the registry transactions", self._producer.init_transactions, 30)

    def _call(self, what: str, step: Callable[..., Any], *args: Any) -> Any:
        try:
            return step(*args)
        except KafkaException as error:
            raise self._failure(what, error.args[0]) from error
        except SystemError as error:
            # Once the producer is fenced, confluent-kafka's flush() can fail with a bare
            # SystemError. The fencing is then its cause, or the transaction API says so
            # (the caller aborts after a failure anyway).
            cause = error.__cause__ or error.__context__
            if isinstance(cause, KafkaException):
                raise self._failure(what, cause.args[0]) from error
            if self.transactional:
                try:
                    self._producer.abort_transaction(5)
                except KafkaException as state:
                    raise self._failure(what, state.args[0]) from error
                except SystemError:
                    pass
            raise RegistryError(f"cannot {what}: the Kafka producer failed ({error})") from error

    @staticmethod
    def _failure(what: str, error: KafkaError) -> RegistryError:
        if error.code() in FENCED:
            return RegistryError(
                f"cannot {what}: another writer with the same transactional id took over "
                "(a second learner of this model started); this one stops."
            )
        return RegistryError(f"cannot {what}: {error}")

    def begin(self) -> None:
        self._call("begin a registry transaction", self._producer.begin_transaction)

    def commit(self) -> None:
        self._call("commit to the registry", self._producer.commit_transaction, 30)

    def abort(self) -> None:
        try:
            self._producer.abort_transaction(30)
        except (KafkaException, SystemError) as error:
            logger.warning("registry transaction not aborted", extra={"error": str(error)})

    def _send(
        self,
        topic: str,
        key: bytes,
        value: bytes | None,
        where: list[tuple[int, int]] | None = None,
    ) -> None:
        """Produce one record without waiting for it; ``flush`` waits and raises what
        failed. ``where`` receives its (partition, offset) once acknowledged."""

        def report(error: KafkaError | None, msg: Any) -> None:
            if error is not None:
                self._errors.append(error)
            elif where is not None:
                where.append((msg.partition(), msg.offset()))

        def produce() -> None:
            self._producer.produce(topic, key=key, value=value, on_delivery=report)

        try:
            self._call(f"write to {topic}", produce)
        except BufferError:
            # The local queue is full: let it drain, then there is room.
            self.flush()
            self._call(f"write to {topic}", produce)

    def flush(self) -> None:
        """Wait until every record sent is acknowledged; RegistryError if one was not."""
        waiting = self._call("write to the registry", self._producer.flush, 30)
        errors, self._errors = self._errors, []
        if errors:
            raise self._failure("write to the registry", errors[0])
        if waiting != 0:
            raise RegistryError(
                f"{waiting} registry writes not acknowledged in 30 s; is Kafka up? "
                "Try `streaming-ml stack status`."
            )

    def write(self, topic: str, key: bytes, value: bytes | None) -> tuple[int, int]:
        """Produce one record and wait for it; its (partition, offset)."""
        where: list[tuple[int, int]] = []
        self._send(topic, key, value, where)
        self.flush()
        return where[0]

    def append(self, *events: ModelEvent, aliases: Aliases | None = None) -> None:
        """Append ``events`` to the log, acknowledged together (and apply them to
        ``aliases``, when given)."""
        for event in events:
            self._send(
                self.settings.model_events_topic,
                event.kind.encode(),
                event.model_dump_json().encode(),
            )
        if not events:
            return
        self.flush()
        for event in events:
            if aliases is not None:
                aliases.apply(event)
            logger.info("registry event", extra={"kind": event.kind, "tag": event.tag})

    def publish(self, tags: list[str], aliases: Aliases) -> list[ModelSummary]:
        """Put stored models on the models topic (each once) and record them, with where
        each sits, in the log and in ``aliases``. One wait for all the exports and one
        for all the events, however many models: a writer that publishes many versions
        waits on Kafka twice, not twice per version."""
        key = signing.signing_key(self.settings)
        summaries = [summarise(get_bento_model(tag)) for tag in tags]  # "latest" resolved
        sent: dict[str, tuple[ModelSummary, list[tuple[int, int]]]] = {}
        for summary in summaries:
            if summary.tag in aliases.published or summary.tag in sent:
                continue
            data = signing.sign(key, summary.tag, export_bytes(summary.tag))
            summary.size_bytes = len(data)
            where: list[tuple[int, int]] = []
            self._send(self.settings.models_topic, summary.tag.encode(), data, where)
            sent[summary.tag] = (summary, where)
        self.flush()
        for summary, where in sent.values():
            summary.partition, summary.offset = where[0]
            logger.info("model published", extra={"tag": summary.tag, "bytes": summary.size_bytes})
        self.append(
            *(ModelEvent(kind="published", tag=s.tag, summary=s) for s, _ in sent.values()),
            aliases=aliases,
        )
        return [aliases.published[s.tag] for s in summaries]

    def retire_old(self, aliases: Aliases, name: str) -> list[str]:
        """Tombstone the versions of ``name`` past the newest ``SML_MODEL_KEEP_VERSIONS``
        that no alias names (compaction then drops their exports); the tags retired."""
        retired = retired_tags(aliases, name, self.settings.model_keep_versions)
        for tag in retired:
            self._send(self.settings.models_topic, tag.encode(), None)
        self.append(
            *(ModelEvent(kind="retired", tag=t, note="past the versions kept") for t in retired),
            aliases=aliases,
        )
        return retired

    def close(self) -> None:
        """Send what is left; a failure is only logged (``flush`` and ``commit`` are where
        a caller learns of one), so closing never hides the error that stopped it."""
        try:
            self._producer.flush(30)
        except (KafkaException, SystemError) as error:
            # SystemError: confluent-kafka's flush() of a fenced producer can fail bare.
            logger.warning("registry writer closed with an error", extra={"error": str(error)})


# A producer fenced by a newer one with its transactional id.
FENCED = {KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH}


def append_event(settings: Settings, event: ModelEvent) -> None:
    writer = RegistryWriter(settings)
    try:
        writer.append(event)
    finally:
        writer.close()


# --- Moving models between the store and Kafka ----------------------------------------


def publish(settings: Settings, tag: str, aliases: Aliases | None = None) -> ModelSummary:
    """Put a stored model on the models topic (once), record it in the event log and
    retire the versions of its name past those kept. ``aliases``: the registry's state
    if just read (left as it is: a follower folds these events when it reads them)."""
    if aliases is None:
        aliases = read_aliases(settings)
    else:
        aliases = replace(
            aliases,
            champions=list(aliases.champions),
            published=dict(aliases.published),
            history=list(aliases.history),
            retired=set(aliases.retired),
        )
    writer = RegistryWriter(settings)
    try:
        (summary,) = writer.publish([tag], aliases)
        writer.retire_old(aliases, summary.tag.split(":")[0])
    finally:
        writer.close()
    return summary


def fetch(
    settings: Settings, tag: str, timeout_s: float = 60.0, aliases: Aliases | None = None
) -> str:
    """Make ``tag`` available in the local store, importing it from the models topic if
    it is not there yet; return the stored tag. An export not signed with the registry's
    key as ``tag`` is refused (``UntrustedModelError``) before any of it is extracted.

    The published event says where the export sits, so only that record is read; a
    model published before the log said so (or never published: whatever the topic
    holds under that key is still checked) is looked for through the whole topic."""

    try:
        return str(bentoml.models.get(tag).tag)
    except NotFound:
        pass
    registry_key = signing.signing_key(settings)  # before reading: no key, nothing can be checked
    aliases = aliases if aliases is not None else read_aliases(settings, timeout_s)
    if tag in aliases.retired:
        raise ModelNotFoundError(
            f"model {tag} was retired from the registry (more than SML_MODEL_KEEP_VERSIONS "
            "newer versions, and no alias named it); publish it again to serve it."
        )
    summary = aliases.published.get(tag)
    if summary is not None and summary.partition is not None and summary.offset is not None:
        found = _read_record(settings, tag, summary.partition, summary.offset, timeout_s)
        records_read = 1
    else:
        found, records_read = _scan_for(settings, tag, timeout_s)
    if found is None:
        raise ModelNotFoundError(
            f"model {tag} is neither in the local store nor on the models topic "
            f"{settings.models_topic}; publish it with `streaming-ml model promote` "
            "from the machine that trained it."
        )
    stored = import_bytes(signing.verify(registry_key, tag, found))
    logger.info("model imported from Kafka", extra={"tag": stored, "records_read": records_read})
    return stored


def _read_record(
    settings: Settings, tag: str, partition: int, offset: int, timeout_s: float
) -> bytes | None:
    """The value at ``offset`` of the models topic if it is ``tag``'s export."""
    consumer = clients.consumer(
        settings,
        f"sml-registry-reader-{uuid.uuid4().hex[:8]}",
        {**QUIET, "enable.partition.eof": True, "fetch.message.max.bytes": MAX_MODEL_BYTES},
    )
    try:
        msg = read_one(consumer, settings.models_topic, partition, offset, timeout_s)
    except TimeoutError as error:
        raise RegistryError(
            f"could not read {tag} from {settings.models_topic}: {error}; "
            "is Kafka overloaded? See `streaming-ml stack logs kafka`."
        ) from error
    finally:
        consumer.close()
    if msg is None or msg.key() != tag.encode():
        return None
    value: bytes | None = msg.value()
    return value


def _scan_for(settings: Settings, tag: str, timeout_s: float) -> tuple[bytes | None, int]:
    """The last value of ``tag`` on the models topic (or None) and the records read."""
    found: list[bytes] = []

    def keep(key: bytes | None, value: bytes | None) -> None:
        if key is not None and key.decode() == tag:
            # Compaction keeps the last value per key; before it runs, the last one wins too.
            found[:] = [value] if value is not None else []

    count = read_to_end(settings, settings.models_topic, keep, timeout_s)
    return (found[0] if found else None), count


def iter_local_models(name: str) -> Iterator[Any]:
    yield from sorted(
        (m for m in bentoml.models.list() if m.tag.name == name),
        key=lambda m: m.info.creation_time,
    )
