"""The bridge's Prometheus metrics and its running totals."""

from __future__ import annotations

import time
from collections import Counter as Counter_
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from streaming_ml.connect.watchdog import restarts_counter

# A batch's steps, in the order it goes through them (see ``loop.Bridge._handle``).
Step = Literal["collect", "decode", "plan", "model_call", "encode", "produce_commit", "other"]
STEPS: tuple[Step, ...] = get_args(Step)


class StepClock:
    """Times one batch's steps back to back: ``lap(step)`` charges the time since the
    previous lap to ``step``. Nothing falls between two laps, so a batch's steps add up
    to its wall time, and a step lapped twice (plan, before and after the model call)
    adds both parts. A couple of clock reads per step and batch, never per event."""

    def __init__(self, collect_ns: int = 0, now: Callable[[], int] = time.perf_counter_ns) -> None:
        self.ns: dict[Step, int] = dict.fromkeys(STEPS, 0)
        # Collecting ends before the batch is handed over: its time comes in measured.
        self.ns["collect"] = collect_ns
        self._now = now
        self._last = now()

    def lap(self, step: Step) -> None:
        now = self._now()
        self.ns[step] += now - self._last
        self._last = now


class BridgeMetrics:
    """Prometheus metrics in a registry owned by one bridge (no global state)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.events = Counter("sml_bridge_events", "Change events consumed", ["op"], registry=r)
        self.predictions = Counter(
            "sml_bridge_predictions", "Prediction records produced", registry=r
        )
        self.explained = Counter(
            "sml_bridge_explained",
            "Prediction records carrying their explanation (SML_BRIDGE_EXPLAIN)",
            registry=r,
        )
        self.tombstones = Counter(
            "sml_bridge_tombstones", "Prediction tombstones produced (deletes)", registry=r
        )
        self.dlq = Counter("sml_bridge_dlq", "Events sent to the DLQ", ["stage"], registry=r)
        self.skipped = Counter(
            "sml_bridge_skipped_unchanged", "Updates not re-priced: features unchanged", registry=r
        )
        self.batch_size = Histogram(
            "sml_bridge_batch_size",
            "Events per micro-batch",
            buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000),
            registry=r,
        )
        self.lag = Gauge(
            "sml_bridge_consumer_lag", "High watermark minus position", ["partition"], registry=r
        )
        self.paused = Gauge(
            "sml_bridge_paused",
            "1 while consumption is paused (service or registry down)",
            registry=r,
        )
        self.latency = Histogram(
            "sml_bridge_stage_latency_seconds",
            "Latency per stage: commit_to_kafka, kafka_to_bridge, model_call, end_to_end",
            ["stage"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=r,
        )
        self.connector_restarts = restarts_counter(r)
        self.service_calls = Counter(
            "sml_bridge_service_calls", "POST /predict_batch calls, retries included", registry=r
        )
        self.aborted = Counter(
            "sml_bridge_transactions_aborted",
            "Output transactions aborted (the batch is consumed again)",
            registry=r,
        )
        self.rebalances = Counter(
            "sml_bridge_rebalances", "Partitions assigned or revoked", ["event"], registry=r
        )
        self.assigned = Gauge(
            "sml_bridge_assigned_partitions", "Partitions this replica owns", registry=r
        )
        self.step_seconds = Counter(
            "sml_bridge_step_seconds",
            "Time per step of the published batches; per event: divide by "
            "sml_bridge_batch_size_sum",
            ["step"],
            registry=r,
        )
        for step in STEPS:
            self.step_seconds.labels(step)  # every step exported from the start, at 0

    def add_step_times(self, ns: Mapping[Step, int]) -> None:
        for step, spent in ns.items():
            self.step_seconds.labels(step).inc(spent / 1e9)

    def observe_batch(
        self, events: int, counts: Counter_[str], predictions: list[dict[str, Any]]
    ) -> None:
        """Counters and the per-stage latencies of one published batch."""
        self.predictions.inc(counts["predicted"])
        self.explained.inc(counts["explained"])
        self.tombstones.inc(counts["tombstones"])
        self.skipped.inc(counts["unchanged"])
        self.batch_size.observe(events)
        # labels() takes a lock and a dict lookup: resolve each stage once per batch.
        to_kafka = self.latency.labels("commit_to_kafka").observe
        to_bridge = self.latency.labels("kafka_to_bridge").observe
        end_to_end = self.latency.labels("end_to_end").observe
        for r in predictions:
            to_kafka(max(0.0, (r["kafka_ts_ms"] - r["source_ts_ms"]) / 1000))
            to_bridge(max(0.0, (r["bridge_received_ts_ms"] - r["kafka_ts_ms"]) / 1000))
            end_to_end(max(0.0, r["end_to_end_ms"] / 1000))


@dataclass
class BridgeStats:
    events: int = 0
    predicted: int = 0
    tombstones: int = 0
    skipped_unchanged: int = 0
    skipped_other: int = 0
    dlq: int = 0
    batches: int = 0
    last_batch: dict[str, Any] = field(default_factory=dict)
    # perf_counter_ns per step over the published batches, whose events are ``events``.
    step_ns: dict[Step, int] = field(default_factory=lambda: dict.fromkeys(STEPS, 0))

    def add_batch(
        self,
        events: int,
        counts: Counter_[str],
        model_ms: float,
        batch_ms: float,
        step_ns: Mapping[Step, int],
    ) -> None:
        self.events += events
        for step, spent in step_ns.items():
            self.step_ns[step] += spent
        self.predicted += counts["predicted"]
        self.tombstones += counts["tombstones"]
        self.dlq += counts["dlq"]
        self.skipped_unchanged += counts["unchanged"]
        self.skipped_other += counts["skipped"]
        self.batches += 1
        self.last_batch = {
            "events": events,
            **{k: counts[k] for k in ("predicted", "tombstones", "dlq", "skipped", "unchanged")},
            "model_ms": round(model_ms, 1),
            "batch_ms": round(batch_ms, 1),
        }

    def summary(self) -> dict[str, Any]:
        return {
            "events": self.events,
            "predicted": self.predicted,
            "tombstones": self.tombstones,
            "skipped_unchanged": self.skipped_unchanged,
            "skipped_other": self.skipped_other,
            "dlq": self.dlq,
            "batches": self.batches,
            # Microseconds are plenty for totals of whole batches.
            "step_seconds": {step: round(ns / 1e9, 6) for step, ns in self.step_ns.items()},
        }
