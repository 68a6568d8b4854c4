"""Configurations of the Kafka clients: consumers in a group, transactional producers."""

from __future__ import annotations

import socket
import uuid
from typing import Any

from streaming_ml.config import Settings


def consumer_config(settings: Settings, group_id: str) -> dict[str, Any]:
    config: dict[str, Any] = {
        "bootstrap.servers": settings.kafka_bootstrap,
        "group.id": group_id,
        "client.id": "streaming-ml-bridge",
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        # Offsets are committed inside the output transaction; read_committed also
        # makes the offset fetch after a rebalance wait for a pending transaction.
        "isolation.level": "read_committed",
        "partition.assignment.strategy": "cooperative-sticky",
        # The change topic appears with the first captured row: notice it soon.
        "topic.metadata.refresh.interval.ms": 5000,
        # A crashed bridge's partitions move after 10 s instead of 45 s; heartbeats
        # come from librdkafka's thread, not from poll().
        "session.timeout.ms": 10_000,
    }
    if settings.bridge_instance_id:
        config["group.instance.id"] = settings.bridge_instance_id
    return config


def transactional_id(settings: Settings, group_id: str) -> str:
    """Stable for a static member (a restart fences and aborts its predecessor's open
    transaction at once), unique per process otherwise."""
    if settings.bridge_instance_id:
        return f"{group_id}-{settings.bridge_instance_id}"
    return f"{group_id}-{socket.gethostname()}-{uuid.uuid4().hex[:12]}"


def producer_config(settings: Settings, group_id: str) -> dict[str, Any]:
    timeout_ms = int(settings.transaction_timeout_s * 1000)
    return {
        "bootstrap.servers": settings.kafka_bootstrap,
        "client.id": "streaming-ml-bridge",
        "transactional.id": transactional_id(settings, group_id),
        "linger.ms": 5,
        # An open transaction of a killed bridge blocks read_committed readers of its
        # output partitions until the broker times it out: keep that short.
        "transaction.timeout.ms": timeout_ms,
        "message.timeout.ms": timeout_ms,
    }
