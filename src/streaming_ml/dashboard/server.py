"""Running the dashboard: the collector's thread and a uvicorn server in another, on a
socket bound here so a port in use is an error with the fix, not a log line."""

from __future__ import annotations

import logging
import signal
import socket
import threading
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress
from types import TracebackType
from typing import Any

import uvicorn

from streaming_ml.config import Settings
from streaming_ml.dashboard import journey
from streaming_ml.dashboard.app import create_app
from streaming_ml.dashboard.collector import Collector
from streaming_ml.datasets.load import connect
from streaming_ml.errors import StackError, WaitTimeoutError
from streaming_ml.service.explain import explain_listing
from streaming_ml.stack import postgres_dsn
from streaming_ml.system.waits import wait_until

logger = logging.getLogger(__name__)

START_TIMEOUT_S = 15.0
# An open page's event stream ends with the collector; this is the backstop.
GRACEFUL_SHUTDOWN_S = 3


def service_explainer(settings: Settings) -> journey.Explainer:
    """The journey's question to the service the collector reads (``SML_SERVICE_URL``),
    with the CLI's timeout: an explanation costs a few ms per model. ``/explain`` is a
    POST but changes nothing, so the dashboard stays read-only."""

    def explain(listing_id: int, listing: Mapping[str, Any]) -> dict[str, Any]:
        return explain_listing(
            settings.prediction_url, listing_id, listing, settings.request_timeout_s
        )

    return explain


def listing_lookup(settings: Settings) -> Callable[[int], dict[str, Any]]:
    """A journey lookup on the stack's database, one short connection per lookup, and
    the service's explanation of the listing."""
    tables = journey.Tables(
        listings=settings.listings_table,
        predictions=settings.predictions_table,
        shadow=settings.shadow_table,
        outcomes=settings.outcomes_table,
    )
    explain = service_explainer(settings)

    def lookup(listing_id: int) -> dict[str, Any]:

        try:
            dsn = postgres_dsn(settings, "reader")
        except (OSError, KeyError) as error:
            raise StackError(
                f"no database password in {settings.state_dir} ({error}); point SML_STATE_DIR "
                "at the stack's state directory"
            ) from error
        conn = connect(dsn)
        conn.autocommit = True
        try:
            return journey.lookup(conn, tables, listing_id, explain)
        finally:
            conn.close()

    return lookup


class DashboardServer:
    """``streaming-ml dashboard`` in threads: ``start()`` returns once the page answers;
    ``stop()`` ends the collector, then the server. Also a context manager."""

    def __init__(self, settings: Settings, bridge_metrics_urls: Sequence[str] = ()) -> None:
        self.settings = settings
        self.collector = Collector(settings, bridge_metrics_urls)
        self._server: Any = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return self.settings.dashboard_url

    def start(self) -> DashboardServer:

        sock = _bind(self.settings.listen_host, self.settings.dashboard_port)
        app = create_app(
            self.collector,
            listing_lookup(self.settings),
            allowed_hosts=self.settings.dashboard_hosts,
            max_streams=self.settings.dashboard_max_streams,
        )
        config = uvicorn.Config(
            app,
            log_config=None,  # the entry point configured logging already
            log_level="warning",  # our own line says where it serves
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        )
        self._server = uvicorn.Server(config)
        self.collector.start()
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="dashboard", daemon=True
        )
        self._thread.start()
        server, thread = self._server, self._thread
        # A server thread that died will never start: no use waiting for the deadline.
        with suppress(WaitTimeoutError):
            wait_until(
                lambda: server.started or not thread.is_alive(),
                timeout=START_TIMEOUT_S,
                interval=0.05,
                what=f"the dashboard starting on {self.url}",
            )
        if not server.started:
            self.stop()
            raise StackError(
                f"the dashboard did not start on {self.url} within {START_TIMEOUT_S:g} s; "
                "see the log above"
            )
        logger.info("dashboard serving", extra={"url": self.url})
        return self

    def stop(self) -> None:
        self.collector.stop()
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=GRACEFUL_SHUTDOWN_S + 10)

    def __enter__(self) -> DashboardServer:
        return self.start()

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _traceback: TracebackType | None,
    ) -> None:
        self.stop()


def _bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise StackError(
            f"cannot serve the dashboard on {host}:{port} ({error.strerror}); is one running "
            "already? Pick another port with SML_DASHBOARD_PORT."
        ) from error
    sock.listen(64)
    return sock


def serve_forever(
    settings: Settings,
    bridge_metrics_urls: Sequence[str] = (),
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Serve until SIGINT or SIGTERM (``streaming-ml dashboard``)."""
    done = threading.Event()
    previous = {
        sig: signal.signal(sig, lambda *_: done.set()) for sig in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        with DashboardServer(settings, bridge_metrics_urls) as server:
            if on_ready is not None:
                on_ready(server.url)
            while not done.wait(0.5):  # wakes for the signal handlers
                pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
