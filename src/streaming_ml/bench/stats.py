"""The bench's arithmetic: percentiles, the per-row stage split, the bridge's cost per
event and step, the growth verdict and the targets. Pure functions of measured numbers
(unit-tested); nothing here talks to a component."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

PERCENTILES = (50, 95, 99)
# A step keeps up when the generator reached this share of the offered rate ...
MIN_ACHIEVED_SHARE = 0.9
# ... and latency in the last third of the step is not above this multiple of the
# first third's (plus a fixed allowance, so a few ms of jitter do not count as growth).
GROWTH_FACTOR = 2.0
GROWTH_ALLOWANCE_MS = 250.0
# What the pipeline is meant to reach on a 2-core box with everything colocated; every
# full run is checked against it so a regression shows in the summary.
TARGETS: dict[str, tuple[str, float]] = {
    "latency_ms.p50": ("<=", 50.0),
    "latency_ms.p99": ("<=", 200.0),
    "max_sustained_rows_per_s": (">=", 10_000.0),
    "bridge_rows_per_s": (">=", 30_000.0),
    "predict_one_row_ms_p50": ("<=", 2.0),
    "predict_1000_rows_ms_p50": ("<=", 10.0),
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


def bridge_steps_per_event(
    step_seconds: Mapping[str, float], events: int, rows_per_s: float | None = None
) -> dict[str, Any] | None:
    """What each bridge step costs per event, from a ``--once`` summary's ``step_seconds``
    and ``events``: µs per event of each step, their total and each step's share of it.

    Given the drain's ``rows_per_s`` (one bridge), also its wall time per event, which
    the steps should nearly add up to: a large gap means time the steps do not cover
    (each batch's wait for its first event, the loop between batches). None when there
    is nothing to divide (no events, or a bridge from before the steps were timed)."""
    total = sum(step_seconds.values())
    if events <= 0 or total <= 0:
        return None
    figures: dict[str, Any] = {
        "events": events,
        "steps_us_per_event": {
            step: round(seconds * 1e6 / events, 1) for step, seconds in step_seconds.items()
        },
        "total_us_per_event": round(total * 1e6 / events, 1),
        "share_pct": {
            step: round(100 * seconds / total, 1) for step, seconds in step_seconds.items()
        },
    }
    if rows_per_s:
        figures["wall_us_per_event"] = round(1e6 / rows_per_s, 1)
    return figures


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
