"""The evaluator's Prometheus metrics, in a registry of its own (no global state)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from streaming_ml.errors import BridgeError
from streaming_ml.evaluation.drift import WindowResult
from streaming_ml.schema.outcome import Outcome

WINDOWS = ("cumulative", "last_n", "last_t")
# One unit per metric: these three are pounds; the absolute percentage error is a ratio.
POUND_STATISTICS = ("mae", "rmse", "bias")
# A label takes from seconds (with the row) to days (a sale agreed later).
LAG_BUCKETS = (0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 86400, 7 * 86400)


class EvaluatorMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        pair = ["model_tag", "arm"]
        self.error_pounds = Gauge(
            "sml_eval_error_pounds",
            "Running error per model tag and arm, in pounds: statistic mae|rmse|bias over "
            "window cumulative|last_n|last_t",
            [*pair, "statistic", "window"],
            registry=r,
        )
        self.mape = Gauge(
            "sml_eval_mape_ratio",
            "Running mean absolute percentage error as a ratio (0.1 is 10 %), per window",
            [*pair, "window"],
            registry=r,
        )
        self.outcomes = Counter(
            "sml_eval_outcomes", "Outcomes this evaluator judged", pair, registry=r
        )
        self.coverage = Gauge(
            "sml_eval_label_coverage", "Share of priced listings that got a label", pair, registry=r
        )
        self.lag = Histogram(
            "sml_eval_label_lag_seconds",
            "Time from a priced row's commit to its label's commit",
            pair,
            buckets=LAG_BUCKETS,
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
                for statistic in POUND_STATISTICS:
                    value = entry[window][statistic]
                    if value is not None:
                        self.error_pounds.labels(*labels, statistic, window).set(value)
                if entry[window]["mape"] is not None:
                    self.mape.labels(*labels, window).set(entry[window]["mape"])
            if entry.get("label_coverage") is not None:
                self.coverage.labels(*labels).set(entry["label_coverage"])

    def observe_outcomes(self, outcomes: Iterable[Outcome]) -> None:
        """Count newly judged outcomes and their label lag (a restore replays none)."""
        for outcome in outcomes:
            labels = (outcome.model_tag, outcome.arm)
            self.outcomes.labels(*labels).inc()
            self.lag.labels(*labels).observe(outcome.label_lag_ms / 1000)

    def observe_window(self, partition: int, result: WindowResult) -> None:
        for name, scores in result.scores.items():
            self.drift.labels(name, str(partition)).set(scores["psi"])

    def observe_alerts(self, alerts: Iterable[Mapping[str, Any]]) -> None:
        for alert in alerts:
            self.alerts.labels(
                alert["kind"], alert.get("feature") or "", alert.get("model_tag") or ""
            ).inc()
