"""The timed pipeline runs: the warm-up, the latency run and the throughput steps, each
timed from every row's commit to its prediction row."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from contextlib import ExitStack
from typing import Any

import numpy as np

from streaming_ml.bench.children import (
    LoadReport,
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
    use_log_append_time,
)
from streaming_ml.bench.options import (
    BATCHED_COMMITS_PER_S,
    STEP_COMMITS_PER_S,
)
from streaming_ml.bench.session import BenchSession
from streaming_ml.bench.stats import (
    MIN_ACHIEVED_SHARE,
    RowTimes,
    growth_verdict,
    summarize,
)
from streaming_ml.errors import BenchError, StreamingMLError
from streaming_ml.stack import postgres
from streaming_ml.stack.secrets import load_passwords


class TimedRuns(BenchSession):
    """Runs that insert at a rate and time every row from its commit to its prediction."""

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
