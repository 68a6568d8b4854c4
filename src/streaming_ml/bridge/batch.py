"""The bridge's decisions, without Kafka: event parsing, features hashing, DLQ reasons,
the per-event plan of a batch, output records and offsets (unit-tested without a broker)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from confluent_kafka import TopicPartition
from confluent_kafka.schema_registry.common._httpx_compat import httpx
from confluent_kafka.schema_registry.error import SchemaRegistryError

from streaming_ml.data import COLUMNS_BY_NAME, FEATURES, feature_problems

# Debezium op codes: create, update, delete, read (snapshot).
PRICED_OPS = frozenset({"c", "u", "r"})


def features_hash(row: Mapping[str, Any]) -> str:
    """Stable hash of the priced features: equal features give an equal hash whatever
    the other columns (price) or the numeric representation (2 vs 2.0) are."""
    canonical: dict[str, Any] = {}
    for name in FEATURES:
        value = row.get(name)
        kind = COLUMNS_BY_NAME[name].kind
        if value is not None and kind != "category":
            value = float(value)
            if kind == "int" and value.is_integer():
                value = int(value)
        canonical[name] = value
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"), allow_nan=True)
    return hashlib.sha256(text.encode()).hexdigest()


def dlq_reason(problems: Mapping[str, str]) -> str:
    """``field: problem; field: problem`` in schema order, e.g. for a DLQ header."""
    order = {name: i for i, name in enumerate(FEATURES)}
    items = sorted(problems.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0]))
    return "; ".join(f"{name}: {problem}" for name, problem in items)


def dlq_headers(reason: str, topic: str, partition: int, offset: int) -> list[tuple[str, bytes]]:
    return [
        ("reason", reason.encode()),
        ("source.topic", topic.encode()),
        ("source.partition", str(partition).encode()),
        ("source.offset", str(offset).encode()),
    ]


@dataclass(frozen=True)
class Change:
    """One row change, whatever envelope it came in."""

    op: str
    listing_id: int | None
    row: dict[str, Any] | None  # the row after the change (None for a delete)
    source_ts_ms: int | None
    lsn: int | None


def parse_change(key: Mapping[str, Any] | None, value: Mapping[str, Any]) -> Change:
    """Read a decoded Debezium event: the standard envelope, or an
    ``ExtractNewRecordState``-flattened row with ``__op``/``__source_ts_ms`` fields."""
    if "op" in value and ("after" in value or "before" in value):
        source = value.get("source") or {}
        after, before = value.get("after"), value.get("before")
        op = str(value["op"])
        ts = source.get("ts_ms", value.get("ts_ms"))
        lsn = source.get("lsn")
        row = after if op != "d" else None
        listing_id = _listing_id(key, after or before)
    else:
        deleted = str(value.get("__deleted", "false")).lower() == "true"
        op = "d" if deleted else str(value.get("__op", "c"))
        ts = value.get("__source_ts_ms", value.get("__ts_ms"))
        lsn = value.get("__lsn")
        row = None if op == "d" else dict(value)
        listing_id = _listing_id(key, value)
    return Change(
        op=op,
        listing_id=listing_id,
        row=dict(row) if row is not None else None,
        source_ts_ms=int(ts) if ts is not None else None,
        lsn=int(lsn) if lsn is not None else None,
    )


def _listing_id(key: Mapping[str, Any] | None, row: Mapping[str, Any] | None) -> int | None:
    for source in (key, row):
        if source and source.get("id") is not None:
            return int(source["id"])
    return None


def registry_unavailable(error: BaseException) -> bool:
    """True when decoding failed because the registry could not answer (retry later),
    False when the message itself is bad (dead-letter it)."""
    if isinstance(error, httpx.TransportError):
        return True
    if isinstance(error, SchemaRegistryError):
        status = error.http_status_code
        return status is None or status >= 500 or status in (408, 429) or status < 0
    return False


def offsets_to_commit(positions: Iterable[tuple[str, int, int]]) -> list[TopicPartition]:
    """The next offset to read per partition, from (topic, partition, offset) of handled
    messages: the highest offset + 1, since every message up to it is done."""
    highest: dict[tuple[str, int], int] = {}
    for topic, partition, offset in positions:
        tp = (topic, partition)
        highest[tp] = max(offset, highest.get(tp, -1))
    return [TopicPartition(t, p, o + 1) for (t, p), o in sorted(highest.items())]


ActionKind = Literal["predict", "tombstone", "skip", "dlq"]


@dataclass
class Action:
    """What the bridge does with one consumed message; ``outputs`` keep input order."""

    kind: ActionKind
    index: int
    listing_id: int | None = None
    change: Change | None = None
    features_hash: str | None = None
    reason: str | None = None
    skip_why: str | None = None


def plan_actions(
    changes: Sequence[Change | str],
    known_hashes: Callable[[int], str | None],
    stored_hashes: Callable[[list[int]], Mapping[int, str]] | None = None,
) -> list[Action]:
    """Decide per event, in order: predict, tombstone, skip (unchanged features) or DLQ.

    ``changes`` holds a Change, or a string reason when the message could not be
    decoded. ``known_hashes`` answers from the bridge's cache; ``stored_hashes`` is
    asked once for updates the cache does not know (the predictions table), so an
    unchanged update is recognised after a restart too.
    """
    overlay: dict[int, str | None] = {}  # effect of earlier events in this batch

    def last_hash(listing_id: int) -> str | None:
        if listing_id in overlay:
            return overlay[listing_id]
        return known_hashes(listing_id)

    # One lookup for updates whose listing the cache does not know.
    misses = [
        c.listing_id
        for c in changes
        if isinstance(c, Change)
        and c.op == "u"
        and c.listing_id is not None
        and known_hashes(c.listing_id) is None
    ]
    stored = dict(stored_hashes(sorted(set(misses)))) if stored_hashes and misses else {}

    actions: list[Action] = []
    for index, change in enumerate(changes):
        if isinstance(change, str):
            actions.append(Action("dlq", index, reason=change))
            continue
        if change.op not in PRICED_OPS and change.op != "d":
            actions.append(Action("skip", index, change.listing_id, change, skip_why=change.op))
            continue
        lid = change.listing_id
        if lid is None:
            actions.append(Action("dlq", index, change=change, reason="id: missing from event"))
            continue
        if change.op == "d":
            overlay[lid] = None
            actions.append(Action("tombstone", index, lid, change))
            continue
        if change.row is None:
            actions.append(Action("dlq", index, lid, change, reason="after: missing from event"))
            continue
        problems = feature_problems(change.row)
        if problems:
            # An update that breaks a priced row leaves no stale price behind.
            kind: ActionKind = "dlq"
            actions.append(Action(kind, index, lid, change, reason=dlq_reason(problems)))
            if change.op == "u":
                overlay[lid] = None
                actions.append(Action("tombstone", index, lid, change))
            continue
        digest = features_hash(change.row)
        previous = last_hash(lid)
        if previous is None and change.op == "u" and lid not in overlay:
            previous = stored.get(lid)
        if previous == digest:
            actions.append(Action("skip", index, lid, change, digest, skip_why="unchanged"))
            continue
        overlay[lid] = digest
        actions.append(Action("predict", index, lid, change, digest))
    return actions


def prediction_record(
    action: Action,
    result: Mapping[str, Any],
    *,
    kafka_ts_ms: int,
    received_ts_ms: int,
    predicted_ts_ms: int,
    model_latency_ms: float,
) -> dict[str, Any]:
    """The Avro value for one priced listing (fields of data.PREDICTION_FIELDS)."""
    assert action.change is not None and action.listing_id is not None
    source_ts = (
        action.change.source_ts_ms if action.change.source_ts_ms is not None else kafka_ts_ms
    )
    return {
        "listing_id": action.listing_id,
        "predicted_price": float(result["predicted_price"]),
        "model_tag": str(result["model_tag"]),
        "features_hash": action.features_hash,
        "source_lsn": action.change.lsn,
        "source_ts_ms": source_ts,
        "kafka_ts_ms": kafka_ts_ms,
        "bridge_received_ts_ms": received_ts_ms,
        "predicted_ts_ms": predicted_ts_ms,
        "model_latency_ms": float(model_latency_ms),
        "end_to_end_ms": float(predicted_ts_ms - source_ts),
    }


def service_records(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The feature columns of each row, as /predict_batch expects them."""
    return [{name: row.get(name) for name in FEATURES} for row in rows]


def backoff_delays(retries: int, base_s: float, cap_s: float) -> list[float]:
    """Exponential backoff: base, 2*base, 4*base ... capped."""
    return [min(cap_s, base_s * 2**i) for i in range(retries)]
