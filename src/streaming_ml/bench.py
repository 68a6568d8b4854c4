"""``streaming-ml bench``: latency, throughput and serving figures of the real pipeline.

Four runs against the real local stack, each optional:

- **serving**: ``/predict`` latency for 1 and 1,000 rows, and requests/s with
  concurrent clients;
- **latency**: a separate load-generator process (``streaming-ml load``) inserts
  listings at a fixed rate; for every row the time from its INSERT's commit to its
  prediction row being written is read back with one SQL query at the end and
  split into stages (commit → Kafka → bridge → model → predictions topic → table);
- **throughput steps**: the same at rising rates, stopping at the first rate the
  pipeline does not keep up with;
- **bridge only**: rows are pre-filled into the change topic while no bench bridge
  runs, then a bridge in a new consumer group drains them: bridge + model alone.

Every per-row stamp is epoch milliseconds of this machine's one clock (Postgres'
commit time via Debezium's ``source.ts_ms``, Kafka's broker append time, the
bridge's and Postgres' ``clock_timestamp()``), so stages can be subtracted.

Whatever is not running (stack, service, bridge) is started and stopped again at
the end; what was already running is used and left alone.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

import numpy as np
import requests
from rich.console import Console

from streaming_ml.config import Settings
from streaming_ml.exceptions import BenchError, StreamingMLError

logger = logging.getLogger(__name__)

InsertMode = Literal["batched", "single"]

# Batched inserts commit this often by default (rows per commit = rate / this):
# small enough that a row rarely waits for its transaction, large enough that
# the load generator is not bound by per-commit round trips.
BATCHED_COMMITS_PER_S = 100
# Throughput steps commit less often (rate/20 rows per commit): latency is measured from
# each row's commit, so bigger transactions cost nothing there, and they keep the single
# generator connection (one fsync per commit) from being the limit at high rates.
STEP_COMMITS_PER_S = 20
# Rows per transaction when pre-filling the change topic as fast as possible.
PREFILL_BATCH_ROWS = 1_000
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
PERCENTILES = (50, 95, 99)
# A step keeps up when the generator reached this share of the offered rate ...
MIN_ACHIEVED_SHARE = 0.9
# ... and latency in the last third of the step is not above this multiple of the
# first third's (plus a fixed allowance, so a few ms of jitter do not count as growth).
GROWTH_FACTOR = 2.0
GROWTH_ALLOWANCE_MS = 250.0
# Python libraries whose versions go into the report.
LIBRARIES = (
    "bentoml", "xgboost", "scikit-learn", "pandas", "numpy", "confluent-kafka",
    "psycopg2-binary", "requests", "fastavro", "pydantic", "matplotlib",
)  # fmt: skip
TARGETS: dict[str, tuple[str, float]] = {
    "latency_ms.p50": ("<=", 150.0),
    "latency_ms.p99": ("<=", 500.0),
    "max_sustained_rows_per_s": (">=", 5_000.0),
    "bridge_rows_per_s": (">=", 30_000.0),
    "predict_one_row_ms_p50": ("<=", 5.0),
}
# The latency targets are defined at this rate.
TARGET_RATE = 1_000.0

STAGES: tuple[tuple[str, str], ...] = (
    ("commit_to_kafka", "commit → change event in Kafka (kafka_ts - source_ts)"),
    ("kafka_to_bridge", "Kafka → bridge read it (bridge_received - kafka_ts)"),
    ("bridge_batching", "bridge: micro-batch fill, decode, plan (until the model call)"),
    ("model_call", "model call (/predict_batch round trip)"),
    ("bridge_to_topic", "model answered → prediction appended to its topic"),
    ("topic_to_table", "predictions topic → row written by the JDBC sink"),
    ("end_to_end", "commit → prediction row written (written_at - source_ts)"),
)


# --- Options --------------------------------------------------------------------


@dataclass(frozen=True)
class BenchOptions:
    """What to run and how hard; ``quick()`` is the smoke profile (< 60 s of runs)."""

    profile: str = "full"
    rate: float = 1_000.0
    duration_s: float = 30.0
    insert_mode: InsertMode = "batched"
    batch_rows: int | None = None  # rows per transaction in batched mode (None: rate/100)
    warmup_s: float = 5.0  # at the latency run's rate
    step_rates: tuple[float, ...] = (
        1_000, 2_000, 3_000, 4_000, 5_000, 6_000, 8_000, 10_000, 12_000, 16_000,
    )  # fmt: skip
    step_duration_s: float = 15.0
    prefill_rows: int = 50_000
    one_row_requests: int = 200
    thousand_row_requests: int = 50
    concurrency: int = 8
    concurrent_requests: int = 4_000
    concurrent_max_s: float = 15.0
    drain_timeout_s: float = 120.0
    run_serving: bool = True
    run_latency: bool = True
    run_throughput: bool = True
    seed: int = 5_000

    @classmethod
    def quick(cls) -> BenchOptions:
        return cls(
            profile="quick", duration_s=5.0, warmup_s=1.0, step_rates=(2_000,),
            step_duration_s=3.0, prefill_rows=2_000, one_row_requests=100,
            thousand_row_requests=10, concurrency=4, concurrent_requests=400,
            concurrent_max_s=2.0, drain_timeout_s=60.0,
        )  # fmt: skip

    def rows_per_commit(self, rate: float, commits_per_s: int = BATCHED_COMMITS_PER_S) -> int:
        if self.insert_mode == "single":
            return 1
        if self.batch_rows:
            return self.batch_rows
        return max(1, round(rate / commits_per_s))

    def check(self) -> None:
        problems = []
        if self.rate <= 0:
            problems.append(f"--rate must be positive, got {self.rate}")
        if self.duration_s <= 0:
            problems.append(f"--duration must be positive, got {self.duration_s}")
        if self.insert_mode not in ("batched", "single"):
            problems.append(f"--insert-mode must be batched or single, got {self.insert_mode}")
        if self.batch_rows is not None and self.batch_rows < 1:
            problems.append(f"--batch must be at least 1, got {self.batch_rows}")
        if any(r <= 0 for r in self.step_rates):
            problems.append(f"--steps must all be positive, got {self.step_rates}")
        if self.prefill_rows < 1 or self.step_duration_s <= 0:
            problems.append("--prefill-rows and --step-duration must be positive")
        if self.concurrency < 1:
            problems.append(f"--concurrency must be at least 1, got {self.concurrency}")
        if problems:
            raise BenchError("; ".join(problems))


# --- Small pure helpers (unit-tested) ----------------------------------------------


def summarize(values: Sequence[float] | np.ndarray) -> dict[str, float | int | None]:
    """count, p50/p95/p99, max, mean and min of ``values`` (None when empty)."""
    array = np.asarray(values, dtype=np.float64)
    array = array[np.isfinite(array)]
    if array.size == 0:
        return {"count": 0, "p50": None, "p95": None, "p99": None, "max": None, "mean": None,
                "min": None}  # fmt: skip
    result: dict[str, float | int | None] = {"count": int(array.size)}
    for q in PERCENTILES:
        result[f"p{q}"] = round(float(np.percentile(array, q)), 3)
    result["max"] = round(float(array.max()), 3)
    result["mean"] = round(float(array.mean()), 3)
    result["min"] = round(float(array.min()), 3)
    return result


def settings_env(settings: Settings) -> dict[str, str]:
    """``settings`` as ``SML_*`` variables, so child processes see the same settings."""
    env: dict[str, str] = {}
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if value is None:
            continue
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif hasattr(value, "get_secret_value"):
            text = value.get_secret_value()
        else:
            text = str(value)
        env[f"SML_{name.upper()}"] = text
    return env


_LOAD_LINE = re.compile(
    r"inserted (?P<n>\d+) listings \(ids (?P<first>\d+)\.\.(?P<last>\d+)\) "
    r"in (?P<seconds>[\d.]+) s"
)


@dataclass(frozen=True)
class LoadReport:
    inserted: int
    first_id: int
    last_id: int
    seconds: float

    @property
    def rows_per_s(self) -> float:
        return self.inserted / self.seconds if self.seconds > 0 else float("inf")


def parse_load_output(text: str) -> LoadReport:
    """Read ``streaming-ml load``'s summary line."""
    match = _LOAD_LINE.search(text)
    if match is None:
        raise BenchError(
            f"cannot read the load generator's summary from its output {text.strip()[-300:]!r}; "
            "run `streaming-ml load --rows 10` by hand to see what it prints"
        )
    return LoadReport(
        inserted=int(match["n"]),
        first_id=int(match["first"]),
        last_id=int(match["last"]),
        seconds=float(match["seconds"]),
    )


@dataclass
class RowTimes:
    """Per-row stamps (epoch ms) of one run, as arrays aligned by row."""

    listing_id: np.ndarray
    source_ts: np.ndarray
    kafka_ts: np.ndarray
    received_ts: np.ndarray
    predicted_ts: np.ndarray
    model_ms: np.ndarray
    written_ts: np.ndarray
    topic_ts: np.ndarray  # NaN where the predictions topic had no record for the row

    @classmethod
    def from_rows(
        cls, rows: Sequence[Sequence[float]], topic_ts: Mapping[int, float] | None = None
    ) -> RowTimes:
        """``rows``: (listing_id, source_ts, kafka_ts, received_ts, predicted_ts,
        model_latency_ms, written_ms) tuples, as the SQL query returns them."""
        data = np.asarray(rows, dtype=np.float64).reshape(-1, 7)
        ids = data[:, 0].astype(np.int64)
        topic = topic_ts or {}
        return cls(
            listing_id=ids,
            source_ts=data[:, 1],
            kafka_ts=data[:, 2],
            received_ts=data[:, 3],
            predicted_ts=data[:, 4],
            model_ms=data[:, 5],
            written_ts=data[:, 6],
            topic_ts=np.array([topic.get(int(i), np.nan) for i in ids], dtype=np.float64),
        )

    def __len__(self) -> int:
        return int(self.listing_id.size)

    def stages(self) -> dict[str, np.ndarray]:
        call_started = self.predicted_ts - self.model_ms
        return {
            "commit_to_kafka": self.kafka_ts - self.source_ts,
            "kafka_to_bridge": self.received_ts - self.kafka_ts,
            "bridge_batching": call_started - self.received_ts,
            "model_call": self.model_ms,
            "bridge_to_topic": self.topic_ts - self.predicted_ts,
            "topic_to_table": self.written_ts - self.topic_ts,
            "end_to_end": self.written_ts - self.source_ts,
        }

    def stage_summary(self) -> dict[str, dict[str, float | int | None]]:
        return {name: summarize(values) for name, values in self.stages().items()}


def growth_verdict(commit_ts: np.ndarray, latency_ms: np.ndarray) -> tuple[bool, dict[str, Any]]:
    """Whether latency grew over a run: p95 of the last third of rows (by commit time)
    against the first third's."""
    order = np.argsort(commit_ts)
    ordered = latency_ms[order]
    third = max(1, ordered.size // 3)
    first = float(np.percentile(ordered[:third], 95))
    last = float(np.percentile(ordered[-third:], 95))
    limit = GROWTH_FACTOR * first + GROWTH_ALLOWANCE_MS
    return last <= limit, {
        "first_third_p95_ms": round(first, 1),
        "last_third_p95_ms": round(last, 1),
        "limit_ms": round(limit, 1),
    }


def check_targets(doc: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Each target with the measured figure and whether it is met (None: not measured)."""
    result: dict[str, dict[str, Any]] = {}
    for key, (op, target) in TARGETS.items():
        value: Any = doc
        for part in key.split("."):
            value = value.get(part) if isinstance(value, Mapping) else None
        met = None
        if isinstance(value, int | float):
            met = bool(value <= target if op == "<=" else value >= target)
        entry: dict[str, Any] = {"target": f"{op} {target:g}", "measured": value, "met": met}
        if key.startswith("latency_ms") and doc.get("rate_rows_per_s") != TARGET_RATE:
            entry["note"] = f"target is defined at {TARGET_RATE:g} rows/s"
        result[key] = entry
    return result


# --- Progress -------------------------------------------------------------------------


class Waiting:
    """A status line: what we wait for, how far it got, for how long and the limit.
    On a non-terminal (CI logs) it prints a line every few seconds instead."""

    def __init__(self, console: Console, what: str, timeout_s: float) -> None:
        self.console = console
        self.what = what
        self.timeout_s = timeout_s
        self.started = time.monotonic()
        self.deadline = self.started + timeout_s
        self._status: Any = None
        self._next_print = self.started + 5.0

    def __enter__(self) -> Waiting:
        self._status = self.console.status(self._text("starting"))
        self._status.__enter__()
        return self

    def _text(self, detail: str) -> str:
        elapsed = time.monotonic() - self.started
        return f"[bold]{self.what}[/]: {detail} ({elapsed:.0f}s, up to {self.timeout_s:.0f}s)"

    def update(self, detail: str) -> None:
        text = self._text(detail)
        self._status.update(text)
        now = time.monotonic()
        if not self.console.is_terminal and now >= self._next_print:
            self.console.print(text)
            self._next_print = now + 5.0

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def expired(self) -> bool:
        return time.monotonic() >= self.deadline

    def __exit__(self, exc_type: Any, *rest: Any) -> None:
        self._status.__exit__(exc_type, *rest)
        if exc_type is None:
            self.console.print(f"  [green]✓[/] {self.what} ({self.elapsed:.1f}s)")


# --- Kafka helpers -----------------------------------------------------------------------


def _consumer(settings: Settings, group: str | None = None) -> Any:
    from confluent_kafka import Consumer

    return Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": group or f"sml-bench-reader-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "client.id": "streaming-ml-bench",
            "log_level": 3,  # librdkafka's informational lines are noise here
        }
    )


def high_watermarks(consumer: Any, topic: str) -> dict[int, int] | None:
    """End offset per partition, or None when the topic does not exist yet."""
    from confluent_kafka import TopicPartition

    meta = consumer.list_topics(topic, timeout=15).topics.get(topic)
    if meta is None or meta.error is not None:
        return None
    return {
        p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=15, cached=False)[1]
        for p in meta.partitions
    }


def commit_offsets(settings: Settings, group: str, topic: str, offsets: Mapping[int, int]) -> None:
    """Make ``group`` start reading ``topic`` at ``offsets`` (a new group, nobody in it)."""
    from confluent_kafka import TopicPartition

    consumer = _consumer(settings, group)
    try:
        consumer.commit(
            offsets=[TopicPartition(topic, p, o) for p, o in offsets.items()], asynchronous=False
        )
    finally:
        consumer.close()


class LagProbe:
    """Consumer lag of a group (end offsets minus committed offsets) on one topic."""

    def __init__(self, settings: Settings, group: str, topic: str) -> None:
        self.topic = topic
        self._consumer = _consumer(settings, group)

    def lag(self) -> int | None:
        from confluent_kafka import TopicPartition

        ends = high_watermarks(self._consumer, self.topic)
        if ends is None:
            return None
        committed = self._consumer.committed(
            [TopicPartition(self.topic, p) for p in ends], timeout=10
        )
        total = 0
        for tp in committed:
            low, _ = self._consumer.get_watermark_offsets(tp, timeout=10, cached=True)
            at = tp.offset if tp.offset >= 0 else low
            total += max(0, ends[tp.partition] - at)
        return total

    def close(self) -> None:
        self._consumer.close()


def read_topic(
    settings: Settings,
    topic: str,
    start: Mapping[int, int],
    on_message: Callable[[Any], None],
    timeout_s: float,
    console: Console,
) -> int:
    """Read ``topic`` from ``start`` to its current end; call ``on_message`` for each."""
    from confluent_kafka import TopicPartition

    consumer = _consumer(settings)
    count = 0
    try:
        ends = high_watermarks(consumer, topic) or {}
        todo = {p: end for p, end in ends.items() if end > start.get(p, 0)}
        if not todo:
            return 0
        consumer.assign([TopicPartition(topic, p, start.get(p, 0)) for p in todo])
        total = sum(end - start.get(p, 0) for p, end in todo.items())
        with Waiting(console, f"reading {total} records back from {topic}", timeout_s) as wait:
            while todo:
                if wait.expired():
                    raise BenchError(
                        f"read only {count} of {total} records of {topic} in {timeout_s:.0f}s; "
                        "is Kafka overloaded? See `streaming-ml stack logs kafka`"
                    )
                for msg in consumer.consume(num_messages=5_000, timeout=1.0):
                    if msg.error() is not None:
                        continue
                    end = todo.get(msg.partition())
                    if end is None:
                        continue
                    if msg.offset() < end:
                        on_message(msg)
                        count += 1
                    if msg.offset() >= end - 1:
                        todo.pop(msg.partition(), None)
                wait.update(f"{count}/{total}")
    finally:
        consumer.close()
    return count


def use_log_append_time(settings: Settings, topics: Sequence[str]) -> dict[str, str]:
    """Have the broker stamp records of ``topics`` with their append time, so a record's
    timestamp is when it reached Kafka (data.PREDICTION_FIELDS: kafka_ts_ms is "appended
    to Kafka") rather than when a producer created it. Returns the previous types."""
    from confluent_kafka.admin import (
        AdminClient,
        AlterConfigOpType,
        ConfigEntry,
        ConfigResource,
        ResourceType,
    )

    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap, "log_level": 3})
    key = "message.timestamp.type"
    resources = [ConfigResource(ResourceType.TOPIC, t) for t in topics]
    previous = {}
    for resource, future in admin.describe_configs(resources).items():
        entries = future.result(timeout=15)
        previous[resource.name] = entries[key].value if key in entries else "unknown"
    changes = [
        ConfigResource(
            ResourceType.TOPIC,
            t,
            incremental_configs=[
                ConfigEntry(key, "LogAppendTime", incremental_operation=AlterConfigOpType.SET)
            ],
        )
        for t in topics
        if previous.get(t) != "LogAppendTime"
    ]
    if changes:
        for future in admin.incremental_alter_configs(changes).values():
            future.result(timeout=15)
    return previous


def group_ready(admin: Any, group: str) -> bool:
    """True when ``group`` is stable with at least one member (partitions assigned)."""
    from confluent_kafka import ConsumerGroupState

    try:
        description = admin.describe_consumer_groups([group], request_timeout=5)[group].result()
    except Exception as error:  # group not known yet is the normal "not ready"
        logger.debug("group not described", extra={"group": group, "error": str(error)})
        return False
    return description.state == ConsumerGroupState.STABLE and bool(description.members)


# --- Processes the bench runs ---------------------------------------------------------


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "streaming_ml.cli", *args]


class BridgeProcess:
    """``streaming-ml bridge`` as a child process in its own consumer group."""

    def __init__(
        self, settings: Settings, env: Mapping[str, str], group: str, log_dir: Path,
        once: bool = False,
    ) -> None:  # fmt: skip
        self.settings = settings
        self.env = dict(env)
        self.group = group
        self.once = once
        self.log_path = log_dir / f"bench-bridge-{group}.log"
        self.out_path = log_dir / f"bench-bridge-{group}.out"
        self.metrics_port = free_port(settings.host)
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        args = ["bridge", "--group", self.group, "--no-connectors"]
        args += ["--metrics-port", str(self.metrics_port)]
        if self.once:
            args.append("--once")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log, self.out_path.open("wb") as out:
            self._process = subprocess.Popen(
                _cli(*args), env=self.env, stdin=subprocess.DEVNULL, stdout=out, stderr=log,
                start_new_session=True,
            )  # fmt: skip
        logger.info("bench bridge started", extra={"group": self.group, "log": str(self.log_path)})

    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def failure(self, what: str) -> BenchError:
        code = self._process.poll() if self._process else None
        tail = self.log_path.read_text(errors="replace").splitlines()[-15:]
        return BenchError(
            f"the bench's bridge {what} (exit code {code}); last lines of {self.log_path}:\n"
            + "\n".join(tail)
        )

    def wait_ready(self, console: Console, timeout_s: float = 120.0) -> float:
        """Until the bridge serves metrics (set up) and, when the change topic exists,
        its consumer group is stable (partitions assigned). Before the first captured
        row there is no topic and so no assignment to wait for."""
        from confluent_kafka.admin import AdminClient

        s = self.settings
        admin = AdminClient({"bootstrap.servers": s.kafka_bootstrap, "log_level": 3})
        metrics = f"http://{s.host}:{self.metrics_port}/metrics"
        with Waiting(console, f"bridge joining consumer group {self.group}", timeout_s) as wait:
            while True:
                if not self.alive():
                    raise self.failure("exited while starting")
                if _http_ok(metrics, 1.0):
                    if group_ready(admin, self.group):
                        break
                    consumer = _consumer(s)
                    try:
                        topic_missing = high_watermarks(consumer, s.listings_topic) is None
                    finally:
                        consumer.close()
                    if topic_missing:
                        break
                    wait.update("set up; waiting for its partitions to be assigned")
                else:
                    wait.update("waiting for the bridge to set up")
                if wait.expired():
                    raise self.failure(f"did not join its consumer group in {timeout_s:.0f}s")
                time.sleep(0.25)
            return wait.elapsed

    def wait_exit(self, console: Console, timeout_s: float, what: str) -> dict[str, Any]:
        """Wait for a ``--once`` bridge to drain and exit; return its summary line."""
        assert self._process is not None
        with Waiting(console, what, timeout_s) as wait:
            while self._process.poll() is None:
                if wait.expired():
                    raise self.failure(f"did not finish draining in {timeout_s:.0f}s")
                wait.update("bridge draining the topic")
                time.sleep(0.25)
        if self._process.returncode != 0:
            raise self.failure("failed")
        text = self.out_path.read_text().strip().splitlines()
        self.out_path.unlink(missing_ok=True)
        try:
            return dict(json.loads(text[-1])) if text else {}
        except json.JSONDecodeError:
            return {"output": text[-1]}

    def stop(self, timeout_s: float = 30.0) -> None:
        process, self._process = self._process, None
        if not self.once:
            self.out_path.unlink(missing_ok=True)  # a long-running bridge prints only at exit
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            logger.warning("bench bridge ignored SIGTERM; killing it", extra={"pid": process.pid})
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


# --- The bench ------------------------------------------------------------------------------


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


def _http_ok(url: str, timeout_s: float = 2.0) -> bool:
    try:
        return requests.get(url, timeout=timeout_s).status_code == 200
    except requests.RequestException:
        return False


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
        self.bridge: BridgeProcess | None = None
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

        from streaming_ml import connect

        with Waiting(self.console, "registering connectors", 120.0):
            connect.ensure_connectors(s)

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
        from streaming_ml.serving import ServiceProcess

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
        """A bridge in a fresh consumer group that starts at the change topic's end, so
        a backlog left by earlier runs is not measured."""
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
        self.bridge = BridgeProcess(s, self.child_env, group, self.log_dir)
        self.bridge.start()
        cleanup.callback(self._stop_bridge)
        self.bridge.wait_ready(self.console)
        self.env.started.append("bridge")
        self.env.bridge_group = group
        self.env.startup_s["bridge"] = round(time.monotonic() - began, 1)

    def _stop_bridge(self) -> None:
        if self.bridge is not None:
            self.bridge.stop()
            self.bridge = None

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
                    time.sleep(0.5)
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

    def _count_sql(self) -> str:
        s = self.settings
        return (
            f"SELECT (SELECT count(*) FROM public.{s.listings_table} WHERE id BETWEEN %(a)s AND "
            f"%(b)s), (SELECT count(*) FROM public.{s.predictions_table} WHERE listing_id "
            "BETWEEN %(a)s AND %(b)s)"
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
                    time.sleep(0.25)
        finally:
            conn.close()

    def _pipeline_hint(self) -> str:
        s = self.settings
        states = []
        for name in (s.source_connector, s.sink_connector):
            try:
                body = requests.get(f"{s.connect_url}/connectors/{name}/status", timeout=5).json()
                tasks = ",".join(t.get("state", "?") for t in body.get("tasks", []))
                states.append(f"{name}: {body.get('connector', {}).get('state')} tasks [{tasks}]")
            except (requests.RequestException, ValueError):
                states.append(f"{name}: status not available")
        where = self.bridge.log_path if self.bridge else "the running bridge's log"
        return (
            f"connectors: {'; '.join(states)}. Check {where}, `streaming-ml stack logs connect` "
            f"and the DLQ topic {s.dlq_topic}"
        )

    def fetch_rows(self, report: LoadReport) -> list[tuple[float, ...]]:
        """Every stamp of every row of a run, in one query."""
        import psycopg2

        s = self.settings
        query = (
            "SELECT listing_id, source_ts_ms, kafka_ts_ms, bridge_received_ts_ms, "
            "predicted_ts_ms, model_latency_ms, "
            "extract(epoch FROM written_at)::float8 * 1000 "
            f"FROM public.{s.predictions_table} WHERE listing_id BETWEEN %s AND %s"
        )
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

        from streaming_ml import serde

        s = self.settings
        decode = serde.writer_schema_deserializer(serde.registry_client(s.registry_url))
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
        self, rate: float, duration_s: float, label: str, commits_per_s: int = BATCHED_COMMITS_PER_S
    ) -> dict[str, Any]:
        """Insert at ``rate`` for ``duration_s`` from the load generator; read every row's
        stamps back; return figures (and keep the per-row series for the plot)."""
        o, s = self.options, self.settings
        rows = max(1, round(rate * duration_s))
        batch = o.rows_per_commit(rate, commits_per_s)
        # Other work on the machine skews every figure: record how busy it was.
        load_before = round(os.getloadavg()[0], 2)
        pred_start = self._topic_ends(s.predictions_topic)
        lag = LagProbe(s, self.env.bridge_group or s.consumer_group, s.listings_topic)
        try:
            report, lag_load = self.load(
                rows, rate, batch, f"{label}: {rows} rows at {rate:g} rows/s", lag
            )
            inserted_at = time.time() * 1000
            count, lag_drain = self.wait_predicted(report, o.drain_timeout_s, lag)
        finally:
            lag.close()
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
        }
        self.series[label] = {"times": times, "lag": lag_samples}
        return result

    def latency_run(self) -> dict[str, Any]:
        o = self.options
        self.console.rule(f"[bold]latency run: {o.rate:g} rows/s for {o.duration_s:g}s")
        return self.timed_run(o.rate, o.duration_s, "latency")

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
                    f"(max lag {step['max_consumer_lag']})"
                )
                break
            if not step["latency_not_growing"]:
                g = step["latency_growth"]
                why = (
                    f"fell behind at {rate:g} rows/s: p95 latency grew from "
                    f"{g['first_third_p95_ms']:.0f} ms to {g['last_third_p95_ms']:.0f} ms "
                    f"within the step (max lag {step['max_consumer_lag']})"
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

    def bridge_only_run(self) -> dict[str, Any]:
        """Pre-fill the change topic with no bench bridge running, then time a bridge in a
        new consumer group draining it (bridge + model, no Debezium in the way)."""
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
                time.sleep(0.25)
            capture_s = wait.elapsed
        group = f"sml-bench-prefill-{uuid.uuid4().hex[:8]}"
        commit_offsets(s, group, s.listings_topic, change_start)
        pred_start = self._topic_ends(s.predictions_topic)
        began = time.monotonic()
        bridge = BridgeProcess(s, self.child_env, group, self.log_dir, once=True)
        bridge.start()
        try:
            summary = bridge.wait_exit(
                self.console, 300.0, f"bridge (group {group}) draining {o.prefill_rows} events"
            )
        finally:
            bridge.stop()
        wall_s = time.monotonic() - began
        found = self.prediction_topic_times(pred_start, report.first_id, report.last_id, True)
        if len(found) != o.prefill_rows:
            raise BenchError(
                f"the drained bridge produced {len(found)} predictions for {o.prefill_rows} "
                f"rows; see {bridge.log_path}"
            )
        appended = np.array([ts for ts, _ in found.values()])
        received = np.array([v["bridge_received_ts_ms"] for _, v in found.values()], dtype=float)
        span_s = (appended.max() - received.min()) / 1000
        return {
            "rows": o.prefill_rows,
            "predictions": len(found),
            "bridge_summary": summary,
            "first_read_to_last_append_s": round(span_s, 3),
            "bridge_rows_per_s": round(len(found) / span_s, 1) if span_s > 0 else None,
            "bridge_process_wall_s": round(wall_s, 2),
            "wall_rows_per_s_incl_startup": round(len(found) / wall_s, 1),
            "prefill_load_generator_rows_per_s": round(report.rows_per_s, 1),
            "prefill_capture_wait_s": round(capture_s, 2),
            "model_call_ms": summarize([v["model_latency_ms"] for _, v in found.values()]),
        }

    def serving_run(self) -> dict[str, Any]:
        o = self.options
        self.console.rule("[bold]serving run: /predict")
        url = self.settings.prediction_url.rstrip("/")
        one = _body(_columns(1, self._next_seed()), 1)
        thousand = _body(_columns(1_000, self._next_seed()), 1_000)
        batch = _body({"records": _records(500, self._next_seed())}, 500)
        result: dict[str, Any] = {
            "url": url,
            "client": "http.client keep-alive, bodies pre-encoded (measures the service, "
            "not a client library)",
        }
        with contextlib.closing(HttpClient(url)) as client:
            for body in (one, thousand, batch):  # warm up the connection and the model
                for _ in range(3):
                    client.post("/predict_batch" if body is batch else "/predict", *body)
            result["predict_one_row_ms"] = self._timed_requests(
                client, "/predict", one, o.one_row_requests, "/predict, 1 row"
            )
            result["predict_1000_rows_ms"] = self._timed_requests(
                client, "/predict", thousand, o.thousand_row_requests, "/predict, 1000 rows"
            )
            result["predict_batch_500_records_ms"] = self._timed_requests(
                client, "/predict_batch", batch, o.thousand_row_requests,
                "/predict_batch, 500 records",
            )  # fmt: skip
        result["concurrent_one_row"] = self._concurrent(url, one)
        return result

    def _timed_requests(
        self, client: HttpClient, path: str, body: tuple[bytes, int], count: int, what: str
    ) -> dict[str, Any]:
        times = []
        with Waiting(self.console, f"{count} requests {what}", 300.0) as wait:
            for i in range(count):
                began = time.perf_counter()
                client.post(path, *body)
                times.append((time.perf_counter() - began) * 1000)
                if i % 10 == 0:
                    wait.update(f"{i}/{count}")
                if wait.expired():
                    break
        return summarize(times)

    def _concurrent(self, url: str, body: tuple[bytes, int]) -> dict[str, Any]:
        o = self.options
        lock = threading.Lock()
        issued = 0
        times: list[float] = []
        errors: list[str] = []
        stop_at = time.monotonic() + o.concurrent_max_s

        def worker() -> None:
            nonlocal issued
            with contextlib.closing(HttpClient(url)) as client:
                while time.monotonic() < stop_at:
                    with lock:
                        if issued >= o.concurrent_requests:
                            return
                        issued += 1
                    began = time.perf_counter()
                    try:
                        client.post("/predict", *body)
                    except BenchError as error:
                        errors.append(str(error))
                        continue
                    elapsed = (time.perf_counter() - began) * 1000
                    with lock:
                        times.append(elapsed)

        what = f"{o.concurrency} threads, up to {o.concurrent_requests} requests"
        with Waiting(self.console, f"/predict 1 row, {what}", o.concurrent_max_s + 30):
            began = time.monotonic()
            with ThreadPoolExecutor(o.concurrency) as pool:
                for future in [pool.submit(worker) for _ in range(o.concurrency)]:
                    future.result()
            wall = time.monotonic() - began
        return {
            "threads": o.concurrency,
            "requests": len(times),
            "errors": len(errors),
            "first_error": errors[0] if errors else None,
            "seconds": round(wall, 3),
            "requests_per_s": round(len(times) / wall, 1) if wall > 0 else None,
            "latency_ms": summarize(times),
        }


class HttpClient:
    """One keep-alive HTTP/1.1 connection. python-requests added 1-5 ms per call on
    this box, which would be measured as service latency."""

    def __init__(self, base_url: str, timeout_s: float = 30.0) -> None:
        parsed = urlparse(base_url)
        self.base_url = base_url
        self._connection = http.client.HTTPConnection(
            parsed.hostname or "127.0.0.1", parsed.port or 80, timeout=timeout_s
        )

    def post(self, path: str, body: bytes, rows: int) -> None:
        """POST a JSON body; raise BenchError unless the answer is a list of ``rows``."""
        url = self.base_url + path
        try:
            self._connection.request(
                "POST", path, body=body, headers={"Content-Type": "application/json"}
            )
            response = self._connection.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException) as error:
            self._connection.close()  # reconnects on the next request
            raise BenchError(f"POST {url} failed: {error}; is the service up?") from error
        if response.status != 200:
            raise BenchError(f"POST {url} answered {response.status}: {data[:300]!r}")
        answer = json.loads(data)
        if not isinstance(answer, list) or len(answer) != rows:
            raise BenchError(f"POST {url} answered {str(answer)[:200]} for {rows} rows")

    def close(self) -> None:
        self._connection.close()


def _body(payload: Any, rows: int) -> tuple[bytes, int]:
    return json.dumps(payload).encode(), rows


def _columns(rows: int, seed: int) -> dict[str, list[Any]]:
    from streaming_ml.data import FEATURES, generate_listings

    frame = generate_listings(rows, seed)
    return {name: frame[name].tolist() for name in FEATURES}


def _records(rows: int, seed: int) -> list[dict[str, Any]]:
    from streaming_ml.data import FEATURES, generate_listing_records

    return [{n: r[n] for n in FEATURES} for r in generate_listing_records(rows, seed)]


# --- Environment facts ----------------------------------------------------------------


def machine_facts() -> dict[str, Any]:
    facts: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_average_1m_at_start": round(os.getloadavg()[0], 2),
    }
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                facts["memory_gib"] = round(int(line.split()[1]) / 1024**2, 1)
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                facts["cpu_model"] = line.split(":", 1)[1].strip()
                break
    return facts


def component_versions(settings: Settings, dsn: str) -> dict[str, Any]:
    """Versions of the Python libraries and of every running component (best effort:
    a component that does not answer is reported as such, not guessed)."""
    import confluent_kafka

    versions: dict[str, Any] = {"python_libraries": {}}
    for name in LIBRARIES:
        try:
            versions["python_libraries"][name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions["python_libraries"][name] = None
    versions["librdkafka"] = confluent_kafka.libversion()[0]

    def get(url: str) -> Any:
        try:
            return requests.get(url, timeout=5).json()
        except (requests.RequestException, ValueError):
            return None

    connect_info = get(settings.connect_url + "/") or {}
    versions["kafka_connect"] = connect_info.get("version")
    plugins = get(settings.connect_url + "/connector-plugins") or []
    versions["connector_plugins"] = {
        p.get("class", "?").rsplit(".", 1)[-1]: p.get("version")
        for p in plugins
        if "debezium" in p.get("class", "")
    }
    registry = get(f"http://{settings.host}:{settings.registry_port}/apis/registry/v3/system/info")
    versions["apicurio_registry"] = (registry or {}).get("version")
    try:
        import psycopg2

        with (
            contextlib.closing(psycopg2.connect(dsn, connect_timeout=5)) as conn,
            conn.cursor() as cur,
        ):
            cur.execute("SHOW server_version")
            versions["postgres"] = cur.fetchone()[0]
    except Exception as error:  # reported, not fatal: the figures do not depend on it
        versions["postgres"] = f"unknown ({type(error).__name__})"
    try:
        java = subprocess.run(["java", "-version"], capture_output=True, text=True, timeout=15)
        versions["java"] = (java.stderr or java.stdout).splitlines()[0]
    except (OSError, subprocess.TimeoutExpired, IndexError):
        versions["java"] = None
    model_info = get(settings.prediction_url.rstrip("/") + "/model_info")
    if model_info is None:
        with contextlib.suppress(requests.RequestException, ValueError):
            answer = requests.post(settings.prediction_url.rstrip("/") + "/model_info", timeout=5)
            model_info = answer.json()
    versions["model_tag"] = (model_info or {}).get("tag")
    return versions


def pipeline_settings(settings: Settings) -> dict[str, Any]:
    """The knobs that shape the figures: bridge batching and both connector configs."""
    configs = {}
    for name in (settings.source_connector, settings.sink_connector):
        try:
            configs[name] = requests.get(
                f"{settings.connect_url}/connectors/{name}/config", timeout=5
            ).json()
        except (requests.RequestException, ValueError):
            configs[name] = None
    for config in configs.values():
        if isinstance(config, dict):
            for key in list(config):
                if "password" in key.lower():
                    config[key] = "***"
    return {
        "bridge_batch_max_events": settings.batch_max_events,
        "bridge_batch_linger_ms": settings.batch_linger_ms,
        "request_timeout_s": settings.request_timeout_s,
        "connectors": configs,
    }


# --- Entry point ----------------------------------------------------------------------


def run_bench(
    settings: Settings,
    options: BenchOptions,
    *,
    out: Path | None = None,
    plot: Path | None = None,
    console: Console | None = None,
    command: str | None = None,
) -> dict[str, Any]:
    """Run the selected runs and return the figures as one JSON-ready document
    (also written to ``out`` and plotted to ``plot`` when given).

    A run that fails is recorded under ``errors``; the document is still written,
    then BenchError is raised so the exit code says the bench did not complete.
    """
    options.check()
    console = console or Console(stderr=True, highlight=False)
    bench = Bench(settings, options, console)
    started_at = datetime.now(UTC)
    began = time.monotonic()
    doc: dict[str, Any] = {
        "bench": {
            "profile": options.profile,
            "started_at": started_at.isoformat(),
            "command": command,
        },
        "rate_rows_per_s": options.rate if options.run_latency else None,
        "latency_ms": None,
        "stages": None,
        "max_sustained_rows_per_s": None,
        "bridge_rows_per_s": None,
        "predict_one_row_ms_p50": None,
        "predict_1000_rows_ms_p50": None,
        "options": {k: v for k, v in asdict(options).items()},
        "machine": machine_facts(),
        "errors": [],
    }
    with ExitStack() as cleanup:
        try:
            prep_began = time.monotonic()
            bench.prepare(cleanup)
            doc["environment"] = asdict(bench.env)
            doc["environment"]["prepare_s"] = round(time.monotonic() - prep_began, 1)
            doc["versions"] = component_versions(bench.settings, bench.dsn)
            doc["settings"] = pipeline_settings(bench.settings)
            runs_began = time.monotonic()
            _run_all(bench, doc)
            doc["bench"]["runs_s"] = round(time.monotonic() - runs_began, 1)
        except StreamingMLError as error:
            doc["errors"].append(f"setup: {error}")
        finally:
            doc.setdefault("environment", asdict(bench.env))
            doc["environment"]["stopped_at_end"] = list(reversed(bench.env.started))
    doc["targets"] = check_targets(doc)
    doc["bench"]["finished_at"] = datetime.now(UTC).isoformat()
    doc["bench"]["wall_s"] = round(time.monotonic() - began, 1)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(doc, indent=2, default=str) + "\n")
        console.print(f"figures written to {out}")
    if plot is not None:
        plot_bench(doc, bench.series, plot)
        console.print(f"plot written to {plot}")
    print_summary(doc, console)
    if doc["errors"]:
        raise BenchError(
            "the bench did not complete: "
            + " | ".join(doc["errors"])
            + (f" (partial figures in {out})" if out else "")
        )
    return doc


def _run_all(bench: Bench, doc: dict[str, Any]) -> None:
    o = bench.options
    if o.run_serving:
        try:
            serving = bench.serving_run()
            doc["serving"] = serving
            doc["predict_one_row_ms_p50"] = serving["predict_one_row_ms"]["p50"]
            doc["predict_1000_rows_ms_p50"] = serving["predict_1000_rows_ms"]["p50"]
        except StreamingMLError as error:
            doc["errors"].append(f"serving run: {error}")
    if not (o.run_latency or o.run_throughput):
        return
    try:
        bench.console.rule("[bold]warm-up")
        doc["warm_up"] = bench.warm_up()
    except StreamingMLError as error:
        doc["errors"].append(f"warm-up (pipeline not working end to end): {error}")
        return
    if o.run_latency:
        try:
            run = bench.latency_run()
            doc["latency_run"] = run
            doc["latency_ms"] = {k: run["latency_ms"][k] for k in ("p50", "p95", "p99", "max")}
            doc["stages"] = run["stages"]
        except StreamingMLError as error:
            doc["errors"].append(f"latency run: {error}")
            return
    if o.run_throughput:
        try:
            steps, best, why = bench.throughput_steps()
            doc["throughput_steps"] = steps
            doc["max_sustained_rows_per_s"] = best
            doc["max_sustained_bound"] = why
        except StreamingMLError as error:
            doc["errors"].append(f"throughput steps: {error}")
        try:
            run = bench.bridge_only_run()
            doc["bridge_run"] = run
            doc["bridge_rows_per_s"] = run["bridge_rows_per_s"]
        except StreamingMLError as error:
            doc["errors"].append(f"bridge-only run: {error}")


def print_summary(doc: Mapping[str, Any], console: Console) -> None:
    from rich.table import Table

    table = Table(title=f"streaming-ml bench ({doc['bench']['profile']})")
    table.add_column("figure")
    table.add_column("measured", justify="right")
    table.add_column("target", justify="right")
    table.add_column("met", justify="center")
    for key, entry in doc.get("targets", {}).items():
        value = entry["measured"]
        shown = f"{value:,.1f}" if isinstance(value, int | float) else "—"
        met = {True: "[green]yes", False: "[red]no", None: "—"}[entry["met"]]
        table.add_row(key, shown, entry["target"], met)
    console.print(table)
    for error in doc.get("errors", []):
        console.print(f"[red]error:[/] {error}")


# --- Plot -----------------------------------------------------------------------------


def _second_bins(t_s: np.ndarray, values: np.ndarray, q: float) -> tuple[np.ndarray, np.ndarray]:
    """Percentile ``q`` of ``values`` per whole second of ``t_s``."""
    seconds = np.floor(t_s).astype(int)
    xs, ys = [], []
    for sec in np.unique(seconds):
        chosen = values[seconds == sec]
        if chosen.size:
            xs.append(sec + 0.5)
            ys.append(np.percentile(chosen, q))
    return np.asarray(xs), np.asarray(ys)


def plot_bench(doc: Mapping[str, Any], series: Mapping[str, Any], path: Path) -> None:
    """One PNG: latency over time, per-stage percentiles, throughput steps, serving."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(15, 10), dpi=100)
    profile = doc["bench"]["profile"]
    fig.suptitle(
        f"streaming-ml bench ({profile}) — {doc['bench'].get('started_at', '')[:19]} UTC, "
        f"{doc['machine'].get('cpu_count')} cores", fontsize=13,
    )  # fmt: skip

    ax = axes[0][0]
    latency = series.get("latency")
    if latency is not None and len(latency["times"]):
        times: RowTimes = latency["times"]
        start = times.source_ts.min()
        t_s = (times.source_ts - start) / 1000
        e2e = times.stages()["end_to_end"]
        ax.scatter(t_s, e2e, s=3, alpha=0.25, color="tab:blue", label="each row")
        for q, colour in ((50, "tab:green"), (99, "tab:red")):
            xs, ys = _second_bins(t_s, e2e, q)
            ax.plot(xs, ys, color=colour, linewidth=2, label=f"p{q} per second")
        ax.set_yscale("log")
        ax.set_xlabel("seconds since the first commit")
        ax.set_ylabel("commit → prediction row written (ms)")
        run = doc.get("latency_run", {})
        ax.set_title(
            f"End-to-end latency at {run.get('offered_rows_per_s', 0):g} rows/s "
            f"({run.get('insert_mode')}, {run.get('rows_per_commit')} rows/commit)"
        )
        if latency["lag"]:
            lag_t = (np.array([t for t, _ in latency["lag"]]) - start) / 1000
            twin = ax.twinx()
            twin.plot(lag_t, [v for _, v in latency["lag"]], color="tab:gray",
                      linestyle="--", label="consumer lag")  # fmt: skip
            twin.set_ylabel("consumer lag (events)", color="tab:gray")
            twin.legend(loc="upper right")
        ax.legend(loc="upper left")
        ax.grid(True, which="both", alpha=0.3)
    else:
        _empty(ax, "latency run not measured")

    ax = axes[0][1]
    stages = doc.get("stages")
    if stages:
        names = [name for name, _ in STAGES if stages.get(name, {}).get("count")]
        y = np.arange(len(names))
        for offset, (q, colour) in zip(
            (-0.27, 0.0, 0.27),
            ((50, "tab:green"), (95, "tab:orange"), (99, "tab:red")),
            strict=True,
        ):
            values = [max(stages[n][f"p{q}"] or 0.0, 0.01) for n in names]
            ax.barh(y + offset, values, height=0.25, color=colour, label=f"p{q}")
            for yy, v in zip(y + offset, values, strict=True):
                ax.text(v, yy, f" {v:.1f}", va="center", fontsize=7)
        ax.set_yticks(y, names)
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.set_xlabel("ms (log scale)")
        ax.set_title("Latency per stage (latency run)")
        low, high = ax.get_xlim()
        ax.set_xlim(low, high * 4)  # room for the value labels and the legend
        ax.legend(loc="upper right")
        ax.grid(True, axis="x", which="both", alpha=0.3)
    else:
        _empty(ax, "no stage breakdown")

    ax = axes[1][0]
    steps = [s for s in doc.get("throughput_steps") or [] if "commit_rows_per_s" in s]
    if steps:
        x = np.arange(len(steps))
        offered = [s["offered_rows_per_s"] for s in steps]
        ax.bar(x - 0.2, offered, width=0.4, color="tab:gray", label="offered")
        ax.bar(x + 0.2, [s["commit_rows_per_s"] or 0 for s in steps], width=0.4,
               color=["tab:green" if s["kept_up"] else "tab:red" for s in steps],
               label="committed (green: kept up)")  # fmt: skip
        ax.set_xticks(x, [f"{r:g}" for r in offered])
        ax.set_xlabel("offered rate (rows/s)")
        ax.set_ylabel("rows/s")
        bridge = doc.get("bridge_rows_per_s")
        if bridge:
            ax.axhline(
                bridge, color="tab:purple", linestyle=":", label=f"bridge only {bridge:,.0f}"
            )
        twin = ax.twinx()
        twin.plot(x, [s["latency_ms"]["p99"] for s in steps], "o-", color="tab:red",
                  label="p99 latency")  # fmt: skip
        twin.set_ylabel("p99 commit → row (ms)", color="tab:red")
        best = doc.get("max_sustained_rows_per_s")
        ax.set_title(f"Throughput steps — max sustained {best or 0:,.0f} rows/s")
        ax.legend(loc="upper left")
        ax.grid(True, axis="y", alpha=0.3)
    else:
        _empty(ax, "throughput steps not measured")

    ax = axes[1][1]
    serving = doc.get("serving")
    if serving:
        names = [("predict_one_row_ms", "/predict 1 row"),
                 ("predict_1000_rows_ms", "/predict 1000 rows"),
                 ("predict_batch_500_records_ms", "/predict_batch 500")]  # fmt: skip
        conc = serving["concurrent_one_row"]
        rows = [(label, serving[key]) for key, label in names]
        rows.append((f"1 row, {conc['threads']} threads", conc["latency_ms"]))
        x = np.arange(len(rows))
        for offset, (q, colour) in zip(
            (-0.27, 0.0, 0.27),
            ((50, "tab:green"), (95, "tab:orange"), (99, "tab:red")),
            strict=True,
        ):
            values = [r[f"p{q}"] or 0.0 for _, r in rows]
            ax.bar(x + offset, values, width=0.25, color=colour, label=f"p{q}")
            for xx, v in zip(x + offset, values, strict=True):
                ax.text(xx, v, f"{v:.1f}", ha="center", va="bottom", fontsize=7)
        ax.set_xticks(x, [label for label, _ in rows], fontsize=8)
        ax.set_yscale("log")
        ax.set_ylabel("ms (log scale)")
        ax.set_title(f"Serving latency — {conc['requests_per_s']:,.0f} req/s with "
                     f"{conc['threads']} threads")  # fmt: skip
        ax.legend(loc="upper left")
        ax.grid(True, axis="y", which="both", alpha=0.3)
    else:
        _empty(ax, "serving run not measured")

    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def _empty(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="gray")
    ax.set_axis_off()


__all__ = [
    "BenchOptions",
    "RowTimes",
    "check_targets",
    "growth_verdict",
    "parse_load_output",
    "plot_bench",
    "run_bench",
    "settings_env",
    "summarize",
]
