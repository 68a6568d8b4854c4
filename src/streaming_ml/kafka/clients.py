"""The one place Kafka clients are built: consumers, producers and admin clients.

Every client starts from ``common_config``, so a connection property that every client
needs (security.protocol, SASL, TLS) is added there once. Callers pass only what makes
their client different, as librdkafka properties.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Mapping
from typing import Any

from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient

from streaming_ml.config import Settings
from streaming_ml.kafka.properties import read_properties

BRIDGE_CLIENT_ID = "streaming-ml-bridge"


def common_config(settings: Settings) -> dict[str, Any]:
    """What every client shares: where the brokers are and how to connect to them (the
    properties file's settings, then the SASL password from the environment or its file)."""
    config: dict[str, Any] = {}
    if settings.kafka_client_properties_file is not None:
        config.update(read_properties(settings.kafka_client_properties_file))
    password = settings.sasl_password
    if password is not None:
        config["sasl.password"] = password
    # The setting wins over the file; the file over the local stack's address.
    if settings.kafka_bootstrap_servers or "bootstrap.servers" not in config:
        config["bootstrap.servers"] = settings.kafka_bootstrap
    return config


def consumer_config(
    settings: Settings, group_id: str, *, client_id: str = BRIDGE_CLIENT_ID, static: bool = True
) -> dict[str, Any]:
    """A member of a consumer group whose offsets go into an output transaction.

    ``static``: join as a static member when ``SML_BRIDGE_INSTANCE_ID`` is set.
    """
    config: dict[str, Any] = {
        **common_config(settings),
        "group.id": group_id,
        "client.id": client_id,
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
    if static and settings.bridge_instance_id:
        config["group.instance.id"] = settings.bridge_instance_id
    return config


def transactional_id(settings: Settings, group_id: str) -> str:
    """Stable for a static member (a restart fences and aborts its predecessor's open
    transaction at once), unique per process otherwise."""
    if settings.bridge_instance_id:
        return f"{group_id}-{settings.bridge_instance_id}"
    return f"{group_id}-{socket.gethostname()}-{uuid.uuid4().hex[:12]}"


def producer_config(
    settings: Settings, group_id: str, *, client_id: str = BRIDGE_CLIENT_ID
) -> dict[str, Any]:
    """A transactional producer that commits the offsets of ``group_id``'s consumer."""
    timeout_ms = int(settings.transaction_timeout_s * 1000)
    return {
        **common_config(settings),
        "client.id": client_id,
        "transactional.id": transactional_id(settings, group_id),
        "linger.ms": 5,
        # An open transaction of a killed bridge blocks read_committed readers of its
        # output partitions until the broker times it out: keep that short.
        "transaction.timeout.ms": timeout_ms,
        "message.timeout.ms": timeout_ms,
    }


def group_consumer(
    settings: Settings,
    group_id: str,
    *,
    client_id: str = BRIDGE_CLIENT_ID,
    static: bool = True,
    extra: Mapping[str, Any] | None = None,
) -> Consumer:
    """A consumer of ``consumer_config``: subscribes, commits through transactions."""
    return Consumer(
        {**consumer_config(settings, group_id, client_id=client_id, static=static), **(extra or {})}
    )


def consumer(settings: Settings, group_id: str, extra: Mapping[str, Any] | None = None) -> Consumer:
    """A reader that commits only when it says so (auto commit off); ``extra`` adds or
    overrides librdkafka properties (isolation level, partition EOF events...)."""
    return Consumer(
        {
            **common_config(settings),
            "group.id": group_id,
            "enable.auto.commit": False,
            **(extra or {}),
        }
    )


def producer(settings: Settings, extra: Mapping[str, Any] | None = None) -> Producer:
    """A plain (not transactional) producer."""
    return Producer({**common_config(settings), **(extra or {})})


def admin(settings: Settings, extra: Mapping[str, Any] | None = None) -> AdminClient:
    return AdminClient({**common_config(settings), **(extra or {})})
