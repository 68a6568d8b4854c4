"""The evaluator's state per partition number, and reading it back from its changelog.

Per partition: each listing's label and predictions (``outcomes``), the label coverage
counts and the drift windows. The changelog is a compacted topic keyed by
``listing:<id>`` (one listing's state; a tombstone when it was deleted) and
``partition`` (the counters and windows).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Message

from streaming_ml.config import Settings
from streaming_ml.errors import BridgeError
from streaming_ml.evaluation import outcomes as joins
from streaming_ml.evaluation.drift import DriftWindow
from streaming_ml.kafka import clients, replay
from streaming_ml.kafka.offsets import partition_of
from streaming_ml.kafka.output import OutRecord

PARTITION_KEY = b"partition"
LISTING_PREFIX = "listing:"
RESTORE_TIMEOUT_S = 120.0


@dataclass
class PartitionState:
    """Everything the evaluator keeps about one co-partitioned partition number."""

    partition: int
    features: DriftWindow
    prediction: DriftWindow
    listings: dict[int, joins.ListingState] = field(default_factory=dict)
    predicted: Counter[str] = field(default_factory=Counter)  # pairs first predicted
    labelled: Counter[str] = field(default_factory=Counter)  # pairs first labelled
    dirty: set[int] = field(default_factory=set)  # listings changed in this batch
    deleted: set[int] = field(default_factory=set)
    changed: bool = False  # counters or windows changed in this batch

    def record(self) -> dict[str, Any]:
        return {
            "predicted": dict(self.predicted),
            "labelled": dict(self.labelled),
            "features": self.features.to_json(),
            "prediction": self.prediction.to_json(),
        }

    def restore(self, raw: Mapping[str, Any]) -> None:
        self.predicted = Counter(raw.get("predicted") or {})
        self.labelled = Counter(raw.get("labelled") or {})
        self.features.restore(raw.get("features") or {})
        self.prediction.restore(raw.get("prediction") or {})

    def listing(self, listing_id: int) -> joins.ListingState:
        """The listing's state, marked as changed in this batch."""
        self.dirty.add(listing_id)
        self.deleted.discard(listing_id)
        return self.listings.setdefault(listing_id, joins.ListingState())

    def published(self) -> None:
        """The batch's changes are in the changelog: start the next batch clean."""
        self.dirty.clear()
        self.deleted.clear()
        self.changed = False

    def changelog(self, topic: str) -> list[OutRecord]:
        """The changelog records of this batch's changes."""
        records = [
            state_record(topic, self.partition, lid, json.dumps(self.listings[lid].to_json()))
            for lid in sorted(self.dirty)
        ]
        records += [state_record(topic, self.partition, lid, None) for lid in sorted(self.deleted)]
        if self.changed:
            value = json.dumps(self.record()).encode()
            records.append(OutRecord(topic, PARTITION_KEY, value, partition=self.partition))
        return records


def state_record(topic: str, partition: int, listing_id: int, value: str | None) -> OutRecord:
    return OutRecord(
        topic,
        f"{LISTING_PREFIX}{listing_id}".encode(),
        value.encode() if value is not None else None,
        partition=partition,
    )


def new_partition(settings: Settings, number: int) -> PartitionState:
    s = settings

    def window() -> DriftWindow:
        return DriftWindow(s.drift_window_rows, s.drift_psi_threshold, s.drift_alert_windows)

    return PartitionState(number, window(), window())


def read_partitions(
    settings: Settings,
    group_id: str,
    topic: str,
    numbers: Iterable[int],
    on_message: Callable[[Any], None],
) -> None:
    """Every committed record of ``numbers`` of ``topic``, from the beginning to the end."""
    start = {n: OFFSET_BEGINNING for n in numbers}
    if not start:
        return
    reader = clients.consumer(
        settings,
        f"{group_id}-restore",
        {"enable.partition.eof": True, "isolation.level": "read_committed"},
    )
    try:
        _count, complete = replay.read_until_end(
            reader, topic, start, on_message, RESTORE_TIMEOUT_S
        )
    finally:
        reader.close()
    if not complete:
        raise BridgeError(f"could not read {topic} to its end in {RESTORE_TIMEOUT_S:g} s")


def read_states(settings: Settings, group_id: str, numbers: list[int]) -> dict[int, PartitionState]:
    """The state of ``numbers`` as the changelog holds it."""
    fresh = {n: new_partition(settings, n) for n in numbers}

    def on_state(msg: Message) -> None:
        state = fresh[partition_of(msg)[1]]
        key, value = msg.key() or b"", msg.value()
        if isinstance(key, str):
            key = key.encode()
        if key == PARTITION_KEY:
            if value is not None:
                state.restore(json.loads(value))
            return
        listing_id = int(key.decode().removeprefix(LISTING_PREFIX))
        if value is None:
            state.listings.pop(listing_id, None)
        else:
            state.listings[listing_id] = joins.ListingState.from_json(json.loads(value))

    read_partitions(settings, group_id, settings.evaluator_state_topic, numbers, on_state)
    return fresh
