"""Avro schemas and registry-backed (de)serializers for the bridge's topics.

The prediction schema is derived from ``streaming_ml.data.PREDICTION_FIELDS`` so
the topic, the JDBC sink's table and the Postgres DDL cannot drift apart. Every
serializer writes the Confluent wire format (magic byte + 4-byte schema id),
resolved through the Apicurio registry's Confluent-compatible API.
"""

from __future__ import annotations

import io
import json
from typing import Any

import fastavro
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.serialization import SerializationContext, SerializationError

from streaming_ml.data import PREDICTION_FIELDS

NAMESPACE = "streaming_ml"
PREDICTION_VALUE_NAME = "CarPricePrediction"
PREDICTION_KEY_NAME = "CarPricePredictionKey"
KEY_FIELD = "listing_id"


def _avro_field(name: str, avro_type: str | list[str], doc: str) -> dict[str, Any]:
    field: dict[str, Any] = {"name": name, "type": avro_type, "doc": doc}
    # A union that admits null must default to it, or readers with an older
    # schema could not fill the field in.
    if isinstance(avro_type, list) and avro_type and avro_type[0] == "null":
        field["default"] = None
    return field


def prediction_value_schema() -> dict[str, Any]:
    """Avro record for one prediction, one field per ``PREDICTION_FIELDS`` entry."""
    return {
        "type": "record",
        "name": PREDICTION_VALUE_NAME,
        "namespace": NAMESPACE,
        "doc": "Price predicted for one car_listings row",
        "fields": [_avro_field(f.name, f.avro_type, f.description) for f in PREDICTION_FIELDS],
    }


def prediction_key_schema() -> dict[str, Any]:
    """Record key: the JDBC sink (primary.key.mode=record_key) takes listing_id from it."""
    key = next(f for f in PREDICTION_FIELDS if f.name == KEY_FIELD)
    return {
        "type": "record",
        "name": PREDICTION_KEY_NAME,
        "namespace": NAMESPACE,
        "fields": [_avro_field(key.name, key.avro_type, key.description)],
    }


def registry_client(url: str) -> SchemaRegistryClient:
    return SchemaRegistryClient({"url": url})


# Confluent wire format: magic byte 0, 4-byte big-endian schema id, Avro body.
_MAGIC = b"\x00"
_HEADER_BYTES = 5


class AvroEncoder:
    """Serializer for one Avro schema, called like confluent-kafka's
    ``AvroSerializer`` (``encoder(record, ctx) -> bytes``).

    Registers the schema once per subject (``<topic>-key`` / ``<topic>-value``) and
    then encodes with fastavro directly: confluent-kafka's serializer re-walks the
    schema for field tags on every record, which cost the bridge most of its CPU.
    """

    def __init__(self, client: SchemaRegistryClient, schema: dict[str, Any]) -> None:
        self._client = client
        self._schema = Schema(json.dumps(schema), "AVRO")
        self._parsed = fastavro.parse_schema(schema)
        self._headers: dict[str, bytes] = {}

    def _header(self, ctx: SerializationContext) -> bytes:
        subject = f"{ctx.topic}-{'key' if ctx.field == 'key' else 'value'}"
        header = self._headers.get(subject)
        if header is None:
            schema_id = self._client.register_schema(subject, self._schema)
            header = self._headers[subject] = _MAGIC + int(schema_id).to_bytes(4, "big")
        return header

    def __call__(self, record: dict[str, Any] | None, ctx: SerializationContext) -> bytes | None:
        if record is None:
            return None
        buffer = io.BytesIO()
        buffer.write(self._header(ctx))
        fastavro.schemaless_writer(buffer, self._parsed, record)
        return buffer.getvalue()


class AvroDecoder:
    """Deserializer for any registry-framed Avro payload, decoded with the schema it
    was written with (looked up once per schema id); called like confluent-kafka's
    ``AvroDeserializer`` (``decoder(data, ctx) -> dict``)."""

    def __init__(self, client: SchemaRegistryClient) -> None:
        self._client = client
        self._schemas: dict[int, Any] = {}

    def __call__(self, data: bytes | None, ctx: SerializationContext | None = None) -> Any:
        if data is None:
            return None
        if len(data) < _HEADER_BYTES or data[:1] != _MAGIC:
            raise SerializationError(
                "not registry-framed Avro (expected magic byte 0 and a 4-byte schema id)"
            )
        schema_id = int.from_bytes(data[1:_HEADER_BYTES], "big")
        parsed = self._schemas.get(schema_id)
        if parsed is None:
            schema = self._client.get_schema(schema_id)
            parsed = self._schemas[schema_id] = fastavro.parse_schema(json.loads(schema.schema_str))
        return fastavro.schemaless_reader(io.BytesIO(data[_HEADER_BYTES:]), parsed)


def prediction_serializers(client: SchemaRegistryClient) -> tuple[AvroEncoder, AvroEncoder]:
    """(key, value) serializers; both register their schema on first use
    (subjects ``<topic>-key`` / ``<topic>-value``)."""
    return AvroEncoder(client, prediction_key_schema()), AvroEncoder(
        client, prediction_value_schema()
    )


def writer_schema_deserializer(client: SchemaRegistryClient) -> AvroDecoder:
    """Decodes any registry-framed Avro payload with the schema it was written with
    (Debezium change events and keys, prediction records alike)."""
    return AvroDecoder(client)
