"""The fields of the records the pipeline writes: predictions, outcomes and alerts."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PredictionField:
    name: str
    sql_type: str
    avro_type: str | list[str]
    description: str


# A /predict_batch record may carry its listing's id under this key: it keeps the
# listing on one A/B arm (records without it go to the champion).
LISTING_ID_KEY = "listing_id"


# How many of a price's contributions each prediction record carries, largest first.
TOP_CONTRIBUTIONS = 3


# Added with explanations (null unless the bridge asks for them, SML_BRIDGE_EXPLAIN): flat
# columns rather than an Avro array or map, because the JDBC sink writes each field to a
# column of its own and can store neither.
EXPLANATION_FIELDS: tuple[PredictionField, ...] = (
    PredictionField(
        "base_price", "double precision", ["null", "double"],
        "Model's price before any feature is known (GBP): where the contributions start",
    ),
    *(
        field
        for rank in range(TOP_CONTRIBUTIONS)
        for field in (
            PredictionField(
                f"top{rank + 1}_feature", "text", ["null", "string"],
                f"Feature whose contribution is number {rank + 1} by magnitude",
            ),
            PredictionField(
                f"top{rank + 1}_amount", "double precision", ["null", "double"],
                "That feature's contribution to the price (GBP, signed)",
            ),
        )
    ),
)  # fmt: skip


# One record per listing in the predictions topic and one row in the table.
PREDICTION_FIELDS: tuple[PredictionField, ...] = (
    PredictionField("listing_id", "bigint", "long", "car_listings.id (also the record key)"),
    PredictionField("predicted_price", "double precision", "double", "Predicted price in GBP"),
    PredictionField("model_tag", "text", "string", "BentoML model tag that produced it"),
    PredictionField("features_hash", "text", "string", "Hash of the priced features"),
    PredictionField("source_lsn", "bigint", ["null", "long"], "WAL position of the change"),
    PredictionField("source_ts_ms", "bigint", "long", "Commit time of the change (epoch ms)"),
    PredictionField("kafka_ts_ms", "bigint", "long", "Change event appended to Kafka (epoch ms)"),
    PredictionField("bridge_received_ts_ms", "bigint", "long", "Bridge read the event (epoch ms)"),
    PredictionField("predicted_ts_ms", "bigint", "long", "Model answered (epoch ms)"),
    PredictionField("model_latency_ms", "double precision", "double", "HTTP model call time"),
    PredictionField("end_to_end_ms", "double precision", "double", "Commit to prediction (ms)"),
    # Added with model experiments: each has a default, so records written before still
    # decode with the new schema and the registry accepts it as a compatible evolution.
    PredictionField("model_name", "text", ["null", "string"], "Model name (tag before ':')"),
    PredictionField("model_version", "text", ["null", "string"], "Model version (after ':')"),
    PredictionField("arm", "text", ["null", "string"], "champion, challenger or shadow"),
    # Added with explanations: nullable with a default too, so the same holds.
    *EXPLANATION_FIELDS,
)


# Columns that older tables lack: the DDL adds them (ALTER TABLE ... IF NOT EXISTS).
ADDED_PREDICTION_FIELDS = (
    "model_name", "model_version", "arm", *(f.name for f in EXPLANATION_FIELDS),
)  # fmt: skip


# One record per (listing, model tag, arm, label value) in the outcomes topic and table:
# a prediction paired with the listing's true price once that is known.
OUTCOME_FIELDS: tuple[PredictionField, ...] = (
    PredictionField("listing_id", "bigint", "long", "car_listings.id"),
    PredictionField("model_tag", "text", "string", "Model tag that priced the listing"),
    PredictionField("arm", "text", "string", "champion, challenger or shadow"),
    PredictionField("actual_price", "double precision", "double", "The label: the listing's price"),
    PredictionField("model_name", "text", ["null", "string"], "Model name (tag before ':')"),
    PredictionField("model_version", "text", ["null", "string"], "Model version (after ':')"),
    PredictionField("predicted_price", "double precision", "double", "The price predicted"),
    PredictionField("error", "double precision", "double", "predicted - actual (GBP)"),
    PredictionField(
        "abs_pct_error", "double precision", ["null", "double"], "|error| / actual (null if 0)"
    ),
    PredictionField("label_lag_ms", "bigint", "long", "Label commit - priced row's commit (ms)"),
    PredictionField("priced_ts_ms", "bigint", "long", "Commit time of the priced row (epoch ms)"),
    PredictionField("labelled_ts_ms", "bigint", "long", "Commit time of the label (epoch ms)"),
    PredictionField("evaluated_ts_ms", "bigint", "long", "Outcome computed (epoch ms)"),
    # What an online learner learns from (JSON: the labelled row's features), and what
    # errors can be sliced by in SQL (features::jsonb ->> 'model').
    PredictionField("features", "text", ["null", "string"], "The labelled row's features (JSON)"),
)


OUTCOME_KEY_FIELDS = ("listing_id", "model_tag", "arm", "actual_price")


# One record per alert raised by the evaluator (drift of a feature, a model degraded) or
# by the bridge (a feature gone from the source table).
ALERT_FIELDS: tuple[PredictionField, ...] = (
    PredictionField("alert_id", "text", "string", "Unique id (also the record key)"),
    PredictionField(
        "kind",
        "text",
        "string",
        "feature_drift, prediction_drift, model_degraded, missing_feature",
    ),
    PredictionField("feature", "text", ["null", "string"], "Drifting or missing feature"),
    PredictionField("model_tag", "text", ["null", "string"], "Model concerned"),
    PredictionField("arm", "text", ["null", "string"], "Arm concerned (model_degraded)"),
    PredictionField(
        "score",
        "double precision",
        "double",
        "PSI, the detector's statistic, or 1 (missing_feature)",
    ),
    PredictionField("threshold", "double precision", "double", "Threshold that was crossed"),
    PredictionField("source_partition", "integer", "int", "Change-topic partition observed"),
    PredictionField("raised_ts_ms", "bigint", "long", "Raised at (epoch ms)"),
    PredictionField("message", "text", "string", "What happened and what to do"),
)


ALERT_KEY_FIELDS = ("alert_id",)
