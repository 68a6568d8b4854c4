"""Restarts FAILED Kafka Connect connectors and tasks while the bridge runs."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

from prometheus_client import Counter

from streaming_ml import connect
from streaming_ml.exceptions import ConnectorError

logger = logging.getLogger(__name__)


class ConnectorWatchdog:
    """Restart connectors whose instance or tasks FAILED, from a daemon thread.

    A task that hits an error Connect treats as fatal (the Apicurio converter while
    the registry restarts, say) stays FAILED until someone restarts it; errors.retry
    settings do not cover that. Every ``interval_s`` this asks Connect for each
    connector's status and restarts only the failed parts. Connect being unreachable
    is logged and tried again on the next tick: it never stops the bridge.
    """

    def __init__(
        self, connect_url: str, names: Sequence[str], interval_s: float, restarts: Counter
    ) -> None:
        self.connect_url = connect_url
        self.names = tuple(names)
        self.interval_s = interval_s
        self.restarts = restarts
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="connector-watchdog", daemon=True)
        self._thread.start()

    def stop(self, wait: bool = True) -> None:
        self._stop.set()
        if wait and self._thread is not None and self._thread is not threading.current_thread():
            # One check makes at most a few HTTP calls of 10 s timeout each.
            self._thread.join(timeout=30)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.check()
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
                        "connector is not registered; restart the bridge to register it",
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
