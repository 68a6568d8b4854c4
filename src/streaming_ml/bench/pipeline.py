"""The pipeline runs: latency, throughput steps and bridge only, each timed from every
row's commit to its prediction row; starts what is not running and stops it again."""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

import numpy as np
import requests
from psycopg2 import sql
from rich.console import Console

from streaming_ml.bench import serving
from streaming_ml.bench.children import (
    BridgeProcess,
    LoadReport,
    _cli,
    _http_ok,
    parse_load_output,
    wait_all_exit,
)
from streaming_ml.bench.cpu import CpuSampler, cpu_note
from streaming_ml.bench.hops import (
    ReplicationSampler,
    change_topic_times,
    connect_metrics,
    hop_summary,
)
from streaming_ml.bench.kafka import (
    LagProbe,
    _consumer,
    commit_offsets,
    high_watermarks,
    read_topic,
    use_log_append_time,
)
from streaming_ml.bench.options import (
    BATCHED_COMMITS_PER_S,
    PREFILL_BATCH_ROWS,
    STEP_COMMITS_PER_S,
    BenchOptions,
)
from streaming_ml.bench.progress import Waiting
from streaming_ml.bench.stats import (
    MIN_ACHIEVED_SHARE,
    RowTimes,
    bridge_steps_per_event,
    growth_verdict,
    summarize,
)
from streaming_ml.config import Settings, settings_env
from streaming_ml.errors import BenchError, StreamingMLError

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


@dataclass
class Environment:
    """What the bench found running, what it started and how long starting took."""

    started: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    startup_s: dict[str, float] = field(default_factory=dict)
    bridge_group: str | None = None
    external_bridge: bool = False


@dataclass(frozen=True)
class Prefill:
    """Rows pre-filled into the change topic for the bridge-only rounds: the load
    generator's report, the change topic's end offsets before them, and how long
    Debezium took to capture them."""

    report: LoadReport
    change_start: dict[int, int]
    capture_s: float


def _add_up(summaries: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Bridge summary lines added up key by key: the numbers, and the maps of numbers
    (``step_seconds``) entry by entry."""
    total: dict[str, Any] = {}
    for summary in summaries:
        for key, value in summary.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                total[key] = total.get(key, 0) + value
            elif isinstance(value, Mapping):
                total[key] = _add_up([total.get(key, {}), value])
    return total


def _is_loopback(url: str) -> bool:
    return (urlparse(url).hostname or "") in LOOPBACK_HOSTS


class Bench:
    """One bench session: environment, runs, and the collected figures."""

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
        from streaming_ml import stack

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

        from streaming_ml.connect import commands

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
        from streaming_ml import stack

        self.console.print("stopping the stack the bench started…")
        stack.down(self.settings)

    def _start_service(self, cleanup: ExitStack) -> None:
        from streaming_ml.demo import ensure_model
        from streaming_ml.service.launcher import ServiceProcess

        s = self.settings
        tag = ensure_model(s, self.console)
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
        s = self.settings
        group = f"sml-bench-{uuid.uuid4().hex[:8]}"
        consumer = _consumer(s)
        try:
            ends = high_watermarks(consumer, s.listings_topic)
        finally:
            consumer.close()
        if ends is not None:
            commit_offsets(s, group, s.listings_topic, ends)
        began = time.monotonic()
        count = self.options.stream_bridges
        names = [group] if count == 1 else [f"{group}-{i + 1}" for i in range(count)]
        self.bridges = [
            BridgeProcess(s, self.child_env, group, self.log_dir, name=n) for n in names
        ]
        cleanup.callback(self._stop_bridge)
        for bridge in self.bridges:
            bridge.start()
        for bridge in self.bridges:
            bridge.wait_ready(self.console)
        self.env.started.append("bridge" if count == 1 else f"{count} bridges")
        self.env.bridge_group = group
        self.env.startup_s["bridge"] = round(time.monotonic() - began, 1)

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
        import psycopg2

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
                    listings, predicted = cur.fetchone()
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
        import psycopg2

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
        from confluent_kafka.serialization import MessageField, SerializationContext

        from streaming_ml.schema import avro

        s = self.settings
        decode = avro.writer_schema_deserializer(avro.registry_client(s.registry_url))
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

    # -- runs --

    def warm_up(self) -> dict[str, Any]:
        """A few seconds at the latency run's rate end to end: proves the pipeline works,
        warms every cache and JIT, and switches the topics to broker append time before
        anything is measured (a first few rows create the topics on a fresh stack)."""
        o, s = self.options, self.settings
        first, _ = self.load(20, None, 1, "warm-up: first rows (create the topics)")
        self.wait_predicted(first, 180.0)
        previous = use_log_append_time(s, [s.listings_topic, s.predictions_topic])
        rows = max(1, round(o.rate * o.warmup_s))
        batch = o.rows_per_commit(o.rate)
        report, _ = self.load(rows, o.rate, batch, f"warm-up: {rows} rows at {o.rate:g} rows/s")
        count, _ = self.wait_predicted(report, o.drain_timeout_s)
        return {"rows": first.inserted + count, "topic_timestamp_type_before": previous}

    def timed_run(
        self,
        rate: float,
        duration_s: float,
        label: str,
        commits_per_s: int = BATCHED_COMMITS_PER_S,
        hops: bool = False,
    ) -> dict[str, Any]:
        """Insert at ``rate`` for ``duration_s`` from the load generator; read every row's
        stamps back; return figures (and keep the per-row series for the plot). With
        ``hops``, also split ``commit_to_kafka`` into its hops (``bench/hops.py``)."""
        o, s = self.options, self.settings
        rows = max(1, round(rate * duration_s))
        batch = o.rows_per_commit(rate, commits_per_s)
        # Other work on the machine skews every figure: record how busy it was.
        load_before = round(os.getloadavg()[0], 2)
        pred_start = self._topic_ends(s.predictions_topic)
        change_start = self._topic_ends(s.listings_topic) if hops else {}
        lag = LagProbe(s, self.env.bridge_group or s.consumer_group, s.listings_topic)
        with ExitStack() as during:
            cpu = during.enter_context(CpuSampler())
            replication = (
                during.enter_context(ReplicationSampler(self._superuser_dsn())) if hops else None
            )
            during.callback(lag.close)
            report, lag_load = self.load(
                rows, rate, batch, f"{label}: {rows} rows at {rate:g} rows/s", lag
            )
            inserted_at = time.time() * 1000
            count, lag_drain = self.wait_predicted(report, o.drain_timeout_s, lag)
        drained_s = (time.time() * 1000 - inserted_at) / 1000
        topic_ts = self.prediction_topic_times(pred_start, report.first_id, report.last_id)
        times = RowTimes.from_rows(self.fetch_rows(report), topic_ts)
        if len(times) != count:
            raise BenchError(f"{label}: read {len(times)} prediction rows, expected {count}")
        e2e = times.stages()["end_to_end"]
        keeps_up, growth = growth_verdict(times.source_ts, e2e)
        commit_span_s = (times.source_ts.max() - times.source_ts.min()) / 1000
        out_span_s = (times.written_ts.max() - times.written_ts.min()) / 1000
        lag_samples = lag_load + lag_drain
        result = {
            "offered_rows_per_s": rate,
            "duration_s": duration_s,
            "insert_mode": o.insert_mode,
            "rows_per_commit": batch,
            "rows_inserted": report.inserted,
            "rows_measured": len(times),
            "rows_with_topic_timestamp": int(np.isfinite(times.topic_ts).sum()),
            "first_id": report.first_id,
            "last_id": report.last_id,
            "load_generator_rows_per_s": round(report.rows_per_s, 1),
            "commit_rows_per_s": round(len(times) / commit_span_s, 1) if commit_span_s else None,
            "output_rows_per_s": round(len(times) / out_span_s, 1) if out_span_s else None,
            "drain_after_last_insert_s": round(drained_s, 2),
            "max_consumer_lag": max((v for _, v in lag_samples), default=None),
            "load_average_1m": {"before": load_before, "after": round(os.getloadavg()[0], 2)},
            "latency_ms": summarize(e2e),
            "stages": times.stage_summary(),
            "latency_growth": growth,
            "latency_not_growing": keeps_up,
            "cpu": cpu.summary(),
        }
        if replication is not None:
            result["commit_to_kafka_hops"] = self._hops(report, change_start, replication)
        self.series[label] = {"times": times, "lag": lag_samples}
        return result

    def _superuser_dsn(self) -> str:
        """pg_stat_replication shows LSNs and lags only to privileged roles: the stack's
        superuser when this machine has its secrets, else the app role (columns NULL)."""
        from streaming_ml.stack import postgres
        from streaming_ml.stack.secrets import load_passwords

        s = self.settings
        try:
            return postgres.superuser_dsn(s, load_passwords(s.state_dir), s.database)
        except (StreamingMLError, KeyError):
            return self.dsn

    def _hops(
        self, report: LoadReport, change_start: Mapping[int, int], replication: ReplicationSampler
    ) -> dict[str, Any]:
        s = self.settings
        times = change_topic_times(s, change_start, report.first_id, report.last_id, self.console)
        return {
            **hop_summary(times),
            "pg_stat_replication": replication.summary(),
            "connect_jmx": connect_metrics(s, s.source_connector),
        }

    def latency_run(self) -> dict[str, Any]:
        o = self.options
        self.console.rule(f"[bold]latency run: {o.rate:g} rows/s for {o.duration_s:g}s")
        return self.timed_run(o.rate, o.duration_s, "latency", hops=True)

    def throughput_steps(self) -> tuple[list[dict[str, Any]], float | None, str]:
        """Step the rate up until the pipeline falls behind; (steps, max sustained, why)."""
        o = self.options
        steps: list[dict[str, Any]] = []
        best: float | None = None
        why = f"kept up at every step up to {max(o.step_rates):g} rows/s (raise --steps)"
        for rate in o.step_rates:
            self.console.rule(f"[bold]throughput step: {rate:g} rows/s for {o.step_duration_s:g}s")
            try:
                step = self.timed_run(rate, o.step_duration_s, f"step {rate:g}", STEP_COMMITS_PER_S)
            except BenchError as error:
                steps.append({"offered_rows_per_s": rate, "kept_up": False, "error": str(error)})
                why = f"fell behind at {rate:g} rows/s: {error}"
                break
            commit_rate = step["commit_rows_per_s"] or 0.0
            output_rate = step["output_rows_per_s"] or 0.0
            generator_ok = commit_rate >= MIN_ACHIEVED_SHARE * rate
            output_ok = output_rate >= MIN_ACHIEVED_SHARE * commit_rate
            # Kept up = the pipeline kept pace with what was committed; whether the generator
            # reached the offered rate is reported separately.
            step["kept_up"] = bool(output_ok and step["latency_not_growing"])
            step["generator_reached_rate"] = bool(generator_ok)
            steps.append(step)
            if not output_ok:
                why = (
                    f"fell behind at {rate:g} rows/s: rows were committed at {commit_rate:.0f} "
                    f"rows/s but written back at only {output_rate:.0f} rows/s "
                    f"(max lag {step['max_consumer_lag']}); {cpu_note(step['cpu'])}"
                )
                break
            if not step["latency_not_growing"]:
                g = step["latency_growth"]
                why = (
                    f"fell behind at {rate:g} rows/s: p95 latency grew from "
                    f"{g['first_third_p95_ms']:.0f} ms to {g['last_third_p95_ms']:.0f} ms "
                    f"within the step (max lag {step['max_consumer_lag']}); {cpu_note(step['cpu'])}"
                )
                break
            if not generator_ok:
                # The pipeline kept up with what was committed; the generator is the limit.
                why = (
                    f"the load generator reached only {commit_rate:.0f} of {rate:g} rows/s "
                    "(bound by the generator / Postgres commits; the pipeline kept up with that)"
                )
                best = max(best or 0.0, commit_rate)
                break
            best = min(rate, commit_rate)
        return steps, best, why

    def prefill_change_topic(self) -> Prefill:
        """Stop the bench's bridge, insert ``prefill_rows`` rows as fast as possible and
        wait until Debezium has written all their change events: the bridge-only rounds
        all drain this same range, each in a new consumer group."""
        o, s = self.options, self.settings
        self.console.rule(f"[bold]bridge-only run: {o.prefill_rows} pre-filled rows")
        if self.env.external_bridge:
            self.console.print(
                "[yellow]a bridge the bench did not start is running; it consumes the "
                "pre-filled rows at the same time and shares the CPU, so this figure is low"
            )
        self._stop_bridge()
        change_start = self._topic_ends(s.listings_topic)
        report, _ = self.load(
            o.prefill_rows, None, PREFILL_BATCH_ROWS, f"pre-filling {o.prefill_rows} rows"
        )
        target = sum(change_start.values()) + o.prefill_rows
        with Waiting(self.console, "Debezium writing them to the change topic", 300.0) as wait:
            while (have := sum(self._topic_ends(s.listings_topic).values())) < target:
                if wait.expired():
                    raise BenchError(
                        f"only {have - sum(change_start.values())} of {o.prefill_rows} change "
                        f"events reached {s.listings_topic}; {self._pipeline_hint()}"
                    )
                wait.update(f"{have - sum(change_start.values())}/{o.prefill_rows} events")
                wait.sleep(0.25)
            capture_s = wait.elapsed
        return Prefill(report, change_start, capture_s)

    def bridge_only_run(
        self,
        prefill: Prefill,
        processes: int = 1,
        wait_for_sink: bool = False,
        explain: bool = False,
    ) -> dict[str, Any]:
        """Time ``processes`` ``--once`` bridges in one new consumer group draining the
        pre-filled range (bridge + model, no Debezium in the way): rows / (last prediction
        appended - first event read by any of them), so start-up and group join are
        excluded. With ``wait_for_sink``, wait afterwards until the JDBC sink has written
        this round's predictions, so the next round does not share the CPU with it.

        With ``explain``, the bridge runs with ``SML_BRIDGE_EXPLAIN=true`` and stops after
        ``explained_rows`` events: at a few ms per explained row, the whole pre-fill would
        take minutes and the rate is just as clear from a part of it."""
        o, s = self.options, self.settings
        report = prefill.report
        partitions = len(prefill.change_start)
        rows = o.explained_rows if explain else o.prefill_rows
        if processes > 1:
            self.console.rule(f"[bold]bridge-only run: {processes} bridges in one group")
            if processes > partitions:
                self.console.print(
                    f"[yellow]{processes} bridges for {partitions} partitions of "
                    f"{s.listings_topic}: {processes - partitions} of them get none"
                )
        if explain:
            self.console.rule(f"[bold]bridge-only run with explanations: {rows} events")
        group = f"sml-bench-prefill-{'explain-' if explain else ''}{uuid.uuid4().hex[:8]}"
        commit_offsets(s, group, s.listings_topic, prefill.change_start)
        pred_start = self._topic_ends(s.predictions_topic)
        names = [group] if processes == 1 else [f"{group}-{i + 1}" for i in range(processes)]
        env = {**self.child_env, "SML_BRIDGE_EXPLAIN": "true"} if explain else self.child_env
        max_events = rows if explain else None
        bridges = [
            BridgeProcess(s, env, group, self.log_dir, once=True, name=name, max_events=max_events)
            for name in names
        ]
        what = "bridge" if processes == 1 else f"{processes} bridges"
        if explain:
            what += " with explanations"
        began = time.monotonic()
        try:
            for bridge in bridges:
                bridge.start()
            summaries = wait_all_exit(
                bridges, self.console, 300.0, f"{what} (group {group}) draining {rows} events"
            )
        finally:
            for bridge in bridges:
                bridge.stop()
        wall_s = time.monotonic() - began
        found = self.prediction_topic_times(pred_start, report.first_id, report.last_id, True)
        if len(found) != rows:
            logs = ", ".join(str(b.log_path) for b in bridges)
            raise BenchError(
                f"the drained {what} produced {len(found)} predictions for {rows} rows; see {logs}"
            )
        appended = np.array([ts for ts, _ in found.values()])
        received = np.array([v["bridge_received_ts_ms"] for _, v in found.values()], dtype=float)
        span_s = (appended.max() - received.min()) / 1000
        run: dict[str, Any] = {
            "bridge_processes": processes,
            "explain": explain,
            "change_topic_partitions": partitions,
            "rows": rows,
            "predictions": len(found),
            "bridge_summary": summaries[0] if processes == 1 else _add_up(summaries),
        }
        if processes > 1:
            # Whether the work was shared: a late joiner may find little left to do.
            run["events_per_process"] = [summary.get("events") for summary in summaries]
        run |= {
            "first_read_to_last_append_s": round(span_s, 3),
            "bridge_rows_per_s": round(len(found) / span_s, 1) if span_s > 0 else None,
            "bridge_process_wall_s": round(wall_s, 2),
            "wall_rows_per_s_incl_startup": round(len(found) / wall_s, 1),
            "prefill_load_generator_rows_per_s": round(report.rows_per_s, 1),
            "prefill_capture_wait_s": round(prefill.capture_s, 2),
            "model_call_ms": summarize([v["model_latency_ms"] for _, v in found.values()]),
        }
        summary = run["bridge_summary"]
        run["bridge_steps_us_per_event"] = bridge_steps_per_event(
            summary.get("step_seconds") or {},
            summary.get("events") or 0,
            # Bridges side by side overlap in time: their steps add up to more than the
            # wall time, so there is none to compare with.
            run["bridge_rows_per_s"] if processes == 1 else None,
        )
        if explain:
            # Proof the round measured what it claims: every record carries its explanation.
            run["explained_predictions"] = sum(
                v.get("base_price") is not None for _, v in found.values()
            )
        if wait_for_sink:
            run["sink_caught_up_s"] = self._wait_sink_wrote(report, received.min())
        return run

    def baseline_run(self, prefill: Prefill) -> dict[str, Any]:
        """The reference consumer (one /predict per event) over the first events of the
        pre-filled range, against the same service, in this process."""
        from streaming_ml.bench.baseline import drain_per_event

        rows = self.options.baseline_drained
        self.console.rule(f"[bold]baseline: one /predict per event, {rows} events")
        with Waiting(self.console, f"the per-event consumer draining {rows} events", 600.0):
            return drain_per_event(
                self.settings, prefill.change_start, rows, "sml_bench_baseline", 600.0
            )

    def _wait_sink_wrote(self, report: LoadReport, since_ms: float) -> float | None:
        """Seconds until the predictions table holds, for every pre-filled row, a
        prediction read by the bridge at or after ``since_ms`` (this round's, the sink
        upserts by listing id); None when it did not within ``drain_timeout_s`` (the
        next round then shares the CPU with the sink: noted, not fatal)."""
        import psycopg2

        o, s = self.options, self.settings
        query = sql.SQL(
            "SELECT count(*) FROM {} WHERE listing_id BETWEEN "
            "%(a)s AND %(b)s AND bridge_received_ts_ms >= %(since)s"
        ).format(sql.Identifier("public", s.predictions_table))
        bounds = {"a": report.first_id, "b": report.last_id, "since": int(since_ms)}
        what = "JDBC sink writing this round's predictions"
        conn = psycopg2.connect(self.dsn, connect_timeout=10)
        conn.autocommit = True
        try:
            with conn.cursor() as cur, Waiting(self.console, what, o.drain_timeout_s) as wait:
                while True:
                    cur.execute(query, bounds)
                    (written,) = cur.fetchone()
                    if written >= report.inserted:
                        return round(wait.elapsed, 2)
                    if wait.expired():
                        break
                    wait.update(f"{written}/{report.inserted} rows")
                    wait.sleep(0.25)
        finally:
            conn.close()
        self.console.print(
            f"[yellow]the sink wrote {written} of {report.inserted} predictions in "
            f"{o.drain_timeout_s:.0f}s; the next round shares the CPU with it"
        )
        return None

    def serving_run(self) -> dict[str, Any]:
        return serving.serving_run(self.settings, self.options, self.console, self._next_seed)
