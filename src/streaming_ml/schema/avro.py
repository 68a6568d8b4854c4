"""Avro schemas and registry-backed (de)serializers for the bridge's topics.

The prediction schema is derived from ``streaming_ml.data.PREDICTION_FIELDS`` so
the topic, the JDBC sink's table and the Postgres DDL cannot drift apart. Every
serializer writes the Confluent wire format (magic byte + 4-byte schema id),
resolved through the Apicurio registry's Confluent-compatible API.

Schema registration, subject naming and id lookups are confluent-kafka's (its
AvroSerializer registers a schema on first use, its client resolves and caches ids).
The bytes of each record are fastavro's, called directly: the library wraps the same
fastavro calls in per-message rule and context handling that cost more than the
codec itself. The bench's per-step figures (docs/performance.md) measured decode at
42 -> 20 us and encode at 30 -> 17 us per event; the output is byte-for-byte the
library's (tests/unit/test_serde.py).
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from typing import Any

import fastavro
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import SerializationContext, SerializationError

from streaming_ml.schema.fields import (
    ALERT_FIELDS,
    ALERT_KEY_FIELDS,
    PREDICTION_FIELDS,
    PredictionField,
)

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


def record_schema(name: str, doc: str, fields: Sequence[PredictionField]) -> dict[str, Any]:
    """Avro record with one field per ``fields`` entry (``data``'s table columns)."""
    return {
        "type": "record",
        "name": name,
        "namespace": NAMESPACE,
        "doc": doc,
        "fields": [_avro_field(f.name, f.avro_type, f.description) for f in fields],
    }


def key_schema(name: str, fields: Sequence[PredictionField], key: Sequence[str]) -> dict[str, Any]:
    """Record key: the JDBC sink (primary.key.mode=record_key) takes the table's primary
    key from it."""
    by_name = {f.name: f for f in fields}
    return record_schema(name, f"Key of {name.removesuffix('Key')}", [by_name[k] for k in key])


def prediction_value_schema() -> dict[str, Any]:
    """Avro record for one prediction, one field per ``PREDICTION_FIELDS`` entry."""
    return record_schema(
        PREDICTION_VALUE_NAME, "Price predicted for one car_listings row", PREDICTION_FIELDS
    )


def prediction_key_schema() -> dict[str, Any]:
    key = next(f for f in PREDICTION_FIELDS if f.name == KEY_FIELD)
    # Written before the generic key schema existed: kept byte-for-byte (no doc) so the
    # registry sees the same schema, not a new version.
    return {
        "type": "record",
        "name": PREDICTION_KEY_NAME,
        "namespace": NAMESPACE,
        "fields": [_avro_field(key.name, key.avro_type, key.description)],
    }


def registry_client(url: str, basic_auth: str | None = None) -> SchemaRegistryClient:
    """A client of the Confluent-compatible registry at ``url``; ``basic_auth`` is
    ``user:password`` (Settings.registry_basic_auth)."""
    conf: dict[str, str] = {"url": url}
    if basic_auth:
        conf["basic.auth.credentials.source"] = "USER_INFO"
        conf["basic.auth.user.info"] = basic_auth
    return SchemaRegistryClient(conf)


def prediction_serializers(client: SchemaRegistryClient) -> tuple[AvroSerializer, AvroSerializer]:
    """(key, value) serializers; both register their schema on first use
    (subjects ``<topic>-key`` / ``<topic>-value``)."""
    conf = {"auto.register.schemas": True}
    key = AvroSerializer(client, json.dumps(prediction_key_schema()), conf=conf)
    value = AvroSerializer(client, json.dumps(prediction_value_schema()), conf=conf)
    return key, value


def table_serializers(
    client: SchemaRegistryClient,
    name: str,
    doc: str,
    fields: Sequence[PredictionField],
    key: Sequence[str],
) -> tuple[AvroSerializer, AvroSerializer]:
    """(key, value) serializers of a sink-bound record type (outcomes, alerts)."""
    conf = {"auto.register.schemas": True}
    key_ser = AvroSerializer(client, json.dumps(key_schema(f"{name}Key", fields, key)), conf=conf)
    value_ser = AvroSerializer(client, json.dumps(record_schema(name, doc, fields)), conf=conf)
    return key_ser, value_ser


def alert_serializers(client: SchemaRegistryClient) -> tuple[AvroSerializer, AvroSerializer]:
    """(key, value) serializers of the alerts topic, which the evaluator (drift and
    degradation) and the bridge (a feature gone from the source table) both write."""
    return table_serializers(
        client, "CarPriceAlert", "Drift or degradation alert", ALERT_FIELDS, ALERT_KEY_FIELDS
    )


# Confluent wire format: magic byte 0, the schema id as 4 big-endian bytes, the body.
MAGIC = 0
HEADER_BYTES = 5


class FramedAvroReader:
    """Decodes any registry-framed Avro payload with the schema it was written with
    (Debezium change events and keys, prediction records alike).

    Called like the library's deserializer, ``reader(data, ctx)``; ``ctx`` is unused.
    Raises SerializationError for bytes that are not framed Avro, the registry client's
    own errors when the id cannot be resolved, and fastavro's for a body that does not
    match its schema.
    """

    def __init__(self, client: SchemaRegistryClient) -> None:
        self._client = client
        self._schemas: dict[int, Any] = {}

    def __call__(self, data: bytes | None, ctx: SerializationContext | None = None) -> Any:
        if data is None:
            return None
        if len(data) < HEADER_BYTES or data[0] != MAGIC:
            raise SerializationError(
                f"not registry-framed Avro: {len(data)} bytes starting {bytes(data[:5])!r}"
            )
        schema_id = int.from_bytes(data[1:HEADER_BYTES], "big")
        parsed = self._schemas.get(schema_id)
        if parsed is None:
            schema_str = self._client.get_schema(schema_id).schema_str
            if schema_str is None:
                raise SerializationError(f"the registry has no schema text for id {schema_id}")
            parsed = self._schemas[schema_id] = fastavro.parse_schema(json.loads(schema_str))
        body = io.BytesIO(memoryview(data)[HEADER_BYTES:])
        return fastavro.schemaless_reader(body, parsed, None)


class FramedAvroWriter:
    """Encodes records of one schema on one subject: the library's serializer writes the
    first (registering the schema and learning its id), fastavro every later one behind
    the same five framing bytes."""

    def __init__(
        self, serializer: AvroSerializer, ctx: SerializationContext, schema: dict[str, Any]
    ) -> None:
        self._serializer = serializer
        self._ctx = ctx
        self._parsed = fastavro.parse_schema(schema)
        self._header: bytes | None = None

    def __call__(self, record: dict[str, Any]) -> bytes:
        if self._header is None:
            framed = self._serializer(record, self._ctx)
            assert framed is not None  # a record in, bytes out
            self._header = framed[:HEADER_BYTES]
            return framed
        out = io.BytesIO()
        out.write(self._header)
        fastavro.schemaless_writer(out, self._parsed, record)
        return out.getvalue()


def writer_schema_deserializer(client: SchemaRegistryClient) -> FramedAvroReader:
    return FramedAvroReader(client)
