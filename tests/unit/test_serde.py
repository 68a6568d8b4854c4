"""The prediction Avro schema follows data.PREDICTION_FIELDS and round-trips."""

from __future__ import annotations

import io

import fastavro

from streaming_ml.data import PREDICTION_FIELDS
from streaming_ml.serde import prediction_key_schema, prediction_value_schema


def test_value_schema_has_every_prediction_field_in_order() -> None:
    schema = prediction_value_schema()
    assert [f["name"] for f in schema["fields"]] == [f.name for f in PREDICTION_FIELDS]
    types = {f["name"]: f["type"] for f in schema["fields"]}
    assert types["predicted_price"] == "double"
    assert types["listing_id"] == "long"
    lsn = next(f for f in schema["fields"] if f["name"] == "source_lsn")
    assert lsn["type"] == ["null", "long"] and lsn["default"] is None


def test_key_schema_is_listing_id_record() -> None:
    key = prediction_key_schema()
    assert key["type"] == "record"
    assert key["fields"] == [
        {"name": "listing_id", "type": "long", "doc": PREDICTION_FIELDS[0].description}
    ]


def test_value_round_trips_without_losing_precision() -> None:
    parsed = fastavro.parse_schema(prediction_value_schema())
    record = {
        "listing_id": 2**40, "predicted_price": 12345.678901234, "model_tag": "ford_price:abc",
        "features_hash": "f" * 64, "source_lsn": None, "source_ts_ms": 1, "kafka_ts_ms": 2,
        "bridge_received_ts_ms": 3, "predicted_ts_ms": 4, "model_latency_ms": 1.25,
        "end_to_end_ms": 3.0, "model_name": "ford_price", "model_version": "abc",
        "arm": "challenger",
    }  # fmt: skip
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, parsed, record)
    buffer.seek(0)
    assert fastavro.schemaless_reader(buffer, parsed) == record


def test_records_written_before_experiments_decode_with_the_new_schema() -> None:
    from streaming_ml.data import ADDED_PREDICTION_FIELDS

    new = prediction_value_schema()
    old = {**new, "fields": [f for f in new["fields"] if f["name"] not in ADDED_PREDICTION_FIELDS]}
    record = {
        "listing_id": 7, "predicted_price": 9000.5, "model_tag": "ford_price:abc",
        "features_hash": "f" * 64, "source_lsn": 3, "source_ts_ms": 1, "kafka_ts_ms": 2,
        "bridge_received_ts_ms": 3, "predicted_ts_ms": 4, "model_latency_ms": 1.25,
        "end_to_end_ms": 3.0,
    }  # fmt: skip
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, fastavro.parse_schema(old), record)
    buffer.seek(0)
    decoded = fastavro.schemaless_reader(
        buffer, fastavro.parse_schema(old), fastavro.parse_schema(new)
    )
    assert decoded == {**record, "model_name": None, "model_version": None, "arm": None}
