"""The bench session under every pipeline run: the environment it finds or starts (stack,
service, bridges), the load generator it drives, and the read-back of what came out."""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
import uuid
from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

import psycopg2
import requests
from confluent_kafka.serialization import MessageField, SerializationContext
from psycopg2 import sql
from rich.console import Console

from streaming_ml import stack
from streaming_ml.bench import serving
from streaming_ml.bench.children import (
    BridgeProcess,
    LoadReport,
    _cli,
    _http_ok,
    parse_load_output,
)
from streaming_ml.bench.kafka import (
    LagProbe,
    _consumer,
    commit_offsets,
    high_watermarks,
    read_topic,
)
from streaming_ml.bench.options import (
    BenchOptions,
)
from streaming_ml.bench.progress import Waiting
from streaming_ml.config import Settings, settings_env
from streaming_ml.connect import commands
from streaming_ml.errors import BenchError
from streaming_ml.models.train import ensure_model
from streaming_ml.schema import avro
from streaming_ml.service.launcher import ServiceProcess

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


@dataclass
class Environment:
    """What the bench found running, what it started and how long starting took."""

    started: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    startup_s: dict[str, float] = field(default_factory=dict)
    bridge_group: str | None = None
    external_bridge: bool = False


def _is_loopback(url: str) -> bool:
    return (urlparse(url).hostname or "") in LOOPBACK_HOSTS


class BenchSession:
    """One bench session's environment, load generation and read-back; the runs
    (``bench/timed.py``, ``bench/bridge_only.py``) build on it."""

    def __init__(self, settings: Settings, options: BenchOptions, console: Console) -> None:
        self.settings = settings
        self.options = options
        self.console = console
        self.env = Environment()
        self.child_env = {**os.environ, **settings_env(settings)}
        self.log_dir = settings.state_dir / "logs"
        self.dsn = ""
        self.bridges: list[BridgeProcess] = []  # the bench's stream bridges, one group
        self.series: dict[str, Any] = {}
        self._seed = options.seed

    # -- environment --

    def prepare(self, cleanup: ExitStack) -> None:
        """Start what is not running; register how to stop it on ``cleanup``."""

        s = self.settings
        for name, url in (("service", s.prediction_url), ("kafka", f"http://{s.kafka_bootstrap}")):
            if not _is_loopback(url):
                raise BenchError(
                    f"the bench only talks to this machine; the {name} address {url} is not "
                    "loopback (set SML_HOST / SML_SERVICE_URL to 127.0.0.1)"
                )
        states = {n: info["state"] for n, info in stack.status(s).items()}
        if all(state == "running" for state in states.values()):
            self.env.reused.append("stack")
            self.console.print("[green]stack[/]: already running, using it")
        else:
            nothing_ran = all(state != "running" for state in states.values())
            began = time.monotonic()
            stack.up(s)
            self.env.startup_s["stack"] = round(time.monotonic() - began, 1)
            if nothing_ran:
                self.env.started.append("stack")
                cleanup.callback(self._stop_stack)
            else:
                self.env.reused.append("stack (partly started by the bench, left running)")
        self.dsn = stack.postgres_dsn(s)
        self.log_dir.mkdir(parents=True, exist_ok=True)

        if _http_ok(s.prediction_url.rstrip("/") + "/readyz"):
            self.env.reused.append("service")
            self.console.print(f"[green]service[/]: already running at {s.prediction_url}")
        else:
            self._start_service(cleanup)

        with Waiting(self.console, "creating topics, registering connectors", 120.0):
            commands.apply(s)

        metrics_url = f"http://{s.host}:{s.bridge_metrics_port}/metrics"
        if _http_ok(metrics_url):
            self.env.reused.append("bridge")
            self.env.external_bridge = True
            self.env.bridge_group = s.consumer_group
            self.console.print(
                f"[green]bridge[/]: already running ({metrics_url}), using it "
                f"(consumer group {s.consumer_group})"
            )
        else:
            self._start_bridge(cleanup)

    def _stop_stack(self) -> None:

        self.console.print("stopping the stack the bench started…")
        stack.down(self.settings)

    def _start_service(self, cleanup: ExitStack) -> None:

        s = self.settings
        tag = ensure_model(
            s.model_name,
            on_training=lambda why: self.console.print(f"no usable model ({why}): training one…"),
        )
        began = time.monotonic()
        service = ServiceProcess(
            host=s.host, port=s.service_port, model_tag=tag,
            log_path=self.log_dir / "bench-service.log",
        )  # fmt: skip
        with Waiting(self.console, f"starting the prediction service (model {tag})", 120.0):
            service.start()
        cleanup.callback(service.stop)
        self.settings = s.model_copy(update={"service_url": service.url})
        self.child_env.update(settings_env(self.settings))
        self.env.started.append("service")
        self.env.startup_s["service"] = round(time.monotonic() - began, 1)

    def _start_bridge(self, cleanup: ExitStack) -> None:
        """``--stream-bridges`` bridges in a fresh consumer group that starts at the change
        topic's end, so a backlog left by earlier runs is not measured."""
        began = time.monotonic()
        cleanup.callback(self._stop_bridge)
        group = self._launch_bridges()
        count = self.options.stream_bridges
        self.env.started.append("bridge" if count == 1 else f"{count} bridges")
        self.env.bridge_group = group
        self.env.startup_s["bridge"] = round(time.monotonic() - began, 1)

    def ensure_stream_bridges(self) -> None:
        """The stream bridges again after a run that stopped them (the bridge-only runs),
        in a new group at the topic's end; nothing when a bridge of the user's runs."""
        if not self.bridges and not self.env.external_bridge:
            self.env.bridge_group = self._launch_bridges()

    def _launch_bridges(self) -> str:
        s = self.settings
        group = f"sml-bench-{uuid.uuid4().hex[:8]}"
        consumer = _consumer(s)
        try:
            ends = high_watermarks(consumer, s.listings_topic)
        finally:
            consumer.close()
        if ends is not None:
            commit_offsets(s, group, s.listings_topic, ends)
        count = self.options.stream_bridges
        names = [group] if count == 1 else [f"{group}-{i + 1}" for i in range(count)]
        self.bridges = [
            BridgeProcess(s, self.child_env, group, self.log_dir, name=n) for n in names
        ]
        for bridge in self.bridges:
            bridge.start()
        for bridge in self.bridges:
            bridge.wait_ready(self.console)
        return group

    def _stop_bridge(self) -> None:
        for bridge in self.bridges:
            bridge.stop()
        self.bridges = []

    # -- load generation and read-back --

    def _next_seed(self) -> int:
        self._seed += 1
        return self._seed

    def load(
        self, rows: int, rate: float | None, batch: int, what: str, lag: LagProbe | None = None
    ) -> tuple[LoadReport, list[tuple[float, int]]]:
        """Run ``streaming-ml load`` as its own process; sample consumer lag meanwhile."""
        args = [
            "load",
            "--rows",
            str(rows),
            "--batch",
            str(batch),
            "--seed",
            str(self._next_seed()),
        ]
        if rate is not None:
            args += ["--rate", f"{rate:g}"]
        expected = rows / rate if rate else rows / 5_000
        timeout = 2 * expected + 60
        lag_samples: list[tuple[float, int]] = []
        log_path = self.log_dir / "bench-load.log"
        with (
            log_path.open("ab") as log,
            tempfile.TemporaryFile() as out,
            Waiting(self.console, what, timeout) as wait,
        ):
            process = subprocess.Popen(
                _cli(*args), env=self.child_env, stdin=subprocess.DEVNULL, stdout=out, stderr=log
            )
            try:
                while process.poll() is None:
                    if wait.expired():
                        raise BenchError(
                            f"the load generator did not finish {rows} rows in {timeout:.0f}s; "
                            f"see {log_path}"
                        )
                    detail = f"~{min(wait.elapsed, expected):.0f}s of ~{expected:.0f}s of inserts"
                    if lag is not None and (current := lag.lag()) is not None:
                        lag_samples.append((time.time() * 1000, current))
                        detail += f", consumer lag {current}"
                    wait.update(detail)
                    wait.sleep(0.5)
            finally:
                if process.poll() is None:
                    process.kill()
                    process.wait()
            out.seek(0)
            text = out.read().decode(errors="replace")
            if process.returncode != 0:
                tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-10:])
                raise BenchError(
                    f"the load generator failed (exit {process.returncode}); "
                    f"see {log_path}:\n{tail}"
                )
        report = parse_load_output(text)
        if report.inserted != rows:
            raise BenchError(f"the load generator inserted {report.inserted} of {rows} rows")
        return report, lag_samples

    def _count_sql(self) -> sql.Composed:
        s = self.settings
        return sql.SQL(
            "SELECT (SELECT count(*) FROM {} WHERE id BETWEEN %(a)s AND %(b)s), "
            "(SELECT count(*) FROM {} WHERE listing_id BETWEEN %(a)s AND %(b)s)"
        ).format(
            sql.Identifier("public", s.listings_table),
            sql.Identifier("public", s.predictions_table),
        )

    def wait_predicted(
        self, report: LoadReport, timeout_s: float, lag: LagProbe | None = None
    ) -> tuple[int, list[tuple[float, int]]]:
        """Poll one count query until every inserted row has its prediction row."""

        lag_samples: list[tuple[float, int]] = []
        bounds = {"a": report.first_id, "b": report.last_id}
        conn = psycopg2.connect(self.dsn, connect_timeout=10)
        conn.autocommit = True
        try:
            with (
                conn.cursor() as cur,
                Waiting(self.console, "waiting for prediction rows", timeout_s) as wait,
            ):
                while True:
                    cur.execute(self._count_sql(), bounds)
                    listings, predicted = cur.fetchone() or (0, 0)  # COUNTs: always a row
                    if lag is not None and (current := lag.lag()) is not None:
                        lag_samples.append((time.time() * 1000, current))
                    if predicted >= listings:
                        return int(listings), lag_samples
                    if wait.expired():
                        raise BenchError(
                            f"only {predicted} of {listings} listings had a prediction row "
                            f"{timeout_s:.0f}s after the inserts; {self._pipeline_hint()}"
                        )
                    wait.update(f"{predicted}/{listings} rows")
                    wait.sleep(0.25)
        finally:
            conn.close()

    def _pipeline_hint(self) -> str:
        s = self.settings
        states = []
        for name in s.connector_names:
            try:
                body = requests.get(f"{s.connect_url}/connectors/{name}/status", timeout=5).json()
                tasks = ",".join(t.get("state", "?") for t in body.get("tasks", []))
                states.append(f"{name}: {body.get('connector', {}).get('state')} tasks [{tasks}]")
            except (requests.RequestException, ValueError):
                states.append(f"{name}: status not available")
        logs = ", ".join(str(b.log_path) for b in self.bridges)
        where = logs or "the running bridge's log"
        return (
            f"connectors: {'; '.join(states)}. Check {where}, `streaming-ml stack logs connect` "
            f"and the DLQ topic {s.dlq_topic}"
        )

    def fetch_rows(self, report: LoadReport) -> list[tuple[float, ...]]:
        """Every stamp of every row of a run, in one query."""

        s = self.settings
        query = sql.SQL(
            "SELECT listing_id, source_ts_ms, kafka_ts_ms, bridge_received_ts_ms, "
            "predicted_ts_ms, model_latency_ms, "
            "extract(epoch FROM written_at)::float8 * 1000 "
            "FROM {} WHERE listing_id BETWEEN %s AND %s"
        ).format(sql.Identifier("public", s.predictions_table))
        conn = psycopg2.connect(self.dsn, connect_timeout=10)
        try:
            with conn.cursor() as cur:
                cur.execute(query, (report.first_id, report.last_id))
                return [tuple(float(v) for v in row) for row in cur.fetchall()]
        finally:
            conn.close()

    def prediction_topic_times(
        self, start: Mapping[int, int], first_id: int, last_id: int, values: bool = False
    ) -> dict[int, Any]:
        """listing_id → broker timestamp (ms) of its prediction record (or, with
        ``values``, (timestamp, decoded value)) for ids in [first_id, last_id]."""

        s = self.settings
        decode = avro.writer_schema_deserializer(
            avro.registry_client(s.registry_url, s.registry_basic_auth)
        )
        key_ctx = SerializationContext(s.predictions_topic, MessageField.KEY)
        value_ctx = SerializationContext(s.predictions_topic, MessageField.VALUE)
        found: dict[int, Any] = {}

        def keep(msg: Any) -> None:
            key = decode(msg.key(), key_ctx)
            lid = int(key["listing_id"]) if isinstance(key, Mapping) else None
            if lid is None or not first_id <= lid <= last_id or msg.value() is None:
                return
            ts = float(msg.timestamp()[1])
            found[lid] = (ts, decode(msg.value(), value_ctx)) if values else ts

        read_topic(s, s.predictions_topic, start, keep, 120.0, self.console)
        return found

    def _topic_ends(self, topic: str) -> dict[int, int]:
        consumer = _consumer(self.settings)
        try:
            return high_watermarks(consumer, topic) or {}
        finally:
            consumer.close()

    def serving_run(self) -> dict[str, Any]:
        return serving.serving_run(self.settings, self.options, self.console, self._next_seed)
