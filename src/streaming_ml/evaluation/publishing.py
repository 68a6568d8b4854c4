"""What the evaluator writes: outcomes and alerts (Avro), and its changelog records."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.serialization import MessageField, SerializationContext

from streaming_ml.config import Settings
from streaming_ml.evaluation.accuracy import Degraded, Scoreboard
from streaming_ml.evaluation.drift import DriftWindow, WindowResult
from streaming_ml.evaluation.state import PartitionState
from streaming_ml.kafka.output import OutRecord
from streaming_ml.models.reference import PREDICTION
from streaming_ml.schema import avro
from streaming_ml.schema.fields import (
    OUTCOME_FIELDS,
    OUTCOME_KEY_FIELDS,
)
from streaming_ml.schema.outcome import Outcome
from streaming_ml.system.clock import now_ms

Alert = dict[str, Any]


class Publisher:
    """Builds one batch's output records: its outcomes, alerts and changelog records."""

    def __init__(self, settings: Settings, registry: SchemaRegistryClient) -> None:
        self.settings = settings
        self._outcome_ser = avro.table_serializers(
            registry, "CarPriceOutcome", "A prediction judged against the listing's price",
            OUTCOME_FIELDS, OUTCOME_KEY_FIELDS,
        )  # fmt: skip
        self._alert_ser = avro.alert_serializers(registry)

    def records(
        self,
        found: list[tuple[int, Outcome]],
        alerts: list[tuple[int, Alert]],
        partitions: Iterable[PartitionState],
        scores: Scoreboard,
    ) -> list[OutRecord]:
        s = self.settings
        records: list[OutRecord] = []
        key_ser, value_ser = self._outcome_ser
        key_ctx = SerializationContext(s.outcomes_topic, MessageField.KEY)
        value_ctx = SerializationContext(s.outcomes_topic, MessageField.VALUE)
        for partition, outcome in found:
            value = outcome.record()
            key = {k: value[k] for k in OUTCOME_KEY_FIELDS}
            records.append(
                OutRecord(
                    s.outcomes_topic,
                    key_ser(key, key_ctx),
                    value_ser(value, value_ctx),
                    partition=partition,
                )
            )
        alert_key, alert_value = self._alert_ser
        alert_key_ctx = SerializationContext(s.alerts_topic, MessageField.KEY)
        alert_value_ctx = SerializationContext(s.alerts_topic, MessageField.VALUE)
        for partition, alert in alerts:
            records.append(
                OutRecord(
                    s.alerts_topic,
                    alert_key({"alert_id": alert["alert_id"]}, alert_key_ctx),
                    alert_value(alert, alert_value_ctx),
                    partition=partition,
                )
            )
        for state in partitions:
            records += state.changelog(s.evaluator_state_topic, scores)
        return records


def drift_alert(partition: int, window: DriftWindow, result: WindowResult, name: str) -> Alert:
    psi = result.scores[name]["psi"]
    kind = "prediction_drift" if name == PREDICTION else "feature_drift"
    subject = "the predicted price" if name == PREDICTION else f"feature {name}"
    return {
        "alert_id": f"{kind}:{name}:p{partition}:w{result.window}:{window.reference_tag}",
        "kind": kind,
        "feature": name,
        "model_tag": window.reference_tag,
        "arm": None,
        "score": psi,
        "threshold": window.threshold,
        "source_partition": partition,
        "raised_ts_ms": now_ms(),
        "message": (
            f"{subject} drifted from the training data of {window.reference_tag}: "
            f"PSI {psi:.3f} > {window.threshold:g} in {window.alert_windows} windows "
            f"of {window.size} rows in a row (partition {partition}). Check the source "
            "of the listings, or retrain on recent data."
        ),
    }


def degraded_alert(found: Degraded, now: int, threshold: float) -> Alert:
    mae = f"£{found.window_mae:,.0f}" if found.window_mae is not None else "n/a"
    return {
        "alert_id": (
            f"model_degraded:{found.model_tag}:{found.arm}:p{found.partition}:n{found.outcomes}"
        ),
        "kind": "model_degraded",
        "feature": None,
        "model_tag": found.model_tag,
        "arm": found.arm,
        "score": float(found.outcomes),
        "threshold": threshold,
        "source_partition": found.partition,
        "raised_ts_ms": now,
        "message": (
            f"model {found.model_tag} ({found.arm}) degraded: its errors shifted "
            f"(Page-Hinkley on the log error) after {found.outcomes} outcomes in partition "
            f"{found.partition}; windowed MAE {mae}. If the features did not drift, "
            "the world did: retrain on recent labels."
        ),
    }
