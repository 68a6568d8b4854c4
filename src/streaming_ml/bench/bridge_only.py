"""The bridge-only runs: a pre-filled change topic drained by ``--once`` bridges (one,
several in a group, with explanations) and by the per-event baseline consumer."""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import psycopg2
from psycopg2 import sql

from streaming_ml.bench.baseline import drain_per_event
from streaming_ml.bench.children import (
    BridgeProcess,
    LoadReport,
    wait_all_exit,
)
from streaming_ml.bench.kafka import (
    commit_offsets,
)
from streaming_ml.bench.options import (
    PREFILL_BATCH_ROWS,
)
from streaming_ml.bench.progress import Waiting
from streaming_ml.bench.session import BenchSession
from streaming_ml.bench.stats import (
    bridge_steps_per_event,
    summarize,
)
from streaming_ml.errors import BenchError


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


class BridgeOnlyRuns(BenchSession):
    """Runs that time the bridge alone over one pre-filled range of change events."""

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
                    (written,) = cur.fetchone() or (0,)  # a COUNT: always a row
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
