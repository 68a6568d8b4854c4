"""Prometheus names by convention: counts are counters (`_total`), percentiles come from
histograms (never a `quantile` label on a gauge), one unit per metric, and each process
names its metrics after itself."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Metric

from streaming_ml.bridge.metrics import BridgeMetrics
from streaming_ml.connect.watchdog import restarts_counter
from streaming_ml.evaluation.metrics import EvaluatorMetrics
from streaming_ml.schema.outcome import Outcome


def families(registry: CollectorRegistry) -> list[Metric]:
    return [family for family in registry.collect() if family.name.startswith("sml_")]


def evaluator_with_one_outcome() -> EvaluatorMetrics:
    metrics = EvaluatorMetrics()
    outcome = Outcome(
        listing_id=1, model_tag="m:1", arm="champion", actual_price=10_000.0,
        predicted_price=11_000.0, priced_ts_ms=0, labelled_ts_ms=2_500, evaluated_ts_ms=3_000,
    )  # fmt: skip
    metrics.observe_outcomes([outcome])
    window = {"n": 1, "mae": 1000.0, "rmse": 1000.0, "mape": 0.1, "bias": 1000.0}
    metrics.export(
        {
            "pairs": {
                "m:1|champion": {
                    "model_tag": "m:1", "arm": "champion", "label_coverage": 1.0,
                    "cumulative": window, "last_n": window, "last_t": window,
                },
            }
        }
    )  # fmt: skip
    return metrics


def all_families() -> list[Metric]:
    watchdog = CollectorRegistry()
    restarts_counter(watchdog).labels("car-listings-source").inc()
    return [
        *families(BridgeMetrics().registry),
        *families(evaluator_with_one_outcome().registry),
        *families(watchdog),
    ]


def test_counts_are_counters_and_percentiles_come_from_histograms() -> None:
    for family in all_families():
        for sample in family.samples:
            if family.type == "counter":
                assert sample.name.endswith(("_total", "_created")), sample.name
            if family.type == "gauge":
                assert "quantile" not in sample.labels, family.name
        if family.type == "gauge":
            assert not family.name.endswith(("_count", "_total")), family.name


def test_one_unit_per_metric() -> None:
    evaluator = {f.name: f for f in families(evaluator_with_one_outcome().registry)}
    pounds = evaluator["sml_eval_error_pounds"]
    assert {s.labels["statistic"] for s in pounds.samples} == {"mae", "rmse", "bias"}
    assert {s.value for s in pounds.samples} == {1000.0}
    assert {s.value for s in evaluator["sml_eval_mape_ratio"].samples} == {0.1}
    lag = evaluator["sml_eval_label_lag_seconds"]
    assert lag.type == "histogram"
    assert [s.value for s in lag.samples if s.name.endswith("_sum")] == [2.5]
    counted = [s.value for s in evaluator["sml_eval_outcomes"].samples if s.name.endswith("_total")]
    assert counted == [1.0]


def test_the_watchdogs_restarts_are_not_named_after_the_bridge() -> None:
    watchdog = CollectorRegistry()
    restarts_counter(watchdog)
    assert [f.name for f in families(watchdog)] == ["sml_connector_restarts"]
    bridge = {f.name for f in families(BridgeMetrics().registry)}
    assert all(name.startswith(("sml_bridge_", "sml_connector_")) for name in bridge)
