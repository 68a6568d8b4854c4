"""Change events in: registry-framed Avro bytes to a ``Change``, or the reason they are poison.

The source connector runs Debezium's ``ExtractChangedRecordState`` before flattening, so
an update carries two headers listing the columns it changed and left unchanged. Those
headers are what lets the bridge skip a price-only update without remembering anything:
it needs no cache and no table lookup, so the rule holds across restarts and
rebalances. They are only trustworthy when the table has ``REPLICA IDENTITY FULL``
(otherwise Debezium has no before-image and both lists are empty); an empty or missing
header means "unknown", and the update is priced.

An update whose ``changed`` header is present and empty changed no column at all: a
"touch" (``UPDATE ... SET id = id``), the way `streaming-ml reprice` asks for a listing
to be priced again by the champion. It is priced like any update (docs/bridge.md,
"Re-pricing").
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import httpx2
from confluent_kafka import Message
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError

from streaming_ml.schema import avro

# The registry client speaks httpx2 where it is installed and httpx otherwise; either's
# transport errors mean the registry did not answer.
TRANSPORT_ERRORS = (httpx.TransportError, httpx2.TransportError)

# Named by the source connector's transforms.changes.header.unchanged.name and
# transforms.changes.header.changed.name.
UNCHANGED_HEADER = "unchanged"
CHANGED_HEADER = "changed"


class RegistryUnavailable(Exception):
    """The schema registry did not answer: decode the batch again later."""


@dataclass(frozen=True)
class Change:
    """One row change, whatever envelope it came in."""

    op: str
    listing_id: int | None
    row: dict[str, Any] | None  # the row after the change (None for a delete)
    source_ts_ms: int | None
    lsn: int | None
    unchanged: frozenset[str] = frozenset()  # columns an update provably left alone
    touched: bool = False  # an update that provably changed no column: price it again


def parse_change(
    key: Mapping[str, Any] | None,
    value: Mapping[str, Any],
    unchanged: frozenset[str] = frozenset(),
    changed: frozenset[str] | None = None,
) -> Change:
    """Read a decoded Debezium event: the standard envelope, or an
    ``ExtractNewRecordState``-flattened row with ``__op``/``__source_ts_ms`` fields."""
    if "op" in value and ("after" in value or "before" in value):
        source = value.get("source") or {}
        after, before = value.get("after"), value.get("before")
        op = str(value["op"])
        ts = source.get("ts_ms", value.get("ts_ms"))
        lsn = source.get("lsn")
        row = dict(after) if op != "d" and after is not None else None
        listing_id = listing_id_of(key, after or before)
    else:
        deleted = str(value.get("__deleted", "false")).lower() == "true"
        op = "d" if deleted else str(value.get("__op", "c"))
        ts = value.get("__source_ts_ms", value.get("__ts_ms"))
        lsn = value.get("__lsn")
        row = None if op == "d" else dict(value)
        listing_id = listing_id_of(key, value)
    return Change(
        op=op,
        listing_id=listing_id,
        row=row,
        source_ts_ms=int(ts) if ts is not None else None,
        lsn=int(lsn) if lsn is not None else None,
        unchanged=unchanged if op == "u" else frozenset(),
        touched=op == "u" and changed is not None and not changed and bool(unchanged),
    )


def listing_id_of(key: Mapping[str, Any] | None, row: Mapping[str, Any] | None) -> int | None:
    for source in (key, row):
        if source and source.get("id") is not None:
            return int(source["id"])
    return None


Headers = Sequence[tuple[str, str | bytes | None]] | Mapping[str, str | bytes | None] | None


def header_columns(headers: Headers, header: str) -> frozenset[str] | None:
    """Columns a column-list header names; None when it is absent or unreadable."""
    if isinstance(headers, Mapping):
        headers = list(headers.items())
    for name, raw in headers or ():
        if name != header or not raw:
            continue
        try:
            names = json.loads(raw)
        except ValueError:
            return None
        if isinstance(names, list):
            return frozenset(str(n) for n in names)
        return None
    return None


def unchanged_columns(headers: Headers) -> frozenset[str]:
    """Columns the ``unchanged`` header lists; empty when absent or unreadable."""
    return header_columns(headers, UNCHANGED_HEADER) or frozenset()


def registry_unavailable(error: BaseException) -> bool:
    """True when decoding failed because the registry could not answer (retry later),
    False when the message itself is bad (dead-letter it)."""
    if isinstance(error, TRANSPORT_ERRORS):
        return True
    if isinstance(error, SchemaRegistryError):
        status = error.http_status_code
        return status is None or status >= 500 or status in (408, 429) or status < 0
    return False


class ChangeDecoder:
    """Decodes change events with the writer schema named in their framing."""

    def __init__(self, registry: SchemaRegistryClient) -> None:
        self._decode = avro.writer_schema_deserializer(registry)

    def decode(self, msg: Message) -> Change | str:
        """A Change, or the DLQ reason when the bytes cannot be read.

        Raises RegistryUnavailable when the registry, not the message, is the problem.
        """
        try:
            # No SerializationContext: it only names the subject for data-contract rules
            # (none are defined on the change topic), and with it the library walks the
            # whole Debezium schema for rule tags on every message (~40 % of decode time).
            key = self._decode(msg.key(), None)
            value = self._decode(msg.value(), None)
        except Exception as error:  # anything but an unreachable registry is poison
            if registry_unavailable(error):
                raise RegistryUnavailable(f"{type(error).__name__}: {error}") from error
            return f"deserialization: {type(error).__name__}: {error}"
        if value is None:
            # Debezium's tombstone after a delete event: nothing to price.
            return Change("tombstone", listing_id_of(key, None), None, None, None)
        if not isinstance(value, Mapping):
            return f"deserialization: expected a record, got {type(value).__name__}"
        try:
            headers = msg.headers()
            return parse_change(
                key if isinstance(key, Mapping) else None,
                value,
                unchanged_columns(headers),
                header_columns(headers, CHANGED_HEADER),
            )
        except (TypeError, ValueError) as error:
            return f"deserialization: not a change event ({error})"
