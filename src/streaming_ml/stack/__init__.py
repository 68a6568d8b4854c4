"""The real CDC stack as local processes on the loopback: install, up, down, status.

Postgres 15, Kafka 4.3 (KRaft), Apicurio Registry 3.0.9, Kafka Connect with
Debezium 3.6 and Adminer each run detached with a pid file and a log under
``settings.state_dir``; ``up`` waits on real health checks and ``down`` stops them
in reverse order. State (rows, topics, offsets, schemas, the replication slot)
survives ``down``/``up``; ``down --purge`` deletes it but keeps the downloaded jars.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import psycopg2
from psycopg2.extensions import make_dsn

from streaming_ml.config import Settings
from streaming_ml.errors import StackError, WaitTimeoutError
from streaming_ml.stack import (
    adminer,
    apps,
    connect_worker,
    detached,
    jars,
    kafka,
    postgres,
    schema_registry,
)
from streaming_ml.stack.detached import console
from streaming_ml.stack.secrets import (
    APP_ROLE,
    READER_ROLE,
    ensure_passwords,
    ensure_signing_key,
    load_passwords,
)
from streaming_ml.system.waits import wait_until

logger = logging.getLogger(__name__)

__all__ = [
    "COMPONENTS",
    "components",
    "down",
    "endpoints",
    "install",
    "log_files",
    "postgres_dsn",
    "print_logs",
    "print_status",
    "psql",
    "restart_component",
    "stack_running",
    "status",
    "stop_component",
    "up",
]


@dataclass(frozen=True)
class Component:
    name: str
    ports: tuple[str, ...]  # Settings fields
    timeout_s: float
    logs: tuple[str, ...]  # files under <state>/logs
    stop_signal: int = signal.SIGTERM
    stop_timeout_s: float = 30.0
    port_offset: int = 0  # added to each port setting (Kafka nodes after the first)


POSTGRES = Component(
    postgres.NAME, ("postgres_port",), 60, ("postgres.log",),
    # SIGINT is Postgres' "fast" shutdown: it does not wait for clients to disconnect.
    stop_signal=signal.SIGINT,
)  # fmt: skip
KAFKA = Component(
    kafka.NAME, ("kafka_port", "kafka_controller_port"), 120, ("kafka.log", "kafka-server.log")
)
REGISTRY = Component(schema_registry.NAME, ("registry_port",), 120, ("registry.log",))
CONNECT = Component(
    connect_worker.NAME, ("connect_port", "connect_metrics_port"), 180,
    ("connect.log", "connect-worker.log"),
)  # fmt: skip
ADMINER = Component(adminer.NAME, ("adminer_port",), 20, ("adminer.log",), stop_timeout_s=5)

# Start order (dependencies first); `down` walks it backwards. With several Kafka nodes
# (SML_KAFKA_NODES), KAFKA stands for all of them: see components().
COMPONENTS: tuple[Component, ...] = (POSTGRES, KAFKA, REGISTRY, CONNECT, ADMINER)
BY_NAME = {c.name: c for c in COMPONENTS}


def kafka_nodes(settings: Settings) -> list[tuple[Component, kafka.Node]]:
    """Each Kafka node and the component that runs it (just KAFKA for a single node)."""
    found = kafka.nodes(settings)
    if len(found) == 1:
        return [(KAFKA, found[0])]
    return [
        (
            Component(
                node.name, KAFKA.ports, KAFKA.timeout_s, node.logs,
                port_offset=node.port - settings.kafka_port,
            ),
            node,
        )
        for node in found
    ]  # fmt: skip


def components(settings: Settings) -> tuple[Component, ...]:
    """COMPONENTS with KAFKA expanded into the nodes ``settings`` asks for."""
    nodes = tuple(component for component, _ in kafka_nodes(settings))
    return tuple(n for c in COMPONENTS for n in (nodes if c is KAFKA else (c,)))


def _chosen(settings: Settings, name: str) -> list[Component]:
    """The components ``name`` means: one by its name, or every Kafka node for ``kafka``."""
    everything = components(settings)
    if name == KAFKA.name:
        return [c for c, _ in kafka_nodes(settings)]
    chosen = [c for c in everything if c.name == name]
    if not chosen:
        names = dict.fromkeys([*BY_NAME, *(c.name for c in everything)])
        raise StackError(f"unknown component {name!r}; use one of {', '.join(names)}")
    return chosen


# Debian packages, each with a check that says whether it is already there.
APT_PACKAGES: tuple[tuple[str, Callable[[], bool]], ...] = (
    ("postgresql-15", postgres.installed),
    ("openjdk-17-jre-headless", lambda: (jars.JAVA_HOME_17 / "bin" / "java").exists()),
    ("maven", lambda: shutil.which("mvn") is not None),
    ("php-cli", lambda: shutil.which("php") is not None),
    ("php-pgsql", lambda: any(Path("/etc/php").glob("*/mods-available/pgsql.ini"))),
    ("adminer", lambda: (adminer.DOCROOT / "index.php").exists()),
    # Headless browser for the Adminer end-to-end test (Python playwright drives it).
    ("chromium", lambda: shutil.which("chromium") is not None),
)


# --- install -------------------------------------------------------------------


def missing_packages() -> list[str]:
    return [name for name, present in APT_PACKAGES if not present()]


def _apt_install(packages: list[str]) -> None:
    if os.geteuid() != 0:
        raise StackError(
            f"missing Debian packages: {' '.join(packages)}. Install them with "
            f"`sudo apt-get update && sudo apt-get install -y {' '.join(packages)}`, then rerun."
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    started = time.monotonic()
    console.print(f"[bold]apt[/]: installing {', '.join(packages)}")
    for argv in (
        ["apt-get", "update", "-q"],
        ["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages],
    ):
        with console.status(f"[bold]apt[/]: {' '.join(argv[:2])} ..."):
            result = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
        if result.returncode != 0:
            raise StackError(
                f"apt: `{' '.join(argv)}` failed (exit {result.returncode}); fix the package "
                f"source and rerun `streaming-ml stack install`:\n{result.stderr.strip()[-1500:]}"
            )
    console.print(f"[bold]apt[/]: installed in {time.monotonic() - started:.0f}s")


def install(settings: Settings) -> None:
    """Install missing Debian packages and fetch the pinned jars; a no-op when done."""
    started = time.monotonic()
    packages = missing_packages()
    if packages:
        _apt_install(packages)
    if jars.jars_present(settings.dist_dir) and not packages:
        console.print(f"[green]install[/]: packages and jars already present ({settings.dist_dir})")
        return
    jars.fetch_jars(settings.dist_dir)
    jars.java_binary()  # fails with the fix when Java is still missing
    console.print(f"[green]install[/]: done in {time.monotonic() - started:.0f}s")


# --- up --------------------------------------------------------------------------


def _port(settings: Settings, field: str, component: Component) -> int:
    return int(getattr(settings, field)) + component.port_offset


def endpoints(settings: Settings) -> dict[str, dict[str, Any]]:
    """Where each component listens (whether or not it runs)."""
    host = settings.host
    return {
        postgres.NAME: {
            "host": host, "port": settings.postgres_port,
            "url": f"postgresql://cars_app@{host}:{settings.postgres_port}/{settings.database}",
        },
        **_kafka_endpoints(settings),
        schema_registry.NAME: {
            "host": host, "port": settings.registry_port, "url": settings.registry_url,
        },
        connect_worker.NAME: {
            "host": host, "port": settings.connect_port, "url": settings.connect_url,
            "metrics_url": settings.connect_metrics_url,
        },
        adminer.NAME: {"host": host, "port": settings.adminer_port, "url": adminer.url(settings)},
    }  # fmt: skip


def _kafka_endpoints(settings: Settings) -> dict[str, dict[str, Any]]:
    host = settings.host
    nodes = kafka.nodes(settings)
    return {
        node.name: {
            "host": host, "port": node.port,
            # A single node's address is the bootstrap; each of several nodes has its own.
            "url": settings.local_kafka_bootstrap if len(nodes) == 1 else f"{host}:{node.port}",
            "controller_port": node.controller_port,
        }
        for node in nodes
    }  # fmt: skip


def up(settings: Settings) -> dict[str, dict[str, Any]]:
    """Start every component that is not running and wait until all are healthy.

    Returns the endpoints. On failure, whatever this call started is stopped again.
    """
    state = settings.state_dir
    everything = components(settings)
    running = {c.name for c in everything if detached.running_pid(state, c.name) is not None}
    to_start = [c for c in everything if c.name not in running]
    # Also for a stack started before models were signed: its key is made on the next up.
    ensure_signing_key(state)
    if not to_start:
        console.print("[green]stack[/]: everything is already running")
        _print_endpoints(settings)
        return endpoints(settings)
    # Check every port first, so a conflict fails before anything is installed or started.
    for component in to_start:
        for field in component.ports:
            detached.require_free_port(
                component.name,
                settings.host,
                _port(settings, field, component),
                f"SML_{field.upper()}",
            )
    kafka.check_layout(settings)
    install(settings)
    jars.java_binary()  # a clear error before anything starts, not halfway through
    state.mkdir(parents=True, exist_ok=True)
    passwords = ensure_passwords(state)
    run_as = postgres.server_user()
    # Started by root, the other components run as an unprivileged user of their own; it
    # owns the logs dir (the JVMs write their own log files there) and Kafka's log dir.
    components_as = detached.component_user()
    if components_as:
        state.chmod(state.stat().st_mode | 0o011)
        detached.check_traversable(state, components_as, "stack")
        detached.own_tree(state / "logs", components_as)
    for name in sorted(running):
        console.print(f"[green]{name}[/]: already running")

    started: list[Component] = []
    began = time.monotonic()

    def launch(component: Component, start: Callable[[], int]) -> int | None:
        if component.name in running:
            return None
        pid = start()
        started.append(component)
        return pid

    def wait(component: Component, pid: int | None, what: str, check: Callable[[], bool]) -> None:
        waited = detached.wait_until(
            component.name, what, check, timeout=component.timeout_s, pid=pid,
            log=state / "logs" / component.logs[-1],
        )  # fmt: skip
        if pid is not None:
            console.print(f"[green]{component.name}[/]: ready ({waited:.1f}s)")

    try:
        # Postgres and Kafka do not depend on each other: start both, then wait.
        if POSTGRES.name not in running:
            postgres.initdb(settings, passwords, run_as)
        pg_pid = launch(POSTGRES, lambda: postgres.start(settings, run_as))
        nodes = kafka_nodes(settings)
        for component, node in nodes:
            if component.name not in running:
                kafka.format_storage(settings, settings.dist_dir, components_as, node)
        kafka_pids = [
            launch(c, partial(kafka.start, settings, settings.dist_dir, components_as, n))
            for c, n in nodes
        ]
        adminer_pid = launch(ADMINER, lambda: adminer.start(settings, components_as))

        wait(POSTGRES, pg_pid, "connections (pg_isready)", lambda: postgres.ready(settings))
        postgres.apply_init_sql(settings, passwords)
        registry_pid = launch(
            REGISTRY,
            lambda: schema_registry.start(settings, settings.dist_dir, passwords, components_as),
        )
        # A node lists itself once the quorum (most of the nodes) has formed.
        for (component, node), kafka_pid in zip(nodes, kafka_pids, strict=True):
            wait(component, kafka_pid, "broker metadata", partial(kafka.ready, settings, node))
        connect_pid = launch(
            CONNECT,
            lambda: connect_worker.start(settings, settings.dist_dir, passwords, components_as),
        )
        wait(
            REGISTRY,
            registry_pid,
            "/health/ready + ccompat API",
            lambda: schema_registry.ready(settings),
        )
        # Before any connector can register a schema; `connectors apply` checks it again.
        level = schema_registry.ensure_compatibility(settings)
        console.print(f"[green]{REGISTRY.name}[/]: compatibility {level}")
        wait(CONNECT, connect_pid, "REST API + plugins", lambda: connect_worker.ready(settings))
        wait(ADMINER, adminer_pid, "HTTP", lambda: adminer.ready(settings))
    except BaseException:
        # Nothing half-started: stop what this call started, newest first.
        for component in reversed(started):
            _stop(state, component)
        raise
    console.print(f"[bold green]stack up[/] in {time.monotonic() - began:.1f}s")
    _print_endpoints(settings)
    return endpoints(settings)


def _print_endpoints(settings: Settings) -> None:
    for name, endpoint in endpoints(settings).items():
        console.print(f"  {name:<9} {endpoint['url']}", soft_wrap=True)


# --- down / status / logs / psql -----------------------------------------------


def down(settings: Settings, purge: bool = False) -> None:
    """Stop every component (reverse order); with ``purge`` also delete all state."""
    state = settings.state_dir
    stopped_any = False
    for component in reversed(COMPONENTS):
        group = [c for c, _ in kafka_nodes(settings)] if component is KAFKA else [component]
        stopped_any = _stop_together(settings, group) or stopped_any
    if not stopped_any:
        console.print(f"[green]stack[/]: nothing was running (state dir {state})")
    if purge:
        _purge(state, settings.dist_dir)
        console.print(f"[yellow]stack[/]: state in {state} deleted (jars kept)")


def stop_component(settings: Settings, name: str) -> bool:
    """Stop one component (``kafka``: every Kafka node; ``kafka-2``: one of several),
    leaving the others running; True if it was running. ``up`` starts it again (it starts
    only what is not running)."""
    return _stop_together(settings, _chosen(settings, name))


def _stop_together(settings: Settings, group: list[Component]) -> bool:
    """Stop ``group`` at once; True if any of it was running. Kafka nodes stop together:
    one by one, the last would wait in vain for a quorum to approve its shutdown."""

    def stop(component: Component) -> bool:
        stopped = _stop(settings.state_dir, component)
        if stopped:
            _wait_ports_released(settings, component)
        return stopped

    names = ", ".join(c.name for c in group)
    with console.status(f"[bold]{names}[/]: stopping"):
        if len(group) == 1:
            stopped = [stop(group[0])]
        else:
            with ThreadPoolExecutor(len(group)) as pool:
                stopped = list(pool.map(stop, group))
    for component, was_running in zip(group, stopped, strict=True):
        if was_running:
            console.print(f"[yellow]{component.name}[/]: stopped")
    return any(stopped)


def _wait_ports_released(settings: Settings, component: Component, timeout_s: float = 10.0) -> None:
    """Until the stopped component's ports can be bound again, for at most ``timeout_s``.

    The process group can be gone a moment before the kernel lets go of a listening port
    (seen with Connect's metrics port right after a stop), and ``up`` refuses a busy port,
    so a restart straight after a stop could fail. A port still busy after the timeout is
    left for ``up`` to report.
    """
    ports = [_port(settings, field, component) for field in component.ports]
    with suppress(WaitTimeoutError):
        wait_until(
            lambda: all(detached.port_free(settings.host, port) for port in ports),
            timeout=timeout_s,
            interval=0.1,
            what=f"{component.name}'s ports released",
        )


def restart_component(settings: Settings, name: str) -> None:
    """Stop one component and start it again, waiting until it is healthy (e.g. to see
    the pipeline ride out a registry or Connect restart)."""
    stop_component(settings, name)
    up(settings)


def _stop(state: Path, component: Component) -> bool:
    return detached.stop(
        state, component.name, timeout=component.stop_timeout_s, sig=component.stop_signal
    )


def _purge(state: Path, dist_dir: Path) -> None:
    if not state.exists():
        return
    keep = dist_dir.resolve()
    for entry in state.iterdir():
        resolved = entry.resolve()
        if resolved == keep or keep.is_relative_to(resolved):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    if not any(state.iterdir()):
        state.rmdir()


def status(settings: Settings) -> dict[str, dict[str, Any]]:
    """Each component's state (running/stopped), pid and endpoint, then each application
    process `streaming-ml run` started (a dead one shows as stopped)."""
    result: dict[str, dict[str, Any]] = {}
    for name, endpoint in endpoints(settings).items():
        pid = detached.running_pid(settings.state_dir, name)
        result[name] = {"state": "running" if pid else "stopped", "pid": pid, **endpoint}
    if result[postgres.NAME]["state"] == "running":
        try:
            reader = postgres_dsn(settings, "reader")
            result[postgres.NAME]["replication"] = postgres.slot_health(reader)
        except (StackError, psycopg2.Error) as error:
            result[postgres.NAME]["replication"] = {"warning": f"slot not readable: {error}"}
    result.update(apps.status(settings.state_dir))
    return result


def stack_running(settings: Settings) -> bool:
    """Every stack component runs (application processes aside)."""
    return all(detached.running_pid(settings.state_dir, c.name) for c in COMPONENTS)


def print_status(current: dict[str, dict[str, Any]], as_json: bool = False) -> bool:
    """Print each component's state (a ``status()``); True when every one runs."""
    healthy = all(info["state"] == "running" for info in current.values())
    if as_json:
        print(json.dumps(current))
        return healthy
    for name, info in current.items():
        colour = "green" if info["state"] == "running" else "red"
        where = info.get("url") or info.get("log")
        console.print(f"[{colour}]{name:<9} {info['state']:<8}[/] {where}", soft_wrap=True)
        slot = info.get("replication")
        if slot and slot.get("wal_status"):
            retained = (slot["retained_bytes"] or 0) / 2**20
            console.print(
                f"          slot {slot['slot']}: {'active' if slot['active'] else 'inactive'}, "
                f"wal_status {slot['wal_status']}, retains {retained:.0f} MB of "
                f"{slot['cap_bytes'] / 2**20:.0f} MB"
            )
        if slot and slot.get("warning"):
            console.print(f"[yellow]          warning: {slot['warning']}[/]", soft_wrap=True)
    return healthy


def log_files(settings: Settings, component: str | None = None) -> list[Path]:
    """The log files of one component or application process (default: all of them)."""
    logs = settings.state_dir / "logs"
    known = {c.name: [logs / name for name in c.logs] for c in components(settings)}
    if "kafka" not in known:  # several nodes: `kafka` names all of them
        known["kafka"] = [p for n, paths in known.items() if n.startswith("kafka-") for p in paths]
    for name in apps.recorded(settings.state_dir):
        known[name] = [detached.log_path(settings.state_dir, name)]
    if component is not None and component not in known:
        raise StackError(f"unknown component {component!r}; use one of {', '.join(known)}")
    chosen = [known[component]] if component else list(known.values())
    return [path for paths in chosen for path in paths if path.exists()]


def print_logs(settings: Settings, component: str | None = None, lines: int = 50) -> None:
    for path in log_files(settings, component):
        print(f"==> {path} <==")
        print(detached.tail_lines(path, lines))


def postgres_dsn(settings: Settings, role: str = "app") -> str:
    """libpq DSN for ``role`` (app, reader, source, sink, registry, superuser) with its
    password.

    The application's role comes from SML_POSTGRES_DSN, or SML_POSTGRES_USER and its
    password when set (someone else's Postgres); otherwise from the local stack's secrets.
    Someone else's Postgres has no reader role of ours: the reader is then the
    application's credentials too.
    """
    name = postgres.resolve_role(role)
    as_app = name in (APP_ROLE, READER_ROLE)
    if as_app and settings.postgres_dsn is not None:
        return settings.postgres_dsn.get_secret_value()
    password = settings.database_password
    if as_app and (settings.postgres_user or password is not None):
        return make_dsn(
            host=settings.database_host, port=settings.postgres_port,
            user=settings.postgres_user or APP_ROLE, password=password,
            dbname=settings.database, connect_timeout=5,
        )  # fmt: skip
    passwords = load_passwords(settings.state_dir)
    return postgres.dsn(settings, name, passwords[name], postgres.database_for(name))


def psql(settings: Settings, command: str | None = None, role: str = "app") -> int:
    """Run psql on the stack's database (interactive when ``command`` is None)."""
    if detached.running_pid(settings.state_dir, postgres.NAME) is None:
        raise StackError("postgres is not running. Start the stack with `streaming-ml stack up`.")
    return postgres.psql(settings, load_passwords(settings.state_dir), command, role)
