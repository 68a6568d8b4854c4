"""Latency of live traffic, stage by stage, from a sample of the predictions as they pass.

Every prediction record carries the times its change was committed, appended to Kafka,
read by the bridge and priced (``data.PREDICTION_FIELDS``); the record's own timestamp
is when the bridge produced it, and the predictions table's ``written_at`` is when the
sink wrote it. So the stages ``streaming-ml bench`` measures can be measured on live
traffic too, per row, without touching the pipeline:

1. each round, up to ``SAMPLE_PER_ROUND`` of the new prediction records are drawn
   uniformly (reservoir sampling) and decoded, the rest only counted;
2. a round or more later their rows are looked up by primary key; a row whose
   ``predicted_ts_ms`` is the sampled record's is that record, written;
3. written samples feed the end-to-end percentiles over ``POINT_WINDOW_S`` (a point a
   round) and the per-stage breakdown over ``STAGE_WINDOW_S``.

Sampling keeps the cost flat whatever the traffic: a few hundred decodes and one indexed
query a second.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg2.extras
from psycopg2 import sql

from streaming_ml.bench.stats import STAGES, RowTimes, summarize

SAMPLE_PER_ROUND = 200
POINT_WINDOW_S = 5.0
STAGE_WINDOW_S = 60.0
# A sampled record whose row is not written after this long is given up on (the sink is
# stuck, or a later change of the listing overwrote the row first).
GIVE_UP_S = 60.0


@dataclass
class Sample:
    listing_id: int
    source_ts: float
    kafka_ts: float
    received_ts: float
    predicted_ts: float
    model_ms: float
    topic_ts: float
    seen_at: float
    written_ts: float | None = None
    written_at: float = 0.0  # when the collector found the row (seconds, its clock)

    def row(self) -> tuple[float, ...]:
        """The (listing_id, source, kafka, received, predicted, model ms, written) tuple
        ``RowTimes.from_rows`` takes."""
        assert self.written_ts is not None
        return (
            self.listing_id, self.source_ts, self.kafka_ts, self.received_ts,
            self.predicted_ts, self.model_ms, self.written_ts,
        )  # fmt: skip


def reservoir(items: Iterable[Any], k: int, rng: random.Random) -> tuple[list[Any], int]:
    """A uniform sample of at most ``k`` items in one pass, and how many there were."""
    chosen: list[Any] = []
    count = 0
    for count, item in enumerate(items, start=1):
        if len(chosen) < k:
            chosen.append(item)
        else:
            j = rng.randrange(count)
            if j < k:
                chosen[j] = item
    return chosen, count


class LatencySampler:
    def __init__(self, decode: Callable[[bytes], dict[str, Any]], table: str) -> None:
        self._decode = decode
        self._table = table
        self._rng = random.Random()
        self.pending: list[Sample] = []
        self.written: deque[Sample] = deque()
        self.given_up = 0

    def observe(self, messages: Sequence[Any], now: float) -> int:
        """Sample this round's prediction records (tombstones are deletes, not prices);
        returns how many prices there were."""
        priced = [m for m in messages if m.value() is not None]
        chosen, count = reservoir(priced, SAMPLE_PER_ROUND, self._rng)
        for msg in chosen:
            value = self._decode(msg.value())
            self.pending.append(
                Sample(
                    listing_id=int(value["listing_id"]),
                    source_ts=float(value["source_ts_ms"]),
                    kafka_ts=float(value["kafka_ts_ms"]),
                    received_ts=float(value["bridge_received_ts_ms"]),
                    predicted_ts=float(value["predicted_ts_ms"]),
                    model_ms=float(value["model_latency_ms"]),
                    topic_ts=float(msg.timestamp()[1]),
                    seen_at=now,
                )
            )
        return count

    def resolve(self, conn: Any, now: float) -> None:
        """Look the pending samples' rows up; keep the written ones, drop stale ones."""
        fresh = [s for s in self.pending if now - s.seen_at < GIVE_UP_S]
        self.given_up += len(self.pending) - len(fresh)
        self.pending = fresh
        if not self.pending:
            self._prune(now)
            return
        query = sql.SQL(
            "SELECT listing_id, predicted_ts_ms, "
            "(extract(epoch FROM written_at) * 1000)::double precision AS written_ms "
            "FROM {} WHERE listing_id = ANY(%s)"
        ).format(sql.Identifier("public", self._table))
        with conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
            cur.execute(query, (sorted({s.listing_id for s in self.pending}),))
            rows = {int(r["listing_id"]): r for r in cur.fetchall()}
        still: list[Sample] = []
        for sample in self.pending:
            row = rows.get(sample.listing_id)
            if row is not None and float(row["predicted_ts_ms"]) == sample.predicted_ts:
                sample.written_ts = float(row["written_ms"])
                sample.written_at = now
                self.written.append(sample)
            else:
                still.append(sample)
        self.pending = still
        self._prune(now)

    def _prune(self, now: float) -> None:
        while self.written and now - self.written[0].written_at > STAGE_WINDOW_S:
            self.written.popleft()

    def _times(self, since: float) -> RowTimes:
        rows = [s.row() for s in self.written if s.written_at >= since]
        topic = {int(s.listing_id): s.topic_ts for s in self.written if s.written_at >= since}
        return RowTimes.from_rows(rows, topic)

    def point(self, now: float) -> dict[str, float]:
        """End-to-end p50/p95/p99 (commit → row written, ms) of the last few seconds'
        written samples; empty when none was written."""
        times = self._times(now - POINT_WINDOW_S)
        if not len(times):
            return {}
        summary = summarize(times.stages()["end_to_end"])
        return {
            f"latency_{q}": value
            for q in ("p50", "p95", "p99")
            if (value := summary[q]) is not None
        }

    def stages(self, now: float) -> list[dict[str, Any]]:
        """Per stage (bench's names and meanings): p50/p95/p99 over the last minute."""
        times = self._times(now - STAGE_WINDOW_S)
        summary = times.stage_summary() if len(times) else {}
        return [
            {"stage": name, "meaning": meaning, **summary.get(name, {"count": 0})}
            for name, meaning in STAGES
        ]
