"""``streaming-ml topics migrate``: bring every topic of the pipeline to ``SML_PARTITIONS``
partitions without losing a record, for a stack whose topics were created with another
count (an upgrade from one partition).

The pipeline must be drained and stopped: no bridge or evaluator in their groups, and
no change the bridge group has not priced. The connectors are deleted (the source so
that nothing writes to the change topic, the sinks so that nothing reads a topic being
replaced), each odd topic is copied out and back (``kafka.migrate``), the bridge's and
the evaluator's groups start at the new ends, the sinks' groups are deleted so they read
the topics again (upserts by key: the tables end as they were), and the connectors are
applied again. A run that stopped halfway is finished by the next one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from streaming_ml.config import Settings
from streaming_ml.connect import client
from streaming_ml.errors import BridgeError
from streaming_ml.kafka import clients, migrate
from streaming_ml.kafka.topics import ensure_topics, pipeline_topics

logger = logging.getLogger(__name__)


def _log_progress(line: str) -> None:
    logger.info(line)


def sink_topics(settings: Settings) -> dict[str, str]:
    """Each sink connector's topic."""
    s = settings
    return {
        s.sink_connector: s.predictions_topic,
        s.shadow_sink_connector: s.shadow_topic,
        s.outcomes_sink_connector: s.outcomes_topic,
        s.alerts_sink_connector: s.alerts_topic,
    }


def readers(settings: Settings) -> dict[str, list[str]]:
    """The groups that commit what they consumed, and the topics they consume."""
    s = settings
    return {
        s.consumer_group: [s.listings_topic],
        s.evaluator_group: [s.listings_topic, s.predictions_topic, s.shadow_topic],
    }


def sink_group(connector: str) -> str:
    """Kafka Connect's consumer group of a sink connector."""
    return f"connect-{connector}"


def migration_plan(settings: Settings) -> list[migrate.TopicPlan]:
    """What ``migrate_topics`` would do now. The evaluator's changelog holds state per
    partition number, which another count would make wrong: it is recreated empty and the
    evaluator starts from the new ends."""
    counts = migrate.partition_counts(clients.admin(settings))
    ours = [*pipeline_topics(settings), settings.evaluator_state_topic]
    empty = [settings.evaluator_state_topic]
    return migrate.plan(counts, ours, settings.partitions, recreate_empty=empty)


def _refuse_unless_stopped(settings: Settings) -> None:
    admin = clients.admin(settings)
    busy = {g: n for g in readers(settings) if (n := migrate.group_members(admin, g))}
    if busy:
        raise BridgeError(
            f"consumer groups still have members: {busy}. Stop the bridges and the evaluator "
            "(`streaming-ml demo` included), then run `streaming-ml topics migrate` again."
        )


def _refuse_unless_drained(settings: Settings, todo: list[migrate.TopicPlan]) -> None:
    """The bridge group must have priced every change before the change topic is copied:
    it starts at the new ends afterwards."""
    copied_out = {p.topic for p in todo if p.step is migrate.Step.COPY_OUT}
    if settings.listings_topic not in copied_out:
        return
    lag = migrate.group_lag(settings, settings.consumer_group, settings.listings_topic)
    if lag:
        raise BridgeError(
            f"the bridge group {settings.consumer_group} has {lag} changes not priced yet. "
            "Start a bridge (`streaming-ml bridge`) until its lag is 0, stop it, then run "
            "`streaming-ml topics migrate` again."
        )


def migrate_topics(
    settings: Settings,
    progress: Callable[[str], None] = _log_progress,
    copy_timeout_s: float = 3600.0,
) -> dict[str, Any]:
    """Repartition every odd topic of the pipeline to ``settings.partitions`` partitions;
    returns what was done: each topic's records afterwards, the connectors applied."""
    todo = migration_plan(settings)
    report: dict[str, Any] = {"partitions": settings.partitions, "topics": {}, "connectors": []}
    missing = [
        name
        for name in settings.connector_names
        if client.connector_status(settings.connect_url, name) is None
    ]
    if not todo and not missing:
        progress(f"every topic has {settings.partitions} partitions: nothing to do")
        return report
    _refuse_unless_stopped(settings)
    _refuse_unless_drained(settings, todo)
    for item in todo:
        progress(
            f"{item.topic}: {item.partitions} partitions -> {settings.partitions} ({item.step})"
        )
    for name in settings.connector_names:
        if client.delete_connector(settings.connect_url, name):
            progress(f"connector {name} deleted")
    try:
        # The source may have written a change between the first check and its deletion.
        _refuse_unless_drained(settings, todo)
    except BridgeError:
        client.ensure_connectors(settings)
        raise
    for item in todo:
        report["topics"][item.topic] = migrate.migrate_topic(
            settings,
            item,
            readers=readers(settings),
            forget=[sink_group(n) for n, t in sink_topics(settings).items() if t == item.topic],
            timeout_s=copy_timeout_s,
            progress=progress,
        )
    ensure_topics(settings)
    progress("applying the connectors")
    client.ensure_connectors(settings)
    report["connectors"] = list(settings.connector_names)
    return report
