"""The prediction Avro schema follows data.PREDICTION_FIELDS and round-trips; the framed
codec writes and reads the library's bytes."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import fastavro
import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext, SerializationError

from streaming_ml.schema.avro import (
    FramedAvroReader,
    FramedAvroWriter,
    prediction_key_schema,
    prediction_serializers,
    prediction_value_schema,
)
from streaming_ml.schema.fields import (
    ADDED_PREDICTION_FIELDS,
    EXPLANATION_FIELDS,
    PREDICTION_FIELDS,
)


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
        "arm": "challenger", "base_price": 11_493.123456789, "top1_feature": "model",
        "top1_amount": -1_786.000001, "top2_feature": "year", "top2_amount": 1_556.5,
        "top3_feature": "engineSize", "top3_amount": 1e-9,
    }  # fmt: skip
    assert set(record) == {f.name for f in PREDICTION_FIELDS}
    assert round_trip(record, parsed, parsed) == record


def round_trip(record: dict[str, Any], writer: Any, reader: Any) -> dict[str, Any]:
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, writer, record)
    buffer.seek(0)
    return fastavro.schemaless_reader(buffer, writer, reader)


def schema_without(names: Sequence[str]) -> dict[str, Any]:
    """The value schema as it was before ``names`` were added."""
    new = prediction_value_schema()
    return {**new, "fields": [f for f in new["fields"] if f["name"] not in names]}


# A record as the bridge wrote it before model experiments.
BEFORE_EXPERIMENTS: dict[str, Any] = {
    "listing_id": 7, "predicted_price": 9000.5, "model_tag": "ford_price:abc",
    "features_hash": "f" * 64, "source_lsn": 3, "source_ts_ms": 1, "kafka_ts_ms": 2,
    "bridge_received_ts_ms": 3, "predicted_ts_ms": 4, "model_latency_ms": 1.25,
    "end_to_end_ms": 3.0,
}  # fmt: skip
EXPLANATION_NAMES = [f.name for f in EXPLANATION_FIELDS]


def test_records_written_before_experiments_decode_with_the_new_schema() -> None:
    old = fastavro.parse_schema(schema_without(ADDED_PREDICTION_FIELDS))
    decoded = round_trip(BEFORE_EXPERIMENTS, old, fastavro.parse_schema(prediction_value_schema()))
    assert decoded == {**BEFORE_EXPERIMENTS, **dict.fromkeys(ADDED_PREDICTION_FIELDS)}


def test_explanation_fields_are_added_last_nullable_with_a_null_default() -> None:
    fields = prediction_value_schema()["fields"]
    assert [f["name"] for f in fields[-len(EXPLANATION_NAMES) :]] == EXPLANATION_NAMES
    assert set(EXPLANATION_NAMES) <= set(ADDED_PREDICTION_FIELDS)
    for field in fields[-len(EXPLANATION_NAMES) :]:
        assert field["type"][0] == "null" and field["default"] is None, field


def test_records_before_explanations_decode_and_new_ones_decode_with_the_old_schema() -> None:
    """Both directions of the evolution: a new reader fills the new fields with null
    (backward), an old reader skips them (forward), so consumers upgrade in any order."""
    old = fastavro.parse_schema(schema_without(EXPLANATION_NAMES))
    new = fastavro.parse_schema(prediction_value_schema())
    before = {**BEFORE_EXPERIMENTS, "model_name": "m", "model_version": "1", "arm": "champion"}
    assert round_trip(before, old, new) == {**before, **dict.fromkeys(EXPLANATION_NAMES)}
    explained = {
        **before, "base_price": 11_000.0, "top1_feature": "year", "top1_amount": 900.0,
        "top2_feature": "model", "top2_amount": -500.0, "top3_feature": "mpg",
        "top3_amount": 20.0,
    }  # fmt: skip
    assert round_trip(explained, new, old) == before


# -- the framed codec: fastavro's bytes, the library's registration and framing --

VALUE = {
    "listing_id": 7, "predicted_price": 12_345.5, "model_tag": "ford_price:é☃",
    "features_hash": "ab" * 8, "source_lsn": None, "source_ts_ms": 1, "kafka_ts_ms": 2,
    "bridge_received_ts_ms": 3, "predicted_ts_ms": 4, "model_latency_ms": 0.5,
    "end_to_end_ms": 3.0, "model_name": "ford_price", "model_version": "é☃",
    "arm": "champion", "base_price": None, "top1_feature": None, "top1_amount": None,
    "top2_feature": None, "top2_amount": None, "top3_feature": None, "top3_amount": None,
}  # fmt: skip


def mock_registry() -> SchemaRegistryClient:
    return SchemaRegistryClient.new_client({"url": "mock://serde-test"})


def library_serializers(
    client: SchemaRegistryClient,
) -> tuple[AvroSerializer, AvroSerializer, SerializationContext, SerializationContext]:
    key, value = prediction_serializers(client)
    return (
        key, value,
        SerializationContext("preds", MessageField.KEY),
        SerializationContext("preds", MessageField.VALUE),
    )  # fmt: skip


def test_framed_writer_writes_the_library_serializers_bytes() -> None:
    client = mock_registry()
    key_ser, value_ser, key_ctx, value_ctx = library_serializers(client)
    write_key = FramedAvroWriter(key_ser, key_ctx, prediction_key_schema())
    write_value = FramedAvroWriter(value_ser, value_ctx, prediction_value_schema())
    records = [VALUE, {**VALUE, "listing_id": 2**40, "source_lsn": 99, "predicted_price": -0.0}]
    # The first call registers through the library; every later one is fastavro's.
    for record in [*records, *records]:
        assert write_key({"listing_id": record["listing_id"]}) == key_ser(
            {"listing_id": record["listing_id"]}, key_ctx
        )
        assert write_value(record) == value_ser(record, value_ctx)


def test_framed_reader_reads_what_the_library_wrote() -> None:
    client = mock_registry()
    key_ser, value_ser, key_ctx, value_ctx = library_serializers(client)
    read = FramedAvroReader(client)
    library = AvroDeserializer(client)
    framed = value_ser(VALUE, value_ctx)
    assert read(framed, None) == library(framed, value_ctx) == VALUE
    assert read(key_ser({"listing_id": 3}, key_ctx)) == {"listing_id": 3}
    assert read(None) is None


@pytest.mark.parametrize(
    "data",
    [b"", b"\x00\x00\x00", b"\x01\x00\x00\x00\x01\x02", b'{"json": true}'],
    ids=["empty", "short", "magic byte 1", "json"],
)
def test_framed_reader_refuses_bytes_that_are_not_framed_avro(data: bytes) -> None:
    with pytest.raises(SerializationError, match="not registry-framed Avro"):
        FramedAvroReader(mock_registry())(data)


def test_framed_reader_fails_on_a_truncated_body_and_an_unknown_id() -> None:
    client = mock_registry()
    _, value_ser, _, value_ctx = library_serializers(client)
    framed = value_ser(VALUE, value_ctx)
    with pytest.raises(Exception):  # noqa: B017 - fastavro's EOF error, whatever its type
        FramedAvroReader(client)(framed[:12])
    unknown = b"\x00" + (12345).to_bytes(4, "big") + framed[5:]
    with pytest.raises(SchemaRegistryError):
        FramedAvroReader(client)(unknown)
