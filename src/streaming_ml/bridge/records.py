"""A batch's outcome as output records: Avro predictions, tombstones and DLQ records."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Message
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext, SerializationError

from streaming_ml.bridge.plan import (
    Action,
    dlq_headers,
    explanation_fields,
    prediction_record,
    shadow_result,
)
from streaming_ml.errors import BridgeError
from streaming_ml.kafka.changes import TRANSPORT_ERRORS
from streaming_ml.kafka.offsets import position_of
from streaming_ml.kafka.output import OutRecord
from streaming_ml.schema import avro
from streaming_ml.schema.fields import PREDICTION_FIELDS
from streaming_ml.system.clock import now_ms

logger = logging.getLogger(__name__)


@dataclass
class Built:
    records: list[OutRecord] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)  # predicted, tombstones, dlq, ...
    dlq_stages: Counter[str] = field(default_factory=Counter)
    predictions: list[dict[str, Any]] = field(default_factory=list)  # the Avro values


class RecordBuilder:
    """Serialises actions with the registry's prediction schemas (key ``{listing_id}``)."""

    def __init__(
        self,
        registry: SchemaRegistryClient,
        registry_url: str,
        predictions_topic: str,
        dlq_topic: str,
        shadow_topic: str | None = None,
        copartition: bool = False,
        alerts_topic: str | None = None,
    ) -> None:
        self.predictions_topic = predictions_topic
        self.alerts_topic = alerts_topic
        self._alert_key, self._alert_value = avro.alert_serializers(registry)
        self._alert_contexts = (
            SerializationContext(alerts_topic or "", MessageField.KEY),
            SerializationContext(alerts_topic or "", MessageField.VALUE),
        )
        # First offset that raised each (feature, partition) alert: one alert per feature
        # and partition, raised again only when that same message is processed again
        # (a batch aborted and replayed), so an aborted alert is never lost.
        self._alerted: dict[tuple[str, int], int] = {}
        self.copartition = copartition
        self.dlq_topic = dlq_topic
        self.shadow_topic = shadow_topic
        self.registry_url = registry_url
        key_ser, value_ser = avro.prediction_serializers(registry)
        key_schema, value_schema = avro.prediction_key_schema(), avro.prediction_value_schema()

        def writers(topic: str) -> tuple[avro.FramedAvroWriter, avro.FramedAvroWriter]:
            return (
                avro.FramedAvroWriter(
                    key_ser, SerializationContext(topic, MessageField.KEY), key_schema
                ),
                avro.FramedAvroWriter(
                    value_ser, SerializationContext(topic, MessageField.VALUE), value_schema
                ),
            )

        self._key_write, self._value_write = writers(predictions_topic)
        # Shadow predictions: same schemas, their own topic (subjects <topic>-key/-value).
        self._shadow_key_write, self._shadow_value_write = writers(shadow_topic or "")

    def register_schemas(self) -> None:
        """Register the prediction schemas now, so a registry problem shows at start-up
        and serialising needs no registry call while a batch is in flight."""
        # Any value of the declared type will do; nullable fields take None.
        zero = {"long": 0, "double": 0.0, "string": ""}
        sample = {
            f.name: None if isinstance(f.avro_type, list) else zero[f.avro_type]
            for f in PREDICTION_FIELDS
        }
        try:
            self.key(0)
            self.value(sample)
            if self.shadow_topic:
                self._shadow_key_write({avro.KEY_FIELD: 0})
                self._shadow_value_write(sample)
        except (SchemaRegistryError, SerializationError, *TRANSPORT_ERRORS) as error:
            raise BridgeError(
                f"cannot register the prediction schemas in {self.registry_url}: {error}. "
                "Is the registry up? Try `streaming-ml stack status`."
            ) from error

    def key(self, listing_id: int | None) -> bytes:
        return self._key_write({avro.KEY_FIELD: listing_id})

    def value(self, record: dict[str, Any]) -> bytes:
        return self._value_write(record)

    def dlq(self, msg: Message, reason: str) -> OutRecord:
        """The original bytes with the reason; falls back to the headers alone."""
        headers = dlq_headers(reason, *position_of(msg))
        bare = OutRecord(
            self.dlq_topic, msg.key(), None, [*headers, ("value.dropped", b"too large")]
        )
        return OutRecord(self.dlq_topic, msg.key(), msg.value(), headers, fallback=bare)

    def _missing_feature_alerts(self, msg: Message, absent: Iterable[str]) -> list[OutRecord]:
        """An alert per feature the source table lost, the first time a partition shows it."""
        if self.alerts_topic is None:
            return []
        partition, offset = msg.partition() or 0, msg.offset() or 0
        records = []
        for feature in absent:
            first = self._alerted.setdefault((feature, partition), offset)
            if offset > first:
                continue
            alert = missing_feature_alert(feature, partition)
            logger.error(alert["message"], extra={"feature": feature, "partition": partition})
            key_ctx, value_ctx = self._alert_contexts
            records.append(
                OutRecord(
                    self.alerts_topic,
                    self._alert_key({"alert_id": alert["alert_id"]}, key_ctx),
                    self._alert_value(alert, value_ctx),
                )
            )
        return records

    def _partition(self, msg: Message) -> int | None:
        return msg.partition() if self.copartition else None

    def _shadow_record(
        self, action: Action, served: dict[str, Any], shadow: dict[str, Any], partition: int | None
    ) -> OutRecord:
        """The shadow's price in the served record's shape; its own topic and table."""
        tag = str(shadow["model_tag"])
        name, _, version = tag.partition(":")
        value = {
            **served,
            "predicted_price": float(shadow["predicted_price"]),
            "model_tag": tag,
            "model_name": name,
            "model_version": version,
            "arm": "shadow",
            # The shadow's own explanation (or nulls), never the served model's.
            **explanation_fields(shadow.get("explanation")),
        }
        assert self.shadow_topic is not None
        return OutRecord(
            self.shadow_topic,
            self._shadow_key_write({avro.KEY_FIELD: action.listing_id}),
            self._shadow_value_write(value),
            partition=partition,
        )

    def build(
        self,
        messages: list[Message],
        received_ms: list[int],
        actions: Iterable[Action],
        results: Mapping[int, Mapping[str, Any]],
        model_ms: float,
    ) -> Built:
        """Records for ``actions`` in order; ``results`` are the prices by message index."""
        out = Built()
        predicted_ms = now_ms()
        for action in actions:
            msg = messages[action.index]
            if action.kind == "dlq":
                out.records.append(self.dlq(msg, action.reason or ""))
                out.counts["dlq"] += 1
                out.dlq_stages[action.stage] += 1
                out.records += self._missing_feature_alerts(msg, action.absent)
                logger.warning(
                    "event dead-lettered",
                    extra={
                        "listing_id": action.listing_id, "partition": msg.partition(),
                        "offset": msg.offset(), "reason": action.reason,
                    },
                )  # fmt: skip
            elif action.kind == "tombstone":
                key = self.key(action.listing_id)
                partition = self._partition(msg)
                out.records.append(
                    OutRecord(self.predictions_topic, key, None, partition=partition)
                )
                if self.shadow_topic:
                    # A listing gone (or unpriceable now) has no shadow price either.
                    shadow_key = self._shadow_key_write({avro.KEY_FIELD: action.listing_id})
                    out.records.append(
                        OutRecord(self.shadow_topic, shadow_key, None, partition=partition)
                    )
                out.counts["tombstones"] += 1
            elif action.kind == "skip":
                out.counts["unchanged" if action.skip_why == "unchanged" else "skipped"] += 1
            else:
                record = prediction_record(
                    action, results[action.index],
                    kafka_ts_ms=msg.timestamp()[1], received_ts_ms=received_ms[action.index],
                    predicted_ts_ms=predicted_ms, model_latency_ms=model_ms,
                )  # fmt: skip
                fallback = self.dlq(msg, "output: Kafka refused the prediction record")
                out.records.append(
                    OutRecord(
                        self.predictions_topic,
                        self.key(action.listing_id),
                        self.value(record),
                        fallback=fallback,
                        partition=self._partition(msg),
                    )
                )
                out.counts["predicted"] += 1
                out.counts["explained"] += record["base_price"] is not None
                out.predictions.append(record)
                shadow = shadow_result(results[action.index])
                if shadow is not None and self.shadow_topic:
                    out.records.append(
                        self._shadow_record(action, record, shadow, self._partition(msg))
                    )
                    out.counts["shadow"] += 1
        return out


def missing_feature_alert(feature: str, partition: int) -> dict[str, Any]:
    """The alert that change records lack ``feature``: its column left the source table."""
    return {
        "alert_id": f"missing_feature:{feature}:p{partition}",
        "kind": "missing_feature",
        "feature": feature,
        "model_tag": None,
        "arm": None,
        "score": 1.0,
        "threshold": 0.0,
        "source_partition": partition,
        "raised_ts_ms": now_ms(),
        "message": (
            f"change records lack the feature {feature}: its column was dropped or renamed "
            "in the source table, so those listings are dead-lettered, not priced. Add the "
            "column back (then `streaming-ml reprice`), or train a model without it; see "
            "docs/schema-evolution.md"
        ),
    }
