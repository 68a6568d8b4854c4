"""The Kafka-nodes comparison (``bench --compare-kafka-nodes N``): the throughput steps again
on a stack of the bench's own with N Kafka nodes (topics replicated min(N, 3) times), so
the report shows the sustained rate of both layouts side by side, measured the same way.

The second stack starts after the first run's stack is stopped (when the bench started
it), on free ports and a temporary state dir, and is stopped and deleted at the end.
"""

from __future__ import annotations

import shutil
import time
from contextlib import ExitStack
from dataclasses import replace
from typing import Any

from rich.console import Console

from streaming_ml.bench.options import BenchOptions
from streaming_ml.bench.pipeline import Bench
from streaming_ml.config import Settings
from streaming_ml.stack.private import private_settings


def kafka_nodes_comparison(
    settings: Settings, options: BenchOptions, console: Console, nodes: int
) -> dict[str, Any]:
    """Warm-up and throughput steps on a new ``nodes``-node stack; its figures."""
    own = private_settings(settings, prefix=f"sml-bench-kafka{nodes}-", kafka_nodes=nodes)
    steps_only = replace(options, run_serving=False, run_latency=False, run_baseline=False)
    bench = Bench(own, steps_only, console)
    console.rule(f"[bold]the throughput steps again with {nodes} Kafka nodes")
    began = time.monotonic()
    try:
        with ExitStack() as cleanup:
            bench.prepare(cleanup)
            bench.warm_up()
            steps, best, why = bench.throughput_steps()
    finally:
        shutil.rmtree(own.state_dir, ignore_errors=True)
    return {
        "kafka_nodes": nodes,
        "replication_factor": own.kafka_replication_factor,
        "throughput_steps": steps,
        "max_sustained_rows_per_s": best,
        "max_sustained_bound": why,
        "startup_s": bench.env.startup_s,
        "wall_s": round(time.monotonic() - began, 1),
    }
