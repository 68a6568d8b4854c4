"""``streaming-ml bench``: latency, throughput and serving figures of the real pipeline.

Four runs against the real local stack, each optional:

- **serving**: ``/predict`` latency for 1 and 1,000 rows, ``/predict_batch`` for 500
  records with and without explanations, and requests/s with concurrent clients;
- **latency**: a separate load-generator process (``streaming-ml load``) inserts
  listings at a fixed rate; for every row the time from its INSERT's commit to its
  prediction row being written is read back with one SQL query at the end and
  split into stages (commit → Kafka → bridge → model → predictions topic → table);
- **throughput steps**: the same at rising rates, stopping at the first rate the
  pipeline does not keep up with;
- **bridge only**: rows are pre-filled into the change topic while no bench bridge
  runs, then a bridge in a new consumer group drains them: bridge + model alone;
  then ``--bridges`` processes in one new group drain the same rows again, side by side;
  then one bridge with explanations on (``SML_BRIDGE_EXPLAIN``) drains the first
  ``--explained-rows`` of them (``--skip-explain`` leaves both explained figures out);
- **re-pricing**: ``--reprice-rows`` rows are priced, then a re-pricing job touches them
  all again, unthrottled: rows/s from the first touch's commit to the last prediction row
  written, beside the stream's sustained rate.

Every per-row stamp is epoch milliseconds of this machine's one clock (Postgres'
commit time via Debezium's ``source.ts_ms``, Kafka's broker append time, the
bridge's and Postgres' ``clock_timestamp()``), so stages can be subtracted.

Whatever is not running (stack, service, bridge) is started and stopped again at
the end; what was already running is used and left alone.
"""

from __future__ import annotations

import json
import time
from contextlib import ExitStack
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console

from streaming_ml.bench.brokers import kafka_nodes_comparison
from streaming_ml.bench.children import parse_load_output
from streaming_ml.bench.options import BenchOptions
from streaming_ml.bench.pipeline import Bench
from streaming_ml.bench.report import (
    component_versions,
    machine_facts,
    pipeline_settings,
    plot_bench,
    print_summary,
)
from streaming_ml.bench.stats import RowTimes, check_targets, growth_verdict, summarize
from streaming_ml.config import Settings, settings_env
from streaming_ml.errors import BenchError, StreamingMLError


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
        "commit_to_kafka_hops": None,
        "max_sustained_rows_per_s": None,
        "bridge_rows_per_s": None,
        "bridge_rows_per_s_by_processes": None,
        "bridge_steps_us_per_event": None,
        "predict_one_row_ms_p50": None,
        "predict_1000_rows_ms_p50": None,
        "predict_batch_500_records_ms_p50": None,
        "predict_batch_500_records_explained_ms_p50": None,
        "bridge_explained_rows_per_s": None,
        "reprice_rows_per_s": None,
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
    if options.compare_kafka_nodes is not None and not doc["errors"]:
        _compare_kafka_nodes(settings, options, console, doc, "stack" in bench.env.reused)
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


def _compare_kafka_nodes(
    settings: Settings,
    options: BenchOptions,
    console: Console,
    doc: dict[str, Any],
    beside_running_stack: bool,
) -> None:
    nodes = options.compare_kafka_nodes
    assert nodes is not None
    try:
        comparison = kafka_nodes_comparison(settings, options, console, nodes)
    except StreamingMLError as error:
        doc["errors"].append(f"{nodes}-Kafka-node comparison: {error}")
        return
    # A stack that was running before the bench kept running during the comparison.
    comparison["beside_running_stack"] = beside_running_stack
    doc["kafka_nodes_comparison"] = comparison
    doc["max_sustained_rows_per_s_by_kafka_nodes"] = {
        str(settings.kafka_nodes): doc["max_sustained_rows_per_s"],
        str(nodes): comparison["max_sustained_rows_per_s"],
    }


def _run_all(bench: Bench, doc: dict[str, Any]) -> None:
    o = bench.options
    if o.run_serving:
        try:
            serving = bench.serving_run()
            doc["serving"] = serving
            doc["predict_one_row_ms_p50"] = serving["predict_one_row_ms"]["p50"]
            doc["predict_1000_rows_ms_p50"] = serving["predict_1000_rows_ms"]["p50"]
            for key in ("predict_batch_500_records_ms", "predict_batch_500_records_explained_ms"):
                if key in serving:
                    doc[f"{key}_p50"] = serving[key]["p50"]
        except StreamingMLError as error:
            doc["errors"].append(f"serving run: {error}")
    if o.run_latency or o.run_throughput:
        _stream_runs(bench, doc)
    if o.run_reprice:
        try:
            doc["reprice_run"] = bench.reprice_run()
            doc["reprice_rows_per_s"] = doc["reprice_run"]["reprice_rows_per_s"]
        except StreamingMLError as error:
            doc["errors"].append(f"re-pricing run: {error}")


def _stream_runs(bench: Bench, doc: dict[str, Any]) -> None:
    """The warm-up, then the latency run, the throughput steps and the bridge-only runs."""
    o = bench.options
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
            doc["commit_to_kafka_hops"] = run.get("commit_to_kafka_hops")
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
            _bridge_only_runs(bench, doc)
        except StreamingMLError as error:
            doc["errors"].append(f"bridge-only run: {error}")


def _bridge_only_runs(bench: Bench, doc: dict[str, Any]) -> None:
    """One pre-filled range, drained by 1 and then ``--bridges`` processes (each round
    in a new consumer group), then by one bridge with explanations on (unless
    ``--skip-explain``); every round's figures are recorded as soon as measured."""
    prefill = bench.prefill_change_topic()
    rounds = [(processes, False) for processes in bench.options.bridge_counts]
    if bench.options.run_explain:
        rounds.append((1, True))
    runs: dict[str, Any] = {}
    rates: dict[str, float | None] = {}
    doc["bridge_run_by_processes"] = runs
    doc["bridge_rows_per_s_by_processes"] = rates
    for i, (processes, explain) in enumerate(rounds):
        # The sink catches up before the next round, the baseline's included.
        wait_for_sink = i + 1 < len(rounds) or bench.options.run_baseline
        run = bench.bridge_only_run(prefill, processes, wait_for_sink, explain=explain)
        if explain:
            doc["bridge_run_explained"] = run
            doc["bridge_explained_rows_per_s"] = run["bridge_rows_per_s"]
            continue
        runs[str(processes)] = run
        rates[str(processes)] = run["bridge_rows_per_s"]
        if processes == 1:
            doc["bridge_run"] = run
            doc["bridge_rows_per_s"] = run["bridge_rows_per_s"]
            doc["bridge_steps_us_per_event"] = run.get("bridge_steps_us_per_event")
    if bench.options.run_baseline:
        run = bench.baseline_run(prefill)
        doc["baseline_run"] = run
        doc["baseline_rows_per_s"] = run["baseline_rows_per_s"]
        ours, theirs = doc.get("bridge_rows_per_s"), run["baseline_rows_per_s"]
        if ours and theirs:
            doc["bridge_vs_baseline_rows_per_s"] = round(ours / theirs, 1)


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
