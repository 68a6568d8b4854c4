"""Helpers for the end-to-end bridge tests: run a bridge, read tables and topics back.

Every wait here polls a real component until a condition holds or a deadline passes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.extras
import requests
from confluent_kafka import Consumer
from confluent_kafka.serialization import MessageField, SerializationContext
from rich.console import Console

from streaming_ml.bench.kafka import commit_offsets, high_watermarks
from streaming_ml.bench.kafka import read_topic as bench_read_topic
from streaming_ml.bridge import Bridge
from streaming_ml.config import REPO_ROOT, Settings
from streaming_ml.datasets import predictions
from streaming_ml.schema import avro
from streaming_ml.schema.listing import FEATURES, features_hash
from streaming_ml.service.launcher import ServiceProcess
from tests.fixtures.ports import free_port

PRICED_WITHIN_S = 240.0


def restartable_service(
    settings: Settings, model_tag: str, log_path: Path
) -> Callable[[], ServiceProcess]:
    """Starts the prediction service, again and again on the same port: an outage test
    stops it and brings it back where the bridge expects it."""
    port = free_port()

    def start() -> ServiceProcess:
        service = ServiceProcess(
            host=settings.host, port=port, model_tag=model_tag, log_path=log_path
        )
        service.start()
        return service

    return start


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def pipeline_settings(stack_settings: Settings, service_url: str, **update: Any) -> Settings:
    """The running stack plus a service, a fresh consumer group and a free metrics port."""
    return stack_settings.model_copy(
        update={
            "service_url": service_url,
            "consumer_group": unique("test-bridge"),
            "bridge_metrics_port": free_port(),
            **update,
        }
    )


def settings_env(settings: Settings) -> dict[str, str]:
    """This environment plus ``settings`` as SML_* variables, for a bridge run as a
    subprocess (the bench's conversion, so both spell the settings the same way)."""
    from streaming_ml.bench import settings_env as sml_variables

    return {**os.environ, **sml_variables(settings)}


def dsn_of(settings: Settings) -> str:
    from streaming_ml.stack import postgres_dsn

    return postgres_dsn(settings)


def start_group_at_end(settings: Settings) -> None:
    """Commit the change topic's current end for the settings' consumer group, so a
    test's bridge sees only the changes that test makes."""
    topic = settings.listings_topic
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": "sml-probe"})
    try:
        ends = high_watermarks(consumer, topic)
    finally:
        consumer.close()
    if ends is not None:  # no topic yet: the group starts at the beginning, which is empty
        commit_offsets(settings, settings.consumer_group, topic, ends)


@dataclass
class RunningBridge:
    bridge: Bridge
    thread: threading.Thread
    errors: list[BaseException]

    def metric(self, name: str) -> float:
        return bridge_metric(self.bridge.settings, name)


def bridge_metric(settings: Settings, name: str) -> float:
    """Sum of a metric's samples as a bridge serves them on /metrics."""
    url = f"http://{settings.host}:{settings.bridge_metrics_port}/metrics"
    text = requests.get(url, timeout=5).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def bridge_metric_or_none(settings: Settings, name: str) -> float | None:
    """Like bridge_metric, None while the bridge is not serving yet."""
    try:
        return bridge_metric(settings, name)
    except requests.RequestException:
        return None


@contextmanager
def running_bridge(
    settings: Settings,
    ready_timeout_s: float = 120,
    from_end: bool = True,
    watch_connectors: bool = False,
) -> Iterator[RunningBridge]:
    """An in-process bridge in a thread; stopped (batch finished, committed) on exit.
    ``from_end``: first move the consumer group to the topic's current end.
    ``watch_connectors``: run the connector watchdog while owning partition 0, as
    ``streaming-ml bridge --apply-connectors`` does."""
    if from_end:
        start_group_at_end(settings)
    bridge = Bridge(settings, watch_connectors=watch_connectors)
    errors: list[BaseException] = []
    with in_thread(
        "test-bridge", bridge.run, bridge.ready, bridge.stop, ready_timeout_s, errors
    ) as thread:
        yield RunningBridge(bridge, thread, errors)


@contextmanager
def in_thread(
    name: str,
    run: Callable[[], Any],
    ready: threading.Event,
    stop: Callable[[], None],
    ready_timeout_s: float = 120,
    errors: list[BaseException] | None = None,
) -> Iterator[threading.Thread]:
    """``run`` in a daemon thread until ``ready``; on exit ``stop``, join, and raise what
    ``run`` raised (a failure to start sets ``ready`` so nobody waits for nothing).
    ``errors`` receives what ``run`` raises as it happens, for checks mid-test."""
    errors = errors if errors is not None else []

    def target() -> None:
        try:
            run()
        except BaseException as error:
            errors.append(error)
            ready.set()

    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    assert ready.wait(ready_timeout_s), f"{name} did not start"
    if errors:
        raise errors[0]
    try:
        yield thread
    finally:
        stop()
        thread.join(timeout=60)
        assert not thread.is_alive(), f"{name} did not stop within 60 s"
    if errors:
        raise errors[0]


def start_bridge_process(
    settings: Settings, log: Path, state_dir: Path | None = None, own_port: bool = True
) -> subprocess.Popen[bytes]:
    """``streaming-ml bridge`` as a child process; ``own_port``: on a free metrics port
    rather than the settings' one. ``state_dir`` replaces the stack's (and so hides its
    database passwords from the bridge)."""
    update: dict[str, Any] = {"bridge_metrics_port": free_port()} if own_port else {}
    if state_dir is not None:
        update["state_dir"] = state_dir
    own = settings.model_copy(update=update)
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "streaming_ml.cli", "bridge"],
            cwd=REPO_ROOT, env=settings_env(own), stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip


def stop_processes(processes: list[subprocess.Popen[bytes]], timeout_s: float = 60) -> None:
    """SIGTERM to every one still running, then wait for each (SIGKILL after ``timeout_s``):
    a test's bridges stopped together, so their group rebalances once."""
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)


def query(dsn: str, sql: str, params: Any = None) -> list[dict[str, Any]]:
    with (
        psycopg2.connect(dsn) as conn,
        conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur,
    ):
        cur.execute(sql, params)
        rows = [dict(r) for r in cur.fetchall()] if cur.description else []
    conn.close()
    return rows


def execute(dsn: str, sql: str, params: Any = None) -> None:
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(sql, params)
    conn.close()


def predictions_for(dsn: str, table: str, ids: list[int]) -> dict[int, dict[str, Any]]:
    with psycopg2.connect(dsn) as conn:
        rows = predictions.read_predictions(conn, table, ids)
    conn.close()
    return rows


def settled(dsn: str, settings: Settings, ids: list[int]) -> dict[int, dict]:
    """Prediction rows once every live listing's row carries its current features hash
    and no deleted listing has a row; {} (falsy) until then."""
    rows = listings(dsn, settings.listings_table, ids)
    predictions = predictions_for(dsn, settings.predictions_table, ids)
    if set(predictions) != set(rows):
        return {}
    if any(predictions[i]["features_hash"] != features_hash(rows[i]) for i in rows):
        return {}
    return predictions


def wait_until(
    condition: Callable[[], Any],
    timeout_s: float,
    what: str,
    interval_s: float = 0.25,
    explain: Callable[[], str] | None = None,
) -> Any:
    """Poll ``condition`` until it returns something truthy; fail with ``what`` at the
    deadline, plus what ``explain`` finds then (where the missing work is stuck)."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() >= deadline:
            message = f"timed out after {timeout_s:.0f}s waiting for {what}"
            if explain is not None:
                message += f"; {explain()}"
            raise AssertionError(message)
        time.sleep(interval_s)


def where_stuck(settings: Settings, dsn: str, ids: list[int]) -> str:
    """Where the listings without a current prediction row are: on the change topic, on
    the predictions topic, and what the connectors and consumer groups say. A timed-out
    fault test reports this, so a CI failure names the stuck hop."""
    from streaming_ml.bench.kafka import LagProbe
    from streaming_ml.connect import commands

    rows = listings(dsn, settings.listings_table, ids)
    predictions = predictions_for(dsn, settings.predictions_table, ids)
    stale = {
        i
        for i in rows
        if i not in predictions or predictions[i]["features_hash"] != features_hash(rows[i])
    }
    ghosts = set(predictions) - set(rows)
    parts = [f"{len(stale)} listings without a current prediction row, e.g. {sorted(stale)[:5]}"]
    if ghosts:
        parts.append(f"{len(ghosts)} rows of deleted listings, e.g. {sorted(ghosts)[:5]}")
    try:
        changes = {r.key["id"] for r in read_topic(settings, settings.listings_topic, False)}
        priced = {
            r.key["listing_id"] for r in read_topic(settings, settings.predictions_topic, False)
        }
        parts.append(
            f"of those on the change topic: {len(stale & changes)}, "
            f"on the predictions topic: {len(stale & priced)}"
        )
    except Exception as error:  # the diagnosis must not hide the timeout
        parts.append(f"topics unreadable: {error}")
    for group, topic in (
        (settings.consumer_group, settings.listings_topic),
        (f"connect-{settings.sink_connector}", settings.predictions_topic),
    ):
        probe = LagProbe(settings, group, topic)
        try:
            parts.append(f"lag of {group}: {probe.lag()}")
        except Exception as error:
            parts.append(f"lag of {group} unknown: {error}")
        finally:
            probe.close()
    try:
        parts.append(f"connectors: {commands.status(settings)}")
    except Exception as error:
        parts.append(f"connectors unknown: {error}")
    return "; ".join(parts)


def wait_for_predictions(
    dsn: str, table: str, ids: list[int], timeout_s: float = PRICED_WITHIN_S
) -> dict[int, dict[str, Any]]:
    """Every id's prediction row, or an AssertionError saying how many are missing."""
    found = predictions.wait_for_predictions(dsn, table, ids, timeout_s)
    missing = set(ids) - found.keys()
    assert not missing, (
        f"timed out after {timeout_s:.0f}s waiting for {len(set(ids))} predictions: "
        f"{len(missing)} missing"
    )
    return found


def listings(dsn: str, table: str, ids: list[int]) -> dict[int, dict[str, Any]]:
    rows = query(dsn, f"SELECT * FROM public.{table} WHERE id = ANY(%s)", (ids,))
    return {int(r["id"]): r for r in rows}


def direct_prices(service_url: str, rows: list[dict[str, Any]]) -> list[float]:
    """What the service says for these rows when asked directly."""
    records = [{name: row[name] for name in FEATURES} for row in rows]
    response = requests.post(f"{service_url}/predict_batch", json={"records": records}, timeout=60)
    response.raise_for_status()
    return [float(item["predicted_price"]) for item in response.json()]


def assert_prices_match_service(
    service_url: str, rows: dict[int, dict[str, Any]], predictions: dict[int, dict[str, Any]]
) -> None:
    """Every prediction row equals what the service says for its listing's current row."""
    ids = sorted(predictions)
    assert set(ids) <= set(rows), f"rows predicted for missing listings: {set(ids) - set(rows)}"
    expected = direct_prices(service_url, [rows[i] for i in ids])
    got = [predictions[i]["predicted_price"] for i in ids]
    wrong = [(i, g, e) for i, g, e in zip(ids, got, expected, strict=True) if g != e]
    assert not wrong, f"{len(wrong)} stale or wrong prices, e.g. {wrong[:3]}"


@dataclass
class TopicRecord:
    key: Any
    value: Any
    headers: dict[str, bytes]
    raw_key: bytes | None
    raw_value: bytes | None
    partition: int = -1
    offset: int = -1


def read_topic(
    settings: Settings, topic: str, decode_value: bool = True, committed_only: bool = True
) -> list[TopicRecord]:
    """Every committed record of ``topic`` from the beginning to its current end (with
    ``committed_only=False``, those of open and aborted transactions too)."""
    decode = avro.writer_schema_deserializer(avro.registry_client(settings.registry_url))
    key_ctx = SerializationContext(topic, MessageField.KEY)
    value_ctx = SerializationContext(topic, MessageField.VALUE)
    records: list[TopicRecord] = []

    def keep(msg: Any) -> None:
        value = decode(msg.value(), value_ctx) if decode_value else msg.value()
        headers = {k: v for k, v in (msg.headers() or [])}
        key = decode(msg.key(), key_ctx)
        records.append(
            TopicRecord(key, value, headers, msg.key(), msg.value(), msg.partition(), msg.offset())
        )

    bench_read_topic(settings, topic, {}, keep, 120.0, Console(quiet=True), committed_only)
    return records
