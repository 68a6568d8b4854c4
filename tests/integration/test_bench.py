"""``streaming-ml bench --quick`` against the real test stack and service.

Asserts that the figures are well formed (keys present, finite positive numbers,
every inserted row measured) and that the bench stops what it started; never a
speed: speed targets are what the bench reports, not what a test may demand.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from streaming_ml.bench import settings_env
from streaming_ml.config import Settings
from tests.fixtures.ports import free_port

pytestmark = pytest.mark.integration

PERCENTILE_KEYS = ("p50", "p95", "p99", "max")


def positive(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


def assert_percentiles(figures: dict[str, Any], where: str) -> None:
    for key in PERCENTILE_KEYS:
        assert positive(figures[key]), f"{where}.{key} = {figures[key]!r}"
    assert figures["p50"] <= figures["p95"] <= figures["p99"] <= figures["max"], where


@pytest.fixture(scope="module")
def quick_bench(
    stack_settings: Settings, prediction_service: str, tmp_path_factory: pytest.TempPathFactory
) -> tuple[dict[str, Any], Path]:
    out_dir = tmp_path_factory.mktemp("bench")
    settings = stack_settings.model_copy(
        update={"service_url": prediction_service, "bridge_metrics_port": free_port()}
    )
    out, plot = out_dir / "bench.json", out_dir / "bench.png"
    result = subprocess.run(
        # --bridges 2 (the default, spelled out): one extra short bridge-only round.
        [sys.executable, "-m", "streaming_ml.cli", "bench", "--quick", "--bridges", "2",
         "--out", str(out), "--plot", str(plot)],
        env={**os.environ, **settings_env(settings)},
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert result.returncode == 0, f"bench failed:\n{result.stderr[-4000:]}"
    return json.loads(out.read_text()), plot


def test_quick_bench_reports_well_formed_latency_figures(
    quick_bench: tuple[dict[str, Any], Path],
) -> None:
    doc, _ = quick_bench
    assert doc["errors"] == []
    assert doc["rate_rows_per_s"] == 1000
    assert_percentiles(doc["latency_ms"], "latency_ms")
    run = doc["latency_run"]
    inserted = run["rows_inserted"]
    assert inserted == round(doc["options"]["rate"] * doc["options"]["duration_s"])
    assert run["rows_measured"] == inserted
    assert run["rows_with_topic_timestamp"] == inserted
    assert set(doc["stages"]) == {
        "commit_to_kafka", "kafka_to_bridge", "bridge_batching", "model_call",
        "bridge_to_topic", "topic_to_table", "end_to_end",
    }  # fmt: skip
    for name, figures in doc["stages"].items():
        assert figures["count"] == inserted, name
        for key in PERCENTILE_KEYS:
            value = figures[key]
            # A stage can legitimately round to 0 ms (same-millisecond stamps).
            assert isinstance(value, int | float) and math.isfinite(value), (name, key, value)
    assert doc["stages"]["end_to_end"]["p50"] == doc["latency_ms"]["p50"]


def test_quick_bench_reports_throughput_and_serving_figures(
    quick_bench: tuple[dict[str, Any], Path],
) -> None:
    doc, _ = quick_bench
    steps = doc["throughput_steps"]
    assert [s["offered_rows_per_s"] for s in steps] == list(doc["options"]["step_rates"])[
        : len(steps)
    ]
    for step in steps:
        if "error" not in step:
            assert step["rows_measured"] == step["rows_inserted"]
            assert isinstance(step["kept_up"], bool)
    best = doc["max_sustained_rows_per_s"]
    assert best is None or positive(best)
    assert doc["max_sustained_bound"]

    bridge = doc["bridge_run"]
    assert bridge["predictions"] == bridge["rows"] == doc["options"]["prefill_rows"]
    assert bridge["bridge_summary"]["predicted"] == bridge["rows"]
    assert positive(doc["bridge_rows_per_s"])
    by_processes = doc["bridge_rows_per_s_by_processes"]
    assert set(by_processes) == {"1", "2"}
    assert by_processes["1"] == doc["bridge_rows_per_s"]
    assert positive(by_processes["2"])
    two = doc["bridge_run_by_processes"]["2"]
    assert two["bridge_processes"] == 2
    assert two["predictions"] == two["rows"] == doc["options"]["prefill_rows"]

    # The one bridge's cost per event and step, from its exit summary: every step timed.
    steps = doc["bridge_steps_us_per_event"]
    assert steps == bridge["bridge_steps_us_per_event"]
    assert steps["events"] == bridge["bridge_summary"]["events"]
    assert list(steps["steps_us_per_event"]) == [
        "collect", "decode", "plan", "model_call", "encode", "produce_commit", "other",
    ]  # fmt: skip
    for step, us in steps["steps_us_per_event"].items():
        # A cheap step can legitimately round to 0.0 µs per event.
        assert isinstance(us, float) and math.isfinite(us) and us >= 0, (step, us)
    assert positive(steps["total_us_per_event"])
    assert positive(steps["wall_us_per_event"])
    assert math.isclose(sum(steps["share_pct"].values()), 100, abs_tol=1)
    # Two bridges' summaries add up, step seconds included; no single wall time to compare.
    assert two["bridge_steps_us_per_event"]["events"] == sum(two["events_per_process"])
    assert "wall_us_per_event" not in two["bridge_steps_us_per_event"]

    # With explanations: the bridge round drains a part of the pre-fill, every record
    # explained; the service answers the same 500 records with their explanations.
    explained = doc["bridge_run_explained"]
    assert explained["predictions"] == explained["rows"] == doc["options"]["explained_bridge_rows"]
    assert explained["explained_predictions"] == explained["rows"]
    assert explained["bridge_summary"]["predicted"] == explained["rows"]
    assert positive(doc["bridge_explained_rows_per_s"])

    assert positive(doc["predict_one_row_ms_p50"])
    assert positive(doc["predict_1000_rows_ms_p50"])
    assert positive(doc["predict_batch_500_records_ms_p50"])
    assert positive(doc["predict_batch_500_records_explained_ms_p50"])
    serving = doc["serving"]
    assert serving["predict_one_row_ms"]["count"] == doc["options"]["one_row_requests"]
    explained_ms = serving["predict_batch_500_records_explained_ms"]
    assert explained_ms["count"] == doc["options"]["explained_requests"]
    assert serving["concurrent_one_row"]["errors"] == 0
    assert positive(serving["concurrent_one_row"]["requests_per_s"])

    # commit_to_kafka hop by hop: every latency-run row's change record carries Debezium's
    # read time, and the two hops add up to the stage, row by row (so their means do too).
    hops = doc["commit_to_kafka_hops"]
    assert hops["rows"] == doc["latency_run"]["rows_measured"]
    stage_mean = doc["stages"]["commit_to_kafka"]["mean"]
    hop_means = [
        hops["hops_ms"][name]["mean"] for name in ("commit_to_debezium", "debezium_to_kafka")
    ]
    assert math.isclose(sum(hop_means), stage_mean, abs_tol=0.01), (hop_means, stage_mean)
    assert all(hops["hops_ms"][name]["min"] >= 0 for name in hops["hops_ms"])
    # Postgres' and Connect's own views of the same run.
    assert hops["pg_stat_replication"]["samples"] > 0
    assert "error" not in hops["pg_stat_replication"]
    assert hops["pg_stat_replication"]["unsent_wal_bytes"]["count"] > 0
    jmx = hops["connect_jmx"]["figures"]
    assert positive(jmx["kafka_connect_source_task_metrics_poll_batch_avg_time_ms"])
    assert jmx["kafka_producer_producer_metrics_request_latency_avg"] is not None

    # Re-pricing: every row of its range touched once and written again.
    reprice = doc["reprice_run"]
    assert reprice["touched"] == reprice["rows"] == doc["options"]["reprice_rows"]
    assert positive(doc["reprice_rows_per_s"]) and positive(reprice["touch_rows_per_s"])
    assert doc["reprice_rows_per_s"] == reprice["reprice_rows_per_s"]

    assert doc["machine"]["cpu_count"] >= 1
    assert doc["versions"]["python_libraries"]["bentoml"]
    assert set(doc["targets"]) >= {
        "latency_ms.p50", "latency_ms.p99", "max_sustained_rows_per_s", "bridge_rows_per_s",
        "predict_one_row_ms_p50", "predict_1000_rows_ms_p50",
    }  # fmt: skip


def test_quick_bench_stops_what_it_started_and_plots(
    quick_bench: tuple[dict[str, Any], Path], stack_settings: Settings
) -> None:
    from confluent_kafka import ConsumerGroupState
    from confluent_kafka.admin import AdminClient

    doc, plot = quick_bench
    env = doc["environment"]
    # The fixtures run the stack and the service; the bench adds (and removes) a bridge.
    assert env["started"] == ["bridge"]
    assert set(env["reused"]) == {"stack", "service"}
    admin = AdminClient({"bootstrap.servers": stack_settings.kafka_bootstrap})
    group = env["bridge_group"]
    description = admin.describe_consumer_groups([group], request_timeout=15)[group].result()
    assert description.state == ConsumerGroupState.EMPTY
    assert not description.members
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_baseline_consumer_prices_each_event_with_the_service(
    stack_settings: Settings, prediction_service: str
) -> None:
    """The yardstick of `bench --baseline`: one POST /predict per change event, each answer
    produced as it comes; every event priced, at the service's own price."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer

    from streaming_ml.bench.baseline import drain_per_event
    from streaming_ml.bench.kafka import high_watermarks
    from streaming_ml.datasets.load import load_listings
    from streaming_ml.kafka import replay
    from tests.integration.pipeline import direct_prices, dsn_of, listings, unique

    settings = stack_settings.model_copy(update={"service_url": prediction_service})
    probe = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": "sml-probe"})
    try:
        start = high_watermarks(probe, settings.listings_topic) or {}
    finally:
        probe.close()
    ids = load_listings(dsn_of(settings), 40, seed=4401, table=settings.listings_table).ids
    out = unique("sml_bench_baseline")
    run = drain_per_event(settings, start, 40, out, timeout_s=120)
    assert (run["priced"], run["refused"]) == (40, 0) and run["baseline_rows_per_s"] > 0
    produced: dict[int, float] = {}
    reader = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": unique("read-baseline"),
            "enable.partition.eof": True,
        }
    )
    try:
        partitions = reader.list_topics(out, timeout=10).topics[out].partitions

        def keep(msg: Any) -> None:
            value = json.loads(msg.value())
            produced[int(value["listing_id"])] = float(value["predicted_price"])

        replay.read_until_end(reader, out, {p: OFFSET_BEGINNING for p in partitions}, keep, 60)
    finally:
        reader.close()
    rows = listings(dsn_of(settings), settings.listings_table, ids)
    expected = dict(
        zip(ids, direct_prices(prediction_service, [rows[i] for i in ids]), strict=True)
    )
    assert produced.keys() == expected.keys()
    for listing_id, price in expected.items():
        assert produced[listing_id] == pytest.approx(price, rel=1e-9)


def test_the_bench_reports_three_kafka_nodes_beside_one(
    stack_settings: Settings, prediction_service: str, tmp_path: Path
) -> None:
    """`--compare-kafka-nodes 3`: the throughput steps on this (one-node) stack, then on a
    three-node stack of the bench's own, which it starts, measures and deletes."""
    import psutil

    settings = stack_settings.model_copy(
        update={"service_url": prediction_service, "bridge_metrics_port": free_port()}
    )
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, "-m", "streaming_ml.cli", "bench", "--quick", "--skip-serving",
         "--skip-latency", "--skip-explain", "--bridges", "1", "--compare-kafka-nodes", "3",
         "--out", str(out)],
        env={**os.environ, **settings_env(settings)},
        capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert result.returncode == 0, f"bench failed:\n{result.stderr[-4000:]}"
    doc = json.loads(out.read_text())
    assert doc["errors"] == []
    comparison = doc["kafka_nodes_comparison"]
    assert comparison["kafka_nodes"] == 3 and comparison["replication_factor"] == 3
    assert comparison["beside_running_stack"] is True  # the session's stack kept running
    by_nodes = doc["max_sustained_rows_per_s_by_kafka_nodes"]
    assert set(by_nodes) == {"1", "3"}
    assert by_nodes["1"] == doc["max_sustained_rows_per_s"]
    assert by_nodes["3"] == comparison["max_sustained_rows_per_s"]
    # Each step measured every row it inserted, on the three-node stack too.
    for step in comparison["throughput_steps"]:
        assert step["rows_measured"] == step["rows_inserted"] > 0, step
    assert "max sustained rows/s by Kafka nodes: 1:" in result.stderr
    # The three-node stack is gone: no process of its state dir is left.
    leftovers = [
        p.info["cmdline"] for p in psutil.process_iter(["cmdline"])
        if any("sml-bench-kafka3-" in part for part in p.info["cmdline"] or [])
    ]  # fmt: skip
    assert not leftovers
