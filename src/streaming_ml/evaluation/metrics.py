"""The evaluator's Prometheus metrics, in a registry of its own (no global state)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from streaming_ml.errors import BridgeError
from streaming_ml.evaluation.drift import WindowResult

WINDOWS = ("cumulative", "last_n", "last_t")
STATISTICS = ("mae", "rmse", "mape", "bias")


class EvaluatorMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        pair = ["model_tag", "arm"]
        self.accuracy = Gauge(
            "sml_eval_accuracy",
            "Running accuracy per model tag and arm: statistic mae|rmse|mape|bias over "
            "window cumulative|last_n|last_t",
            [*pair, "statistic", "window"],
            registry=r,
        )
        self.outcomes = Gauge("sml_eval_outcomes", "Outcomes counted", pair, registry=r)
        self.coverage = Gauge(
            "sml_eval_label_coverage", "Share of priced listings that got a label", pair, registry=r
        )
        self.lag = Gauge(
            "sml_eval_label_lag_seconds",
            "Label lag percentiles over the last N outcomes",
            [*pair, "quantile"],
            registry=r,
        )
        self.drift = Gauge(
            "sml_eval_drift_psi",
            "PSI of the last closed drift window, per feature (or 'prediction')",
            ["feature", "partition"],
            registry=r,
        )
        self.alerts = Counter(
            "sml_eval_alerts", "Alerts raised", ["kind", "feature", "model_tag"], registry=r
        )
        self._server: Any = None

    def serve(self, port: int, host: str) -> None:
        try:
            self._server, _ = start_http_server(port, addr=host, registry=self.registry)
        except OSError as error:
            raise BridgeError(
                f"cannot serve the evaluator's metrics on {host}:{port} ({error}); is another "
                "evaluator running? Set SML_EVALUATOR_METRICS_PORT."
            ) from error

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def export(self, snapshot: Mapping[str, Any]) -> None:
        for entry in snapshot["pairs"].values():
            labels = (entry["model_tag"], entry["arm"])
            for window in WINDOWS:
                for statistic in STATISTICS:
                    value = entry[window][statistic]
                    if value is not None:
                        self.accuracy.labels(*labels, statistic, window).set(value)
            self.outcomes.labels(*labels).set(entry["cumulative"]["n"])
            if entry.get("label_coverage") is not None:
                self.coverage.labels(*labels).set(entry["label_coverage"])
            for quantile, value in entry["label_lag_s"].items():
                if value is not None:
                    self.lag.labels(*labels, quantile).set(value)

    def observe_window(self, partition: int, result: WindowResult) -> None:
        for name, scores in result.scores.items():
            self.drift.labels(name, str(partition)).set(scores["psi"])

    def observe_alerts(self, alerts: Iterable[Mapping[str, Any]]) -> None:
        for alert in alerts:
            self.alerts.labels(
                alert["kind"], alert.get("feature") or "", alert.get("model_tag") or ""
            ).inc()
