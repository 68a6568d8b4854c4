"""Topic ends, consumer groups' positions and members, through one Kafka admin client.

Lag here is what Kafka itself says: the last stable offset of each partition (the end a
``read_committed`` reader sees) minus the group's committed offset. It covers every
replica of a group, whichever process runs it, and costs a few small admin requests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from confluent_kafka import ConsumerGroupTopicPartitions, IsolationLevel, TopicPartition
from confluent_kafka.admin import OffsetSpec

from streaming_ml.config import Settings
from streaming_ml.errors import StackError
from streaming_ml.kafka import clients

# Short: a round of the dashboard must not hang on a broker that is away.
REQUEST_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class Member:
    """One consumer of a group: a bridge replica, say."""

    name: str  # static instance id when it has one, else client id
    host: str
    partitions: list[int]

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "host": self.host, "partitions": self.partitions}


class GroupView:
    def __init__(self, settings: Settings) -> None:
        self.bootstrap = settings.kafka_bootstrap
        self._admin = clients.admin(settings, {"log_level": 3})

    def partitions(self, topic: str) -> list[int] | None:
        """Partition numbers of ``topic``; None when it does not exist (yet)."""
        try:
            meta = self._admin.list_topics(topic, timeout=REQUEST_TIMEOUT_S).topics.get(topic)
        except Exception as error:  # KafkaException: broker unreachable
            raise self._unreachable(error) from error
        if meta is None or meta.error is not None:
            return None
        return sorted(meta.partitions)

    def end_offsets(self, topic: str) -> dict[int, int] | None:
        """The end a read_committed reader sees, per partition; None without the topic."""
        partitions = self.partitions(topic)
        if partitions is None:
            return None
        request = {TopicPartition(topic, p): OffsetSpec.latest() for p in partitions}
        futures = self._admin.list_offsets(
            request,
            isolation_level=IsolationLevel.READ_COMMITTED,
            request_timeout=REQUEST_TIMEOUT_S,
        )
        try:
            return {tp.partition: f.result().offset for tp, f in futures.items()}
        except Exception as error:
            raise self._unreachable(error) from error

    def committed(self, group: str, topic: str, partitions: list[int]) -> dict[int, int]:
        """The group's committed offset per partition (partitions it never committed are
        left out)."""
        request = [
            ConsumerGroupTopicPartitions(group, [TopicPartition(topic, p) for p in partitions])
        ]
        future = self._admin.list_consumer_group_offsets(
            request, request_timeout=REQUEST_TIMEOUT_S
        )[group]
        try:
            answer = future.result()
        except Exception as error:
            raise self._unreachable(error) from error
        return {tp.partition: tp.offset for tp in answer.topic_partitions if tp.offset >= 0}

    def lag(
        self, group: str, topic: str, ends: dict[int, int] | None = None
    ) -> tuple[dict[int, int], dict[int, int]] | None:
        """(lag per partition, committed per partition) of ``group`` on ``topic``, against
        ``ends`` when the caller has them; a partition the group never committed counts
        from the start of the topic. None without the topic."""
        ends = ends if ends is not None else self.end_offsets(topic)
        if ends is None:
            return None
        committed = self.committed(group, topic, sorted(ends))
        lag = {p: max(0, end - committed.get(p, 0)) for p, end in ends.items()}
        return lag, committed

    def members(self, group: str) -> list[Member]:
        future = self._admin.describe_consumer_groups([group], request_timeout=REQUEST_TIMEOUT_S)
        try:
            description = future[group].result()
        except Exception as error:
            raise self._unreachable(error) from error
        return sorted(
            (
                Member(
                    name=m.group_instance_id or m.client_id,
                    host=m.host,
                    partitions=sorted(tp.partition for tp in m.assignment.topic_partitions),
                )
                for m in description.members
            ),
            key=lambda m: (m.partitions[:1], m.name),
        )

    def _unreachable(self, error: Exception) -> StackError:
        return StackError(
            f"Kafka at {self.bootstrap} does not answer ({error}); is the stack up? "
            "`streaming-ml stack status`"
        )
