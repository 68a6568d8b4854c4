"""The re-pricing run: N already-priced rows priced again by `streaming-ml reprice`'s job,
unthrottled, timed from the first touch's commit to the last prediction row written."""

from __future__ import annotations

import time
from typing import Any

import psycopg2
from psycopg2 import sql

from streaming_ml.bench.options import PREFILL_BATCH_ROWS
from streaming_ml.bench.progress import Waiting
from streaming_ml.bench.session import BenchSession
from streaming_ml.bridge.reprice import Repricer, RepriceRequest
from streaming_ml.errors import BenchError

# Offered to the job as its rate: far above what the pipeline drains, so chunks are as
# large as SML_REPRICE_CHUNK_ROWS allows and no pacing ever waits.
UNTHROTTLED_ROWS_PER_S = 1_000_000.0


class RepriceRuns(BenchSession):
    """Runs of the re-pricing backfill through the real pipeline."""

    def reprice_run(self) -> dict[str, Any]:
        o, s = self.options, self.settings
        rows = o.reprice_rows
        self.console.rule(f"[bold]re-pricing: {rows} priced rows touched again")
        self.ensure_stream_bridges()  # the bridge-only runs stop them
        report, _ = self.load(rows, None, PREFILL_BATCH_ROWS, f"re-pricing: {rows} rows to price")
        self.wait_predicted(report, o.drain_timeout_s)
        where = f"id BETWEEN {report.first_id} AND {report.last_id}"
        began_ms = time.time() * 1000
        repricer = Repricer(s, self.dsn, RepriceRequest(where=where, rate=UNTHROTTLED_ROWS_PER_S))
        with Waiting(self.console, f"touching {rows} rows", o.drain_timeout_s) as wait:
            repricer.on_job = lambda job: wait.update(f"{job.done}/{job.total} touched")
            job = repricer.run()
        touched_s = (job.updated_at - job.started_at).total_seconds()
        repriced, first_ms, last_ms = self._wait_repriced(report.first_id, report.last_id, began_ms)
        if repriced < job.done:
            raise BenchError(
                f"re-pricing run: {repriced} of {job.done} touched rows were written again "
                f"within {o.drain_timeout_s:.0f}s; {self._pipeline_hint()}"
            )
        span_s = (last_ms - first_ms) / 1000
        return {
            "rows": rows,
            "touched": job.done,
            "chunks": job.chunks,
            "touch_rows_per_s": round(job.done / touched_s, 1) if touched_s > 0 else None,
            "first_touch_to_last_written_s": round(span_s, 2),
            "reprice_rows_per_s": round(repriced / span_s, 1) if span_s > 0 else None,
            "job_id": job.job_id,
            "model_tag": job.model_tag,
        }

    def _wait_repriced(
        self, first_id: int, last_id: int, since_ms: float
    ) -> tuple[int, float, float]:
        """(rows, first source commit ms, last written ms) of the range's prediction rows
        priced from a change committed at or after ``since_ms`` (the touches), once every
        row of the range has one or ``drain_timeout_s`` passed."""
        query = sql.SQL(
            "SELECT count(*), min(source_ts_ms), "
            "max(extract(epoch FROM written_at) * 1000)::float8 FROM {} "
            "WHERE listing_id BETWEEN %(a)s AND %(b)s AND source_ts_ms >= %(since)s"
        ).format(sql.Identifier("public", self.settings.predictions_table))
        bounds = {"a": first_id, "b": last_id, "since": int(since_ms)}
        expected = last_id - first_id + 1
        conn = psycopg2.connect(self.dsn, connect_timeout=10)
        conn.autocommit = True
        what, timeout = "re-priced rows written", self.options.drain_timeout_s
        try:
            with conn.cursor() as cur, Waiting(self.console, what, timeout) as wait:
                while True:
                    cur.execute(query, bounds)
                    count, first_ms, last_ms = cur.fetchone() or (0, None, None)
                    if count >= expected or wait.expired():
                        return int(count), float(first_ms or 0), float(last_ms or 0)
                    wait.update(f"{count}/{expected} rows")
                    wait.sleep(0.25)
        finally:
            conn.close()
