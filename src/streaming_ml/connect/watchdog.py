"""Watchdogs that restart FAILED connector tasks (Connect never restarts them itself)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Collection, Sequence

from prometheus_client import CollectorRegistry, Counter

from streaming_ml.config import Settings
from streaming_ml.connect import client
from streaming_ml.errors import ConnectorError

logger = logging.getLogger(__name__)


def restarts_counter(registry: CollectorRegistry | None = None) -> Counter:
    return Counter(
        "sml_connector_restarts",
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

    A task the schema registry refused (an incompatible change to the table) is not
    restarted: it would fail again on the same change event, every tick. The recovery
    is logged once, as an error, until the task runs again.
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
        # Connectors whose refused schema was reported: said once, not every tick.
        self._refused: set[str] = set()

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
                status = client.connector_status(self.connect_url, name)
                if status is None:
                    logger.warning(
                        "connector is not registered; run `streaming-ml connectors apply`",
                        extra={"connector": name},
                    )
                    continue
                failed = client.failed_parts(status)
                if not failed:
                    self._refused.discard(name)
                    continue
                if any(client.registry_refused(info.get("trace")) for _, info in failed):
                    self._report_refused(name, failed)
                    continue
                for part, info in failed:
                    logger.warning(
                        "connector FAILED: restarting the failed parts",
                        extra={
                            "connector": name,
                            "part": part,
                            "trace": client.trace_summary(info.get("trace")),
                        },
                    )
                if client.restart_failed(self.connect_url, name):
                    self.restarts.labels(name).inc()
                    restarted.append(name)
            except ConnectorError as error:
                logger.warning(
                    "connector check failed; trying again next tick",
                    extra={"connector": name, "error": str(error), "retry_in_s": self.interval_s},
                )
        return restarted

    def _report_refused(self, name: str, failed: list[tuple[str, dict[str, object]]]) -> None:
        if name in self._refused:
            return
        self._refused.add(name)
        for part, info in failed:
            trace = info.get("trace")
            reason = client.failure_reason(trace if isinstance(trace, str) else None)
            logger.error(
                "connector FAILED on a schema the registry refused: not restarting it "
                "(it would fail again on the same change)",
                extra={"connector": name, "part": part, "reason": reason},
            )


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
