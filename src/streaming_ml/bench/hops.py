"""The hops inside ``commit_to_kafka``: where a change waits between Postgres' commit and
the broker's append, measured with what the components already report.

- Per row, from the change record itself: ``__source_ts_ms`` (the commit), ``__ts_ms``
  (when Debezium's streaming loop read the change from the replication stream) and the
  broker's append time, so the stage splits into *commit → Debezium read* (walsender,
  the replication protocol and Debezium's wait between reads) and *Debezium read →
  broker* (Debezium's queue, Connect's poll, the SMTs and converter, the producer).
- Postgres' own view, sampled while the run inserts: ``pg_stat_replication`` for the
  connector's walsender (how far its sent LSN trails the WAL, and the lag columns).
- Connect's JMX metrics through the Prometheus exporter (``SML_CONNECT_METRICS_PORT``):
  the source task's poll time, Debezium's queue, the producer's queue time and request
  latency. They are averages over Kafka's metric window (~30 s), read after the run.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Any

import numpy as np
import psycopg2
import requests
from confluent_kafka.serialization import MessageField, SerializationContext
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console

from streaming_ml.bench.kafka import read_topic
from streaming_ml.bench.stats import summarize
from streaming_ml.config import Settings
from streaming_ml.schema import avro
from streaming_ml.stack import postgres

logger = logging.getLogger(__name__)

HOPS: tuple[tuple[str, str], ...] = (
    ("commit_to_debezium", "commit → Debezium read it from the WAL (__ts_ms - source_ts)"),
    ("debezium_to_kafka", "Debezium read → appended to the change topic (kafka_ts - __ts_ms)"),
)
# pg_stat_replication, for the walsender of the connector's slot: bytes of WAL written but
# not yet sent to it, and the lags Postgres reports from the client's status messages.
REPLICATION_SQL = """
SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), r.sent_lsn)::float8,
       extract(epoch FROM r.write_lag)::float8 * 1000,
       extract(epoch FROM r.flush_lag)::float8 * 1000
FROM pg_stat_replication r
JOIN pg_replication_slots s ON s.active_pid = r.pid
WHERE s.slot_name = %s
"""
# Connect's JMX figures worth reporting, by exporter name (lower-cased MBean + attribute).
CONNECT_METRICS: tuple[tuple[str, str], ...] = (
    ("kafka_connect_source_task_metrics_poll_batch_avg_time_ms",
     "source task: ms per poll() of Debezium's queue (includes its wait for events)"),
    ("kafka_producer_producer_metrics_record_queue_time_avg",
     "Connect's producer: ms a record waits in its batch before sending (linger)"),
    ("kafka_producer_producer_metrics_request_latency_avg",
     "Connect's producer: ms per produce request to the broker"),
    ("kafka_producer_producer_metrics_batch_size_avg",
     "Connect's producer: bytes per batch sent"),
    ("debezium_postgres_connector_metrics_queueremainingcapacity",
     "Debezium: free slots in its queue (the total is 8,192 by default)"),
    ("debezium_postgres_connector_metrics_millisecondsbehindsource",
     "Debezium: commit → read for the last event (ms)"),
)  # fmt: skip


def change_topic_times(
    settings: Settings,
    start: Mapping[int, int],
    first_id: int,
    last_id: int,
    console: Console,
) -> dict[int, tuple[float, float, float]]:
    """listing_id → (commit ms, Debezium read ms, broker append ms) of its latest change
    record, for ids in [first_id, last_id], read from ``start`` to the end."""

    decode = avro.writer_schema_deserializer(
        avro.registry_client(settings.registry_url, settings.registry_basic_auth)
    )
    value_ctx = SerializationContext(settings.listings_topic, MessageField.VALUE)
    found: dict[int, tuple[float, float, float]] = {}

    def keep(msg: Any) -> None:
        if msg.value() is None:
            return
        value = decode(msg.value(), value_ctx)
        lid = value.get("id") if isinstance(value, Mapping) else None
        if lid is None or not first_id <= int(lid) <= last_id:
            return
        read_at = value.get("__ts_ms")
        committed = value.get("__source_ts_ms")
        if read_at is None or committed is None:
            return  # a connector config without `ts_ms` in add.fields: nothing to split
        found[int(lid)] = (float(committed), float(read_at), float(msg.timestamp()[1]))

    read_topic(settings, settings.listings_topic, start, keep, 120.0, console)
    return found


def hop_summary(times: Mapping[int, tuple[float, float, float]]) -> dict[str, Any]:
    """Percentiles of each hop over the rows, and each hop's share of the stage's mean."""
    if not times:
        return {"rows": 0}
    data = np.asarray(list(times.values()), dtype=np.float64)
    hops = {
        "commit_to_debezium": data[:, 1] - data[:, 0],
        "debezium_to_kafka": data[:, 2] - data[:, 1],
    }
    total = float((data[:, 2] - data[:, 0]).mean())
    return {
        "rows": int(data.shape[0]),
        "hops_ms": {name: summarize(values) for name, values in hops.items()},
        "share_of_mean": {
            name: round(float(values.mean()) / total, 3) if total > 0 else None
            for name, values in hops.items()
        },
    }


class ReplicationSampler:
    """Samples the connector's walsender in ``pg_stat_replication`` every ``interval_s``
    on a thread of its own while a run inserts (a context manager)."""

    def __init__(self, dsn: str, interval_s: float = 0.1, slot: str = postgres.SLOT) -> None:
        self._dsn = dsn
        self._interval_s = interval_s
        self._slot = slot
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-replication", daemon=True)
        self.samples: list[tuple[float, float | None, float | None]] = []
        self.error: str | None = None

    def __enter__(self) -> ReplicationSampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:

        try:
            conn = psycopg2.connect(self._dsn, connect_timeout=10)
        except psycopg2.Error as error:
            self.error = f"cannot read pg_stat_replication: {error}".strip()
            return
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                while not self._stop.wait(self._interval_s):
                    cur.execute(REPLICATION_SQL, (self._slot,))
                    row = cur.fetchone()
                    if row is not None:
                        self.samples.append(row)
        except psycopg2.Error as error:
            self.error = f"pg_stat_replication: {error}".strip()
        finally:
            conn.close()

    def summary(self) -> dict[str, Any]:
        """Unsent WAL bytes and the reported lags over the samples (None columns skipped:
        Postgres leaves a lag NULL until the client reports after new WAL)."""
        result: dict[str, Any] = {"samples": len(self.samples)}
        if self.error:
            result["error"] = self.error
        for i, name in enumerate(("unsent_wal_bytes", "write_lag_ms", "flush_lag_ms")):
            values = [value for s in self.samples if (value := s[i]) is not None]
            result[name] = summarize(values)
        return result


def connect_metrics(settings: Settings, connector: str) -> dict[str, Any]:
    """The figures of ``CONNECT_METRICS`` for ``connector``'s task and producer, read from
    Connect's Prometheus exporter; ``{"error": ...}`` when it does not answer."""

    try:
        response = requests.get(settings.connect_metrics_url, timeout=10)
        response.raise_for_status()
    except requests.RequestException as error:
        return {"error": f"Connect's metrics at {settings.connect_metrics_url}: {error}"}
    wanted = dict(CONNECT_METRICS)
    producer = f"connector-producer-{connector}-0"
    figures: dict[str, Any] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if sample.name not in wanted:
                continue
            labels = sample.labels
            if labels.get("client_id", producer) != producer:
                continue
            if labels.get("connector", connector) != connector:
                continue
            if labels.get("context", "streaming") != "streaming":
                continue
            value = sample.value
            figures[sample.name] = round(value, 3) if np.isfinite(value) else None
    return {"figures": figures, "meaning": {k: wanted[k] for k in figures}}
