"""``streaming-ml connectors apply | status | watch``: the pipeline's connectors."""

from __future__ import annotations

import logging
import signal
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server

from streaming_ml.config import Settings
from streaming_ml.connect import client
from streaming_ml.connect.watchdog import ConnectorWatchdog, restarts_counter
from streaming_ml.errors import ConnectorError
from streaming_ml.kafka.topics import ensure_topics
from streaming_ml.stack import postgres, postgres_dsn

logger = logging.getLogger(__name__)


def apply(settings: Settings, timeout: float = 90.0) -> dict[str, dict[str, Any]]:
    """Create the topics, apply the five connectors (the source and four sinks) and wait until
    they run."""

    ensure_topics(settings)
    return client.ensure_connectors(settings, timeout=timeout)


def status(settings: Settings) -> dict[str, dict[str, Any]]:
    """Each connector's state and its tasks' states (``MISSING`` when not registered)."""
    return {
        name: summarise(client.connector_status(settings.connect_url, name))
        for name in settings.connector_names
    }


def summarise(answer: dict[str, Any] | None) -> dict[str, Any]:
    """A ``/status`` answer as the state, the tasks' states and the failed parts' traces
    (``MISSING`` for a connector that is not registered: None)."""
    if answer is None:
        return {"state": "MISSING", "tasks": []}
    return {
        "state": answer["connector"]["state"],
        "tasks": [t["state"] for t in answer.get("tasks", [])],
        "failed": [
            {"part": part, "trace": client.trace_summary(info.get("trace"))}
            for part, info in client.failed_parts(answer)
        ],
    }


def watch(settings: Settings, interval_s: float, metrics_port: int) -> None:
    """``streaming-ml connectors watch``: restart FAILED connector parts every
    ``interval_s`` until SIGTERM or Ctrl-C, and serve ``/metrics`` on ``metrics_port``:
    the restarts and the CDC replication slot's health (read from Postgres per scrape,
    and logged each tick when it needs attention).

    The slot is exported here, not by the bridge or the service: one watcher runs per
    stack (a metric per bridge replica would be N copies of one slot, each querying
    Postgres), it is the process that heals the usual cause (a FAILED source connector),
    and it reads the slot as the read-only role (someone else's Postgres: with the
    credentials given) while the bridge keeps holding none.
    """

    registry = CollectorRegistry()
    slot = postgres.SlotHealthMetrics(
        lambda: postgres.slot_health(postgres_dsn(settings, "reader"))
    )
    registry.register(slot)
    watchdog = ConnectorWatchdog(
        settings.connect_url,
        settings.connector_names,
        interval_s,
        restarts_counter(registry),
        also_each_tick=slot.check,
    )
    try:
        server, thread = start_http_server(
            metrics_port, addr=settings.listen_host, registry=registry
        )
    except OSError as error:
        raise ConnectorError(
            f"cannot serve metrics on {settings.host}:{metrics_port} ({error}); is another "
            "watcher running? Set SML_WATCHDOG_METRICS_PORT or --metrics-port"
        ) from error
    logger.info(
        "watching connectors",
        extra={"interval_s": interval_s, "metrics": f"http://{settings.host}:{metrics_port}"},
    )
    signal.signal(signal.SIGTERM, lambda *_: watchdog.stop(wait=False))
    signal.signal(signal.SIGINT, lambda *_: watchdog.stop(wait=False))
    try:
        slot.check()  # a slot already in trouble is reported now, not after the first tick
        watchdog.run()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
