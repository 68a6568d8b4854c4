"""``streaming-ml run``: the application side against whatever stack the settings name.

The prediction service, N bridges, the evaluator, the dashboard, the connector watchdog
and optionally the online learner, each a detached ``streaming-ml`` process with a pid
file and a log under the state dir (``stack status`` and ``stack logs`` show them). No
synthetic load and no stack: Postgres, Kafka, the registry and Connect are whatever the
settings point at. Ctrl-C or SIGTERM stops what this run started, and nothing else.
"""

from __future__ import annotations

import logging
import signal
import socket
import threading
from dataclasses import dataclass, field

import requests
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console

from streaming_ml.config import Settings
from streaming_ml.connect import commands
from streaming_ml.errors import StackError
from streaming_ml.models.train import ensure_model
from streaming_ml.stack import apps
from streaming_ml.system import processes

logger = logging.getLogger(__name__)

LIVENESS_CHECK_S = 1.0


@dataclass
class Application:
    """The application's processes for ``settings``; ``start`` then ``stop``."""

    settings: Settings
    bridges: int = 1
    learner: bool = False
    apply_connectors: bool = True
    console: Console = field(default_factory=lambda: Console(stderr=True, highlight=False))
    started: list[str] = field(default_factory=list)
    bridge_metrics_urls: list[str] = field(default_factory=list)

    @property
    def service_url(self) -> str:
        """An external service (SML_SERVICE_URL) is used as it is; otherwise ours."""
        s = self.settings
        return s.service_url or f"http://{s.host}:{s.service_port}"

    def processes(self) -> list[apps.AppProcess]:
        s = self.settings
        host = s.host
        metrics = "http://{}:{}/metrics".format
        plan: list[apps.AppProcess] = []
        if s.service_url is None:
            plan.append(
                apps.AppProcess("service", ("serve",), ready_url=f"{self.service_url}/readyz")
            )
        ports = [s.bridge_metrics_port] + [
            processes.free_port(s.listen_host) for _ in range(self.bridges - 1)
        ]
        self.bridge_metrics_urls = [metrics(host, port) for port in ports]
        for i, port in enumerate(ports):
            plan.append(
                apps.AppProcess(
                    f"bridge-{i}", ("bridge",),
                    env={
                        "SML_SERVICE_URL": self.service_url,
                        "SML_BRIDGE_METRICS_PORT": str(port),
                        # Static members: a restarted run fences its predecessor at once.
                        "SML_BRIDGE_INSTANCE_ID": f"{socket.gethostname()}-{i}",
                    },
                    ready_url=metrics(host, port),
                )
            )  # fmt: skip
        plan.append(
            apps.AppProcess(
                "evaluator", ("evaluator",), ready_url=metrics(host, s.evaluator_metrics_port)
            )
        )
        dashboard_args = [
            arg for url in self.bridge_metrics_urls for arg in ("--bridge-metrics", url)
        ]
        plan.append(
            apps.AppProcess("dashboard", ("dashboard", *dashboard_args), ready_url=s.dashboard_url)
        )
        plan.append(
            apps.AppProcess(
                "watchdog",
                ("connectors", "watch"),
                ready_url=metrics(host, s.watchdog_metrics_port),
            )
        )
        if self.learner:
            plan.append(apps.AppProcess("learner", ("learn",)))
        return plan

    def start(self) -> None:
        """Start every process and wait until each serves; on failure stop them again."""
        s = self.settings
        plan = self.processes()
        running = apps.already_running(s.state_dir, [p.name for p in plan])
        if running:
            names = ", ".join(f"{name} (pid {pid})" for name, pid in running.items())
            raise StackError(
                f"already running: {names}. Another `streaming-ml run` (or demo) owns them; "
                "stop it first (Ctrl-C, or `kill <pid>` of that run)."
            )
        try:
            if s.service_url is None:
                tag = ensure_model(
                    s.model_name,
                    on_training=lambda why: self.console.print(
                        f"[bold]No usable {s.model_name} model ({why}): training one on "
                        "synthetic data…"
                    ),
                )
                self.console.print(f"model: {tag}")
            if self.apply_connectors:
                self.console.print("applying the topics and connectors…")
                commands.apply(s)
            for process in plan:
                pid = apps.start(s, process)
                self.started.append(process.name)
                waited = apps.wait_ready(s, process, pid)
                self.console.print(f"[green]{process.name}[/]: running (pid {pid}, {waited:.1f}s)")
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop what this application started, newest first."""
        while self.started:
            name = self.started.pop()
            if apps.stop(self.settings.state_dir, name):
                self.console.print(f"[yellow]{name}[/]: stopped")

    def dead(self) -> list[str]:
        """Started processes that are no longer running."""
        alive = apps.already_running(self.settings.state_dir, self.started)
        return [name for name in self.started if name not in alive]

    def assigned_partitions(self) -> int:
        """Partitions the bridges own right now (from their /metrics)."""
        total = 0
        for url in self.bridge_metrics_urls:
            try:
                text = requests.get(url, timeout=2).text
            except requests.RequestException:
                continue
            for family in text_string_to_metric_families(text):
                if family.name == "sml_bridge_assigned_partitions":
                    total += int(sum(sample.value for sample in family.samples))
        return total

    def wait(self, stop: threading.Event) -> None:
        """Until ``stop`` is set or a process dies (StackError naming it and its log)."""
        while not stop.wait(LIVENESS_CHECK_S):
            dead = self.dead()
            if dead:
                raise StackError(
                    f"{', '.join(dead)} exited; see `streaming-ml stack logs {dead[0]}`"
                )


def interrupt_on_sigterm() -> None:
    """SIGTERM raises KeyboardInterrupt, as Ctrl-C does: a start in progress then stops
    what it started instead of leaving detached processes behind."""

    def interrupt(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def run_application(
    settings: Settings, *, bridges: int = 1, learner: bool = False, apply_connectors: bool = True
) -> None:
    """Start the application side and keep it running until Ctrl-C or SIGTERM."""
    application = Application(
        settings, bridges=bridges, learner=learner, apply_connectors=apply_connectors
    )
    # While starting, SIGTERM interrupts like Ctrl-C does (start() then stops what it
    # started); once running, both only ask the wait below to end.
    interrupt_on_sigterm()
    stop = threading.Event()
    try:
        application.start()
        processes.stop_on_signals(stop.set, "stopping the application processes")
        application.console.print(
            f"[bold]Running[/]: service {application.service_url}, dashboard "
            f"{settings.dashboard_url}. Ctrl-C stops these processes (not the stack)."
        )
        application.wait(stop)
    finally:
        application.console.print("stopping the application processes…")
        application.stop()
