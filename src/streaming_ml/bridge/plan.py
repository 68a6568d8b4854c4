"""What to do with each change event: price it, tombstone it, skip it or dead-letter it.

Pure functions over decoded changes (no Kafka, no HTTP), unit-tested on their own.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from streaming_ml.kafka.changes import Change
from streaming_ml.models.contributions import largest_first
from streaming_ml.schema.fields import EXPLANATION_FIELDS, LISTING_ID_KEY, TOP_CONTRIBUTIONS
from streaming_ml.schema.listing import (
    ALL_FEATURES,
    FEATURES,
    absent_features,
    feature_problems,
    features_hash,
)

# Debezium op codes: create, update, delete, read (snapshot).
PRICED_OPS = frozenset({"c", "u", "r"})

ActionKind = Literal["predict", "tombstone", "skip", "dlq"]


@dataclass
class Action:
    """What the bridge does with one consumed message; ``index`` is its place in the batch."""

    kind: ActionKind
    index: int
    listing_id: int | None = None
    change: Change | None = None
    features_hash: str | None = None
    reason: str | None = None
    skip_why: str | None = None
    # Where a DLQ reason came from: decode, validation, service, or schema (the record
    # lacks a feature: the source table lost the column).
    stage: str = "validation"
    absent: tuple[str, ...] = ()  # the features a "schema" dead letter lacks


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


def dead_letter(index: int, change: Change | None, reason: str, stage: str) -> list[Action]:
    """A DLQ action, plus a tombstone when an update made a priced row unpriceable:
    the listing must not keep the price of features it no longer has."""
    lid = change.listing_id if change is not None else None
    actions = [Action("dlq", index, lid, change, reason=reason, stage=stage)]
    if change is not None and change.op == "u" and lid is not None:
        actions.append(Action("tombstone", index, lid, change))
    return actions


def plan_actions(changes: Sequence[Change | str]) -> list[Action]:
    """Decide per event, in order: predict, tombstone, skip or DLQ.

    ``changes`` holds a Change, or a string reason when the message could not be
    decoded. An update is skipped as "unchanged" only when its ``unchanged`` header
    names every feature; without that proof it is priced (correct, only slower). A
    touch (an update that changed no column, the re-pricing's request) is priced.
    """
    actions: list[Action] = []
    for index, change in enumerate(changes):
        if isinstance(change, str):
            actions.append(Action("dlq", index, reason=change, stage="decode"))
            continue
        lid = change.listing_id
        if change.op not in PRICED_OPS and change.op != "d":
            actions.append(Action("skip", index, lid, change, skip_why=change.op))
        elif lid is None:
            actions.append(Action("dlq", index, change=change, reason="id: missing from event"))
        elif change.op == "d":
            actions.append(Action("tombstone", index, lid, change))
        elif change.row is None:
            actions += dead_letter(index, change, "after: missing from event", "validation")
        elif problems := feature_problems(change.row):
            absent = absent_features(problems)
            letters = dead_letter(
                index, change, dlq_reason(problems), "schema" if absent else "validation"
            )
            letters[0].absent = tuple(absent)
            actions += letters
        elif change.op == "u" and change.unchanged >= ALL_FEATURES and not change.touched:
            actions.append(Action("skip", index, lid, change, skip_why="unchanged"))
        else:
            actions.append(Action("predict", index, lid, change, features_hash(change.row)))
    return actions


def finished_actions(
    actions: Iterable[Action], done: set[int], rejected: Mapping[int, str]
) -> list[Action]:
    """The actions of the messages in ``done``, each prediction the service rejected
    (``rejected``: reason by message index) turned into a dead letter (and a tombstone
    for an update, as for our own validation)."""
    finished: list[Action] = []
    for action in actions:
        if action.index not in done:
            continue
        if action.kind == "predict" and action.index in rejected:
            finished += dead_letter(action.index, action.change, rejected[action.index], "service")
        else:
            finished.append(action)
    return finished


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
    tag = str(result["model_tag"])
    name, _, version = tag.partition(":")
    return {
        "listing_id": action.listing_id,
        "predicted_price": float(result["predicted_price"]),
        "model_tag": tag,
        # A service from before experiments answers with the tag alone.
        "model_name": str(result.get("model_name") or name),
        "model_version": str(result.get("model_version") or version),
        "arm": str(result.get("arm") or "champion"),
        "features_hash": action.features_hash,
        "source_lsn": action.change.lsn,
        "source_ts_ms": source_ts,
        "kafka_ts_ms": kafka_ts_ms,
        "bridge_received_ts_ms": received_ts_ms,
        "predicted_ts_ms": predicted_ts_ms,
        "model_latency_ms": float(model_latency_ms),
        "end_to_end_ms": float(predicted_ts_ms - source_ts),
        **explanation_fields(result.get("explanation")),
    }


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def explanation_fields(explanation: Any) -> dict[str, Any]:
    """The record's explanation fields (data.EXPLANATION_FIELDS) from the service's
    ``explanation`` of one price: its base price and the TOP_CONTRIBUTIONS largest
    contributions by magnitude. All null when there is none (not asked for) or it is
    unusable: like a shadow, an explanation never stops the price it explains."""
    fields: dict[str, Any] = {f.name: None for f in EXPLANATION_FIELDS}
    if not isinstance(explanation, Mapping) or not _finite(explanation.get("base_price")):
        return fields
    amounts = explanation.get("contributions")
    if not isinstance(amounts, Mapping) or not amounts:
        return fields
    if not all(isinstance(k, str) and _finite(v) for k, v in amounts.items()):
        return fields
    fields["base_price"] = float(explanation["base_price"])
    for rank, (feature, amount) in enumerate(largest_first(amounts)[:TOP_CONTRIBUTIONS], 1):
        fields[f"top{rank}_feature"] = feature
        fields[f"top{rank}_amount"] = float(amount)
    return fields


def shadow_result(result: Mapping[str, Any]) -> dict[str, Any] | None:
    """The shadow model's answer for one record as a result of its own (arm "shadow"),
    or None when there is none or it is unusable: a shadow never stops the served price."""
    shadow = result.get("shadow")
    if not isinstance(shadow, Mapping):
        return None
    price, tag = shadow.get("predicted_price"), shadow.get("model_tag")
    if not _finite(price) or not isinstance(tag, str):
        return None
    return {
        "predicted_price": price, "model_tag": tag, "arm": "shadow",
        "explanation": shadow.get("explanation"),
    }  # fmt: skip


def service_records(
    rows: Sequence[Mapping[str, Any]], listing_ids: Sequence[int | None] | None = None
) -> list[dict[str, Any]]:
    """The feature columns of each row, as /predict_batch expects them, with the
    listing's id (the record key) so the service keeps every change of a listing on one
    A/B arm."""
    ids = listing_ids if listing_ids is not None else [None] * len(rows)
    return [
        {LISTING_ID_KEY: listing_id, **{name: row.get(name) for name in FEATURES}}
        for row, listing_id in zip(rows, ids, strict=True)
    ]
