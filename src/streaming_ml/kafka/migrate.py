"""Repartitioning a topic without losing its records: the Kafka half of ``topics migrate``.

A topic's partition count cannot be lowered, and raising it moves keys to other
partitions under records that are already there. So a topic with the wrong count is
copied out to a temporary topic (same partitions, same configs, records in order with
their keys and headers), deleted, created again with the wanted count and the configs
the temporary topic carries, filled back through the key partitioner, and only then is
the temporary topic deleted. Which step a topic is at follows from what exists
(``next_step``), so a run that stopped halfway is finished by the next one.
"""

from __future__ import annotations

import enum
import logging
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    ConsumerGroupTopicPartitions,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, ConfigResource, ConfigSource, NewTopic

from streaming_ml.config import Settings
from streaming_ml.errors import BridgeError
from streaming_ml.kafka import clients
from streaming_ml.kafka.replay import read_until_end
from streaming_ml.system.waits import wait_until

logger = logging.getLogger(__name__)

TEMPORARY_SUFFIX = ".migrating"
ADMIN_TIMEOUT_S = 30.0

Progress = Callable[[str], None]


def temporary_topic(topic: str) -> str:
    return f"{topic}{TEMPORARY_SUFFIX}"


class Step(enum.StrEnum):
    """What a topic needs next."""

    NOTHING = "nothing"
    COPY_OUT = "copy out"  # the topic holds every record: copy it to the temporary one
    COPY_BACK = "copy back"  # the temporary topic holds every record: refill the topic


def next_step(count: int | None, has_temporary: bool, wanted: int) -> Step:
    """The step a topic with ``count`` partitions (None: it does not exist) is at.

    The temporary topic is complete once the topic is gone or has the wanted count: the
    topic is only deleted after the copy out finished. While the topic still has its old
    count, a temporary topic may be a partial copy, so the copy out starts over."""
    if count is not None and count != wanted:
        return Step.COPY_OUT
    if has_temporary:
        return Step.COPY_BACK
    return Step.NOTHING


@dataclass(frozen=True)
class TopicPlan:
    topic: str
    partitions: int | None  # as found; None: only its temporary copy exists
    step: Step
    keep_records: bool  # False: derived state, recreated empty


def plan(
    counts: Mapping[str, int],
    topics: Iterable[str],
    wanted: int,
    recreate_empty: Iterable[str] = (),
) -> list[TopicPlan]:
    """The topics among ``topics`` that need a step, from every topic's partition count
    (``counts``, temporary topics included)."""
    empty = set(recreate_empty)
    plans = []
    for topic in topics:
        found = counts.get(topic)
        step = next_step(found, temporary_topic(topic) in counts, wanted)
        if step is not Step.NOTHING:
            plans.append(TopicPlan(topic, found, step, keep_records=topic not in empty))
    return plans


def partition_counts(admin: AdminClient) -> dict[str, int]:
    """Every topic's partition count."""
    metadata = admin.list_topics(timeout=ADMIN_TIMEOUT_S).topics
    return {name: len(topic.partitions) for name, topic in metadata.items() if topic.error is None}


def topic_configs(admin: AdminClient, topic: str) -> dict[str, str]:
    """The configs set on ``topic`` itself (not the broker's defaults): compaction,
    retention, timestamp type."""
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    entries = admin.describe_configs([resource])[resource].result(timeout=ADMIN_TIMEOUT_S)
    return {
        name: entry.value
        for name, entry in entries.items()
        if _set_on_topic(entry.source) and entry.value is not None
    }


def _set_on_topic(source: object) -> bool:
    # The C extension hands the source over as the enum's number, not as the enum.
    return getattr(source, "value", source) == ConfigSource.DYNAMIC_TOPIC_CONFIG.value


def create_topic(
    admin: AdminClient, topic: str, partitions: int, configs: Mapping[str, str]
) -> None:
    """Create ``topic``; a topic just deleted can take a moment to be gone for good, so
    "already exists" or "marked for deletion" is retried until ``ADMIN_TIMEOUT_S``."""

    def created() -> bool:
        future = admin.create_topics([NewTopic(topic, partitions, config=dict(configs))])[topic]
        try:
            future.result(timeout=ADMIN_TIMEOUT_S)
        except KafkaException as error:
            if error.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise BridgeError(f"cannot create topic {topic}: {error}") from error
            return partition_counts(admin).get(topic) == partitions
        return True

    wait_until(created, timeout=ADMIN_TIMEOUT_S, interval=0.5, what=f"topic {topic} created")
    wait_until(
        lambda: partition_counts(admin).get(topic) == partitions,
        timeout=ADMIN_TIMEOUT_S, interval=0.2, what=f"topic {topic} in the metadata",
    )  # fmt: skip
    logger.info("topic created", extra={"topic": topic, "partitions": partitions})


def delete_topic(admin: AdminClient, topic: str) -> None:
    """Delete ``topic`` (nothing to do when it does not exist) and wait until it is gone."""
    future = admin.delete_topics([topic], operation_timeout=ADMIN_TIMEOUT_S)[topic]
    try:
        future.result(timeout=ADMIN_TIMEOUT_S)
    except KafkaException as error:
        if error.args[0].code() != KafkaError.UNKNOWN_TOPIC_OR_PART:
            raise BridgeError(f"cannot delete topic {topic}: {error}") from error
    wait_until(
        lambda: topic not in partition_counts(admin),
        timeout=ADMIN_TIMEOUT_S, interval=0.2, what=f"topic {topic} deleted",
    )  # fmt: skip
    logger.info("topic deleted", extra={"topic": topic})


def copy_records(
    settings: Settings,
    source: str,
    target: str,
    *,
    same_partition: bool,
    timeout_s: float,
    on_progress: Callable[[int], None] | None = None,
) -> int:
    """Copy every committed record of ``source`` to ``target``, in order, with its key,
    value (tombstones too) and headers; returns how many.

    ``same_partition``: each record goes to its partition number (a copy of a topic
    with as many partitions); otherwise the key partitioner places it (murmur2, the
    partitioner of Kafka's Java clients, so a key lands where Kafka Connect puts it)."""
    count = partition_counts(clients.admin(settings)).get(source)
    if count is None:
        raise BridgeError(f"no topic {source} to copy")
    reader = clients.consumer(
        settings,
        f"sml-migrate-{uuid.uuid4().hex[:12]}",
        {"enable.partition.eof": True, "isolation.level": "read_committed"},
    )
    # Idempotence keeps each partition's order and writes a retried record once.
    writer = clients.producer(
        settings, {"enable.idempotence": True, "partitioner": "murmur2_random", "linger.ms": 20}
    )
    failures: list[str] = []

    def delivered(error: KafkaError | None, _msg: Message) -> None:
        if error is not None:
            failures.append(str(error))

    def copy(msg: Message) -> None:
        extra: dict[str, Any] = {"partition": msg.partition()} if same_partition else {}
        while True:
            try:
                writer.produce(
                    target, value=msg.value(), key=msg.key(), headers=msg.headers(),
                    on_delivery=delivered, **extra,
                )  # fmt: skip
                break
            except BufferError:  # the local queue is full: let deliveries drain it
                writer.poll(0.5)
        writer.poll(0)

    try:
        copied, complete = read_until_end(
            reader, source, dict.fromkeys(range(count), OFFSET_BEGINNING), copy, timeout_s,
            on_progress,
        )  # fmt: skip
    finally:
        reader.close()
    left = writer.flush(timeout_s)
    if not complete or left or failures:
        raise BridgeError(
            f"copying {source} to {target} did not finish ({copied} records read, "
            f"{left} undelivered, errors: {failures[:3]}); run `streaming-ml topics migrate` "
            "again: it starts this copy over"
        )
    logger.info("records copied", extra={"source": source, "target": target, "records": copied})
    return copied


def end_offsets(settings: Settings, topic: str) -> dict[int, int]:
    """Each partition's high watermark."""
    count = partition_counts(clients.admin(settings)).get(topic)
    if count is None:
        return {}
    probe = clients.consumer(settings, f"sml-migrate-{uuid.uuid4().hex[:12]}")
    try:
        return {
            p: probe.get_watermark_offsets(TopicPartition(topic, p), timeout=ADMIN_TIMEOUT_S)[1]
            for p in range(count)
        }
    finally:
        probe.close()


def group_lag(settings: Settings, group: str, topic: str) -> int:
    """Records of ``topic`` that ``group`` has not committed (a partition without a
    committed offset counts from its start)."""
    ends = end_offsets(settings, topic)
    if not ends:
        return 0
    probe = clients.consumer(settings, group)
    try:
        committed = probe.committed(
            [TopicPartition(topic, p) for p in ends], timeout=ADMIN_TIMEOUT_S
        )
        lows = {
            p: probe.get_watermark_offsets(TopicPartition(topic, p), timeout=ADMIN_TIMEOUT_S)[0]
            for p in ends
        }
    finally:
        probe.close()
    at = {tp.partition: tp.offset if tp.offset >= 0 else lows[tp.partition] for tp in committed}
    return sum(max(0, end - at[p]) for p, end in ends.items())


def group_members(admin: AdminClient, group: str) -> int:
    """Members of ``group`` now (0 for a group that does not exist)."""
    description = admin.describe_consumer_groups([group])[group].result(timeout=ADMIN_TIMEOUT_S)
    return len(description.members)


def commit_ends(settings: Settings, admin: AdminClient, group: str, topic: str) -> dict[int, int]:
    """Commit ``topic``'s ends for ``group``: everything before them was handled."""
    ends = end_offsets(settings, topic)
    if not ends:
        return ends
    partitions = [TopicPartition(topic, p, end) for p, end in sorted(ends.items())]
    request = ConsumerGroupTopicPartitions(group, partitions)
    admin.alter_consumer_group_offsets([request])[group].result(timeout=ADMIN_TIMEOUT_S)
    logger.info("group moved to the ends", extra={"group": group, "topic": topic, "ends": ends})
    return ends


def forget_group(admin: AdminClient, group: str) -> None:
    """Delete ``group`` and its committed offsets (nothing to do when there is none), so
    its next consumer starts from the beginning. Retried while its last members leave."""

    def deleted() -> bool:
        future = admin.delete_consumer_groups([group], request_timeout=ADMIN_TIMEOUT_S)[group]
        try:
            future.result(timeout=ADMIN_TIMEOUT_S)
        except KafkaException as error:
            code = error.args[0].code()
            if code == KafkaError.GROUP_ID_NOT_FOUND:
                return True
            if code == KafkaError.NON_EMPTY_GROUP:
                return False
            raise BridgeError(f"cannot delete consumer group {group}: {error}") from error
        return True

    wait_until(deleted, timeout=60.0, interval=1.0, what=f"consumer group {group} deleted")


def migrate_topic(
    settings: Settings,
    item: TopicPlan,
    *,
    readers: Mapping[str, Iterable[str]],
    forget: Iterable[str],
    timeout_s: float,
    progress: Progress,
) -> int:
    """Take ``item.topic`` through its remaining steps to ``settings.partitions``
    partitions; returns the records it holds afterwards.

    Before the temporary topic goes, each group of ``readers`` (group -> topics it
    consumes) gets the new ends committed, since it had handled every record before
    the migration, and each group of ``forget`` is deleted, so it reads the topic again
    from its start (a sink, whose writes are upserts)."""
    admin = clients.admin(settings)
    topic, temporary = item.topic, temporary_topic(item.topic)
    if item.step is Step.COPY_OUT:
        assert item.partitions is not None  # COPY_OUT is only planned for an existing topic
        delete_topic(admin, temporary)  # a partial copy of an interrupted run
        create_topic(admin, temporary, item.partitions, topic_configs(admin, topic))
        if item.keep_records:
            progress(f"{topic}: copying its records to {temporary}")
            copy_records(
                settings, topic, temporary, same_partition=True, timeout_s=timeout_s,
                on_progress=lambda n: progress(f"{topic}: {n} records copied out"),
            )  # fmt: skip
    # From here on the temporary topic holds everything and carries the topic's configs.
    delete_topic(admin, topic)
    create_topic(admin, topic, settings.partitions, topic_configs(admin, temporary))
    progress(f"{topic}: copying the records back into {settings.partitions} partitions")
    copied = copy_records(
        settings, temporary, topic, same_partition=False, timeout_s=timeout_s,
        on_progress=lambda n: progress(f"{topic}: {n} records copied back"),
    )  # fmt: skip
    for group, topics in readers.items():
        if topic in topics:
            commit_ends(settings, admin, group, topic)
    for group in forget:
        forget_group(admin, group)
    delete_topic(admin, temporary)
    progress(f"{topic}: {copied} records in {settings.partitions} partitions")
    return copied
