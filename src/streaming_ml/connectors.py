"""``streaming-ml connectors apply | status | watch``: the pipeline's connectors, run once.

Registering the connectors and restarting FAILED ones is a job for one process, not
for every bridge replica. ``apply`` creates the topics (with ``SML_PARTITIONS``
partitions) and applies both connector configs (idempotent PUT); ``watch`` restarts
FAILED parts until stopped. A bridge started with ``--apply-connectors`` does both,
but it watches only while it owns partition 0 of the change topic: Kafka's group
protocol picks exactly one watcher among the replicas, and hands the job over when
that replica leaves.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Collection, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, start_http_server

from streaming_ml import connect
from streaming_ml.config import Settings
from streaming_ml.exceptions import ConnectorError

logger = logging.getLogger(__name__)


def apply(settings: Settings, timeout: float = 90.0) -> dict[str, dict[str, Any]]:
    """Create the topics, apply both connectors and wait until they run."""
    from streaming_ml.bridge.kafka_setup import ensure_topics

    ensure_topics(settings)
    return connect.ensure_connectors(settings, timeout=timeout)


def status(settings: Settings) -> dict[str, dict[str, Any]]:
    """Each connector's state and its tasks' states (``MISSING`` when not registered)."""
    return {
        name: summarise(connect.connector_status(settings.connect_url, name))
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
            {"part": part, "trace": connect.trace_summary(info.get("trace"))}
            for part, info in connect.failed_parts(answer)
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
    and it runs beside the stack's state dir, so it can read the slot with the stack's
    credentials while the bridge keeps holding none.
    """
    from streaming_ml.stack import postgres
    from streaming_ml.stack.secrets import load_passwords

    registry = CollectorRegistry()
    slot = postgres.SlotHealthMetrics(
        lambda: postgres.slot_health(settings, load_passwords(settings.state_dir))
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
        server, thread = start_http_server(metrics_port, addr=settings.host, registry=registry)
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


def restarts_counter(registry: CollectorRegistry | None = None) -> Counter:
    return Counter(
        "sml_bridge_connector_restarts",
        "Restarts of FAILED connector instances or tasks by the connector watchdog",
        ["connector"],
        registry=registry,
    )


class ConnectorWatchdog:
    """Restart connectors whose instance or tasks FAILED, from a daemon thread.

    A task that hits an error Connect treats as fatal (the Apicurio converter while
    the registry restarts, say) stays FAILED until someone restarts it; errors.retry
    settings do not cover that. Every ``interval_s`` this asks Connect for each
    connector's status and restarts only the failed parts. Connect being unreachable
    is logged and tried again on the next tick: it never stops the bridge.
    """

    def __init__(
        self,
        connect_url: str,
        names: Sequence[str],
        interval_s: float,
        restarts: Counter,
        also_each_tick: Callable[[], object] | None = None,
    ) -> None:
        self.connect_url = connect_url
        self.names = tuple(names)
        self.interval_s = interval_s
        self.restarts = restarts
        self.also_each_tick = also_each_tick
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        # A fresh event per thread: a thread told to stop without waiting may still be
        # finishing its check when a new one starts.
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._loop, args=(self._stop,), name="connector-watchdog", daemon=True
        )
        self._thread.start()

    def stop(self, wait: bool = True) -> None:
        self._stop.set()
        if wait and self._thread is not None and self._thread is not threading.current_thread():
            # One check makes at most a few HTTP calls of 10 s timeout each.
            self._thread.join(timeout=30)

    def run(self) -> None:
        """Check in the foreground until ``stop()`` (``streaming-ml connectors watch``)."""
        self._stop = threading.Event()
        self._loop(self._stop)

    def _loop(self, stop: threading.Event) -> None:
        while not stop.wait(self.interval_s):
            try:
                self.check()
                if self.also_each_tick is not None:
                    self.also_each_tick()
            except Exception:  # the watchdog must outlive any surprise in one check
                logger.exception("connector check failed unexpectedly; trying again next tick")

    def check(self) -> list[str]:
        """One round over the connectors; returns the names it restarted."""
        restarted: list[str] = []
        for name in self.names:
            try:
                status = connect.connector_status(self.connect_url, name)
                if status is None:
                    logger.warning(
                        "connector is not registered; run `streaming-ml connectors apply`",
                        extra={"connector": name},
                    )
                    continue
                failed = connect.failed_parts(status)
                if not failed:
                    continue
                for part, info in failed:
                    logger.warning(
                        "connector FAILED: restarting the failed parts",
                        extra={
                            "connector": name,
                            "part": part,
                            "trace": connect.trace_summary(info.get("trace")),
                        },
                    )
                if connect.restart_failed(self.connect_url, name):
                    self.restarts.labels(name).inc()
                    restarted.append(name)
            except ConnectorError as error:
                logger.warning(
                    "connector check failed; trying again next tick",
                    extra={"connector": name, "error": str(error), "retry_in_s": self.interval_s},
                )
        return restarted


class PartitionZeroWatchdog:
    """Runs a ConnectorWatchdog only while this bridge owns partition 0 of ``topic``.

    The Bridge calls ``on_partitions`` after every rebalance with the partitions this
    replica owns.
    """

    def __init__(self, watchdog: ConnectorWatchdog, topic: str) -> None:
        self.watchdog = watchdog
        self.topic = topic
        self.active = False

    def on_partitions(self, owned: Collection[tuple[str, int]]) -> None:
        leader = (self.topic, 0) in owned
        if leader and not self.active:
            logger.info("this bridge owns partition 0: watching the connectors", extra={})
            self.watchdog.start()
        elif not leader and self.active:
            self.watchdog.stop(wait=False)
        self.active = leader

    def stop(self) -> None:
        if self.active:
            self.watchdog.stop()
            self.active = False


def partition_zero_watchdog(settings: Settings, restarts: Counter) -> PartitionZeroWatchdog | None:
    """The watchdog a bridge started with ``--apply-connectors`` runs (None when
    ``SML_CONNECTOR_CHECK_INTERVAL_S`` is 0)."""
    if settings.connector_check_interval_s <= 0:
        return None
    watchdog = ConnectorWatchdog(
        settings.connect_url,
        settings.connector_names,
        settings.connector_check_interval_s,
        restarts,
    )
    return PartitionZeroWatchdog(watchdog, settings.listings_topic)
