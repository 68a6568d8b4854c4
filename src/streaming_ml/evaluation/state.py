"""The evaluator's state per partition number, and reading it back from its changelog.

Per partition: each listing's label and predictions (``outcomes``), the label coverage
counts, the drift windows and the running metrics. The changelog is a compacted topic
keyed by ``listing:<id>`` (one listing's state; a tombstone when it was deleted) and
``partition`` (the counters, the windows and, under ``scores``, the snapshot of the
partition's running metrics and detectors). Each batch writes them in the transaction of
the outcomes they cover and the offsets consumed, so the changelog read to its end after
the committed offsets are known is the state those offsets stand for, and restoring
costs what the state holds, not what the outcomes topic has accumulated.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, KafkaError, Message, TopicPartition

from streaming_ml.config import Settings
from streaming_ml.errors import BridgeError
from streaming_ml.evaluation import outcomes as joins
from streaming_ml.evaluation.accuracy import Scoreboard
from streaming_ml.evaluation.drift import DriftWindow
from streaming_ml.kafka import clients
from streaming_ml.kafka.loop import ConsumeLoop
from streaming_ml.kafka.offsets import partition_of
from streaming_ml.kafka.output import OutRecord
from streaming_ml.system.waits import Deadline

logger = logging.getLogger(__name__)

PARTITION_KEY = b"partition"
LISTING_PREFIX = "listing:"
# A restore has no time limit while it reads; it fails when the changelog stops coming.
RESTORE_STALL_S = 60.0
RESTORE_PROGRESS_S = 10.0
# Compaction keeps each key's last record; the lag leaves recent records alone, and
# segments roll often enough that the snapshots of each batch do not pile up in an
# active segment compaction cannot touch.
CHANGELOG_CONFIG = {
    "cleanup.policy": "compact",
    "min.compaction.lag.ms": "60000",
    "segment.ms": "600000",
    "segment.bytes": str(64 * 1024 * 1024),
}


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

    def record(self, scores: Scoreboard) -> dict[str, Any]:
        return {
            "predicted": dict(self.predicted),
            "labelled": dict(self.labelled),
            "features": self.features.to_json(),
            "prediction": self.prediction.to_json(),
            "scores": scores.partition_record(self.partition),
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

    def changelog(self, topic: str, scores: Scoreboard) -> list[OutRecord]:
        """The changelog records of this batch's changes (``changed`` is set when the
        partition's counters, windows or running metrics moved)."""
        records = [
            state_record(topic, self.partition, lid, json.dumps(self.listings[lid].to_json()))
            for lid in sorted(self.dirty)
        ]
        records += [state_record(topic, self.partition, lid, None) for lid in sorted(self.deleted)]
        if self.changed:
            value = json.dumps(self.record(scores)).encode()
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


def read_latest(
    settings: Settings, group_id: str, topic: str, numbers: Iterable[int]
) -> dict[tuple[int, bytes], bytes | None]:
    """The last committed value of each key of ``numbers`` of the compacted ``topic``,
    by (partition, key): only the latest is kept and nothing is decoded while reading.

    No time limit while records come (progress is logged); BridgeError when none came
    for ``RESTORE_STALL_S`` before every partition's end."""
    todo = set(numbers)
    latest: dict[tuple[int, bytes], bytes | None] = {}
    if not todo:
        return latest
    reader = clients.consumer(
        settings,
        f"{group_id}-restore",
        {"enable.partition.eof": True, "isolation.level": "read_committed"},
    )
    stall = Deadline.after(RESTORE_STALL_S)
    progress = Deadline.after(RESTORE_PROGRESS_S)
    read = 0

    def handle(batch: list[Message]) -> None:
        nonlocal stall, progress, read
        for msg in batch:
            key = msg.key() or b""
            latest[(partition_of(msg)[1], key.encode() if isinstance(key, str) else key)] = (
                msg.value()
            )
        if batch:
            read += len(batch)
            stall = Deadline.after(RESTORE_STALL_S)
        if progress.expired():
            progress = Deadline.after(RESTORE_PROGRESS_S)
            logger.info(
                "restoring evaluator state",
                extra={"topic": topic, "records": read, "partitions_left": sorted(todo)},
            )

    def read_error(error: KafkaError) -> None:
        logger.debug("restore read error", extra={"topic": topic, "error": str(error)})

    loop = ConsumeLoop(
        reader, handle, batch_size=10_000, poll_s=0.5, on_error=read_error,
        on_end=lambda msg: todo.discard(partition_of(msg)[1]),
    )  # fmt: skip
    try:
        loop.assign([TopicPartition(topic, n, OFFSET_BEGINNING) for n in sorted(todo)])
        loop.run(until=lambda: not todo or stall.expired())
    finally:
        reader.close()
    if todo:
        raise BridgeError(
            f"reading {topic} stalled: nothing came for {RESTORE_STALL_S:g} s before the end "
            f"of partitions {sorted(todo)} ({read} records read); is Kafka up?"
        )
    return latest


def read_states(
    settings: Settings, group_id: str, numbers: list[int], scores: Scoreboard
) -> dict[int, PartitionState]:
    """The state of ``numbers`` as the changelog holds it; their running metrics go
    into ``scores``."""
    latest = read_latest(settings, group_id, settings.evaluator_state_topic, numbers)
    return decode_states(settings, latest, numbers, scores)


def decode_states(
    settings: Settings,
    latest: Mapping[tuple[int, bytes], bytes | None],
    numbers: list[int],
    scores: Scoreboard,
) -> dict[int, PartitionState]:
    """The state of ``numbers`` from the changelog's latest value per (partition, key);
    their running metrics go into ``scores``."""
    fresh = {n: new_partition(settings, n) for n in numbers}
    scores.forget_partitions(numbers)
    for (number, key), value in latest.items():
        state = fresh[number]
        if key == PARTITION_KEY:
            if value is not None:
                raw = json.loads(value)
                state.restore(raw)
                scores.restore_partition(number, raw.get("scores") or {})
        elif value is not None:
            listing_id = int(key.decode().removeprefix(LISTING_PREFIX))
            state.listings[listing_id] = joins.ListingState.from_json(json.loads(value))
    return fresh
