"""``streaming-ml connectors apply | status | watch``: the pipeline's connectors."""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server

from streaming_ml.config import Settings
from streaming_ml.connect import client
from streaming_ml.connect.watchdog import ConnectorWatchdog, restarts_counter
from streaming_ml.errors import ConnectorError, WaitTimeoutError
from streaming_ml.kafka.topics import ensure_topics
from streaming_ml.stack import postgres, postgres_dsn, schema_registry
from streaming_ml.system.waits import Deadline, wait_until

logger = logging.getLogger(__name__)

# How long Connect may go on reporting a task FAILED after it accepted its restart.
RESTART_VISIBLE_S = 30.0


def apply(settings: Settings, timeout: float = 90.0) -> dict[str, dict[str, Any]]:
    """Create the topics, apply the five connectors (the source and four sinks) and wait until
    they run."""

    ensure_topics(settings)
    # Before the source registers a schema: from its first one on, each is checked.
    schema_registry.ensure_compatibility(settings)
    return client.ensure_connectors(settings, timeout=timeout)


def status(settings: Settings) -> dict[str, dict[str, Any]]:
    """Each connector's state and its tasks' states (``MISSING`` when not registered)."""
    return {
        name: summarise(
            client.connector_status(settings.connect_url, name), topic_of(settings, name)
        )
        for name in settings.connector_names
    }


def topic_of(settings: Settings, name: str) -> str | None:
    """The topic whose schemas connector ``name`` registers (the source's change topic)."""
    return settings.listings_topic if name == settings.source_connector else None


def summarise(answer: dict[str, Any] | None, topic: str | None = None) -> dict[str, Any]:
    """A ``/status`` answer as the state, the tasks' states and the failed parts' traces
    and, for a cause we recognise, a plain ``reason`` (``MISSING`` for a connector that is
    not registered: None)."""
    if answer is None:
        return {"state": "MISSING", "tasks": []}
    failed = []
    for part, info in client.failed_parts(answer):
        entry = {"part": part, "trace": client.trace_summary(info.get("trace"))}
        reason = client.failure_reason(info.get("trace"), topic)
        if reason is not None:
            entry["reason"] = reason
        failed.append(entry)
    return {
        "state": answer["connector"]["state"],
        "tasks": [t["state"] for t in answer.get("tasks", [])],
        "failed": failed,
    }


def failure_lines(summary: dict[str, dict[str, Any]]) -> list[str]:
    """One plain line per FAILED part of ``status()``: its reason when recognised, else
    the trace's first line."""
    return [
        f"{name} {failed['part']} failed: {failed.get('reason') or failed['trace'].splitlines()[0]}"
        for name, info in summary.items()
        for failed in info.get("failed", [])
    ]


def recover_schema(
    settings: Settings, timeout: float = 300.0, progress: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Get the source connector past change events the registry refuses, losing none.

    Logical decoding reads each change with the table's definition of its time, so rows
    written while a column had an incompatible type are read with that type on every
    restart: the task fails on them again and again. This marks the WAL, lifts the
    compatibility rule for the change topic's value subject alone (its own rule NONE),
    restarts the FAILED source task and waits until the replication slot has confirmed
    the mark (every change committed before this call is then in the topic; the bridge
    dead-letters the ones it cannot price), then puts the subject's previous rule back,
    also when the wait fails. Revert the column first: rows written after the revert
    must have the old schema again.
    """
    name = settings.source_connector
    subject = schema_registry.value_subject(settings.listings_topic)
    reader = postgres_dsn(settings, "reader")
    if postgres.slot_health(reader) is None:
        raise ConnectorError(
            f"no replication slot {postgres.SLOT}: the source connector has never run, so "
            "there is nothing to recover. Register it with `streaming-ml connectors apply`."
        )
    if client.connector_status(settings.connect_url, name) is None:
        raise ConnectorError(
            f"connector {name!r} is not registered; register it with "
            "`streaming-ml connectors apply` (it resumes from its offsets), then run this again"
        )
    began = time.monotonic()
    # A mark in the WAL after every change committed so far: reading past it is reading
    # them all (the server's current WAL position would not do: the slot only confirms
    # positions it was sent, so with no later change it never gets there).
    target = postgres.write_marker(reader)
    previous = schema_registry.subject_rule(settings, subject)
    schema_registry.set_subject_rule(settings, subject, "NONE")
    logger.info(
        "compatibility lifted for the change topic's value subject; restarting the source",
        extra={"subject": subject, "until_lsn": target},
    )
    try:
        client.restart_failed(settings.connect_url, name)
        restarted = Deadline.after(RESTART_VISIBLE_S)
        seen_restarted = False

        def read_so_far() -> int:
            nonlocal seen_restarted
            status = client.connector_status(settings.connect_url, name) or {}
            failed = client.failed_parts(status) if status else []
            # Connect reports the old FAILED state for a moment after accepting a
            # restart: a failure counts once the task was seen restarted, or too long.
            seen_restarted = seen_restarted or not failed
            if failed and (seen_restarted or restarted.expired()):
                trace = failed[0][1].get("trace")
                why = client.failure_reason(trace, settings.listings_topic)
                raise ConnectorError(
                    f"connector {name!r} FAILED again while recovering: "
                    f"{why or client.trace_summary(trace)}. "
                    "Fix the cause and run `streaming-ml connectors recover-schema` again."
                )
            health = postgres.slot_health(reader) or {}
            return health.get("confirmed_lsn") or 0

        def show(done: int, deadline: Deadline) -> None:
            if progress is not None:
                behind = max(0, target - done) / 2**20
                progress(
                    f"source catching up: {behind:,.1f} MB of WAL to go "
                    f"({deadline.elapsed():.0f}s of {timeout:.0f}s)"
                )

        try:
            caught_up = wait_until(
                read_so_far, timeout=timeout, interval=1.0, done=lambda lsn: lsn >= target,
                on_wait=show, what=f"source connector past WAL position {target}",
            )  # fmt: skip
        except WaitTimeoutError as error:
            raise ConnectorError(
                f"the source connector has not read past the mark written into the WAL "
                f"after {timeout:.0f}s (slot at {error.last}, target {target}); the subject's "
                "rule is restored. Check `streaming-ml connectors status` and "
                "`streaming-ml stack logs connect`, then run this again (with --timeout)."
            ) from None
    finally:
        schema_registry.set_subject_rule(settings, subject, previous)
        logger.info(
            "compatibility rule restored", extra={"subject": subject, "rule": previous or "global"}
        )
    return {
        "connector": name,
        "subject": subject,
        "rule": previous or f"global ({schema_registry.global_compatibility(settings)})",
        "read_past_lsn": target,
        "slot_confirmed_lsn": caught_up,
        "waited_s": round(time.monotonic() - began, 1),
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
