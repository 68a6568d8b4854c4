"""An upgrade, on a stack of its own: every topic created with one partition (as an old
release made them), listings priced into the tables, then ``topics migrate`` to
SML_PARTITIONS. Nothing may be lost: the tables hold the same rows and prices, every
topic has the wanted count, and a bridge prices new rows afterwards, each once.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import pytest

from streaming_ml.config import Settings
from streaming_ml.connect import commands
from streaming_ml.connect.repartition import migrate_topics, migration_plan, sink_group
from streaming_ml.datasets.load import load_listings
from streaming_ml.errors import BridgeError
from streaming_ml.kafka import clients
from streaming_ml.kafka.migrate import Step, group_lag, partition_counts, temporary_topic
from streaming_ml.kafka.topics import pipeline_topics
from tests.fixtures.stack import private_stack
from tests.integration.pipeline import (
    assert_prices_match_service,
    dsn_of,
    execute,
    listings,
    pipeline_settings,
    predictions_for,
    read_topic,
    running_bridge,
    settled,
    wait_until,
    where_stuck,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def old_stack() -> Iterator[Settings]:
    with private_stack("sml-migrate-", with_connectors=False) as settings:
        yield settings


class Crashed(Exception):
    pass


def _by_key(settings: Settings, topic: str, key_field: str) -> dict[int, list[bytes | None]]:
    """Each key's raw values in the order the topic holds them; fails if a key is split
    over partitions."""
    values: dict[int, list[bytes | None]] = {}
    partitions: dict[int, set[int]] = {}
    for record in read_topic(settings, topic, decode_value=False):
        key = record.key[key_field]
        values.setdefault(key, []).append(record.raw_value)
        partitions.setdefault(key, set()).add(record.partition)
    split = {k: p for k, p in partitions.items() if len(p) > 1}
    assert not split, f"keys over several partitions of {topic}: {list(split.items())[:3]}"
    return values


def _prices(rows: dict[int, dict]) -> dict[int, tuple[float, str]]:
    return {i: (r["predicted_price"], r["features_hash"]) for i, r in rows.items()}


def test_topics_migrate_repartitions_without_losing_a_row(
    old_stack: Settings, prediction_service: str
) -> None:
    old = pipeline_settings(old_stack, prediction_service, partitions=1)
    new = old.model_copy(update={"partitions": 3})
    dsn = dsn_of(old)
    table = old.listings_table
    commands.apply(old)  # the old state: every topic with one partition

    with running_bridge(old, from_end=False):
        ids = load_listings(dsn, 300, seed=811, batch=50, table=table).ids
        # Updates and deletes too, so the topics hold several records per key and tombstones.
        execute(
            dsn, f"UPDATE public.{table} SET mileage = mileage + 7 WHERE id = ANY(%s)", (ids[:40],)
        )
        execute(dsn, f"DELETE FROM public.{table} WHERE id = ANY(%s)", (ids[40:50],))
        before = wait_until(
            lambda: settled(dsn, old, ids), 240, "the old stack's predictions",
            explain=lambda: where_stuck(old, dsn, ids),
        )  # fmt: skip
    assert len(before) == 290

    # A change the bridge group has not priced: the migration must refuse, and leave the
    # connectors as it found them.
    pending = load_listings(dsn, 5, seed=812, table=table).ids
    wait_until(lambda: group_lag(old, old.consumer_group, old.listings_topic) >= 5, 60, "changes")
    with pytest.raises(BridgeError, match="not priced"):
        migrate_topics(new)
    assert all(s["state"] == "RUNNING" for s in commands.status(new).values())
    with running_bridge(old, from_end=False):
        wait_until(lambda: settled(dsn, old, ids + pending), 120, "the pending changes priced")
    before = _prices(settled(dsn, old, ids + pending))
    records_before = {
        topic: _by_key(old, topic, field)
        for topic, field in ((old.listings_topic, "id"), (old.predictions_topic, "listing_id"))
    }
    assert len(records_before[old.listings_topic]) >= 305

    # The first run dies while copying the predictions back (a crash: nothing cleaned up);
    # the second finishes from what exists.
    lines: list[str] = []

    def crash_during_copy_back(line: str) -> None:
        lines.append(line)
        if line.startswith(f"{new.predictions_topic}: ") and "copied back" in line:
            raise Crashed(line)

    with pytest.raises(Crashed):
        migrate_topics(new, progress=crash_during_copy_back)
    halfway = {p.topic: p.step for p in migration_plan(new)}
    assert halfway[new.predictions_topic] is Step.COPY_BACK
    assert new.listings_topic not in halfway  # done before the crash
    assert all(s["state"] == "MISSING" for s in commands.status(new).values())

    report = migrate_topics(new, progress=lines.append)

    counts = partition_counts(clients.admin(new))
    ours = pipeline_topics(new)
    assert {t: counts.get(t) for t in ours} == dict.fromkeys(ours, 3)
    assert not {temporary_topic(t) for t in ours} & set(counts)
    assert set(report["topics"]) == set(ours) - {new.listings_topic}
    assert any("copied back" in line for line in lines)
    assert migration_plan(new) == []  # a second run has nothing to do

    # The sinks read the new topics again to their ends; the tables hold what they held.
    wait_until(
        lambda: group_lag(new, sink_group(new.sink_connector), new.predictions_topic) == 0,
        120, "the predictions sink re-read the migrated topic",
    )  # fmt: skip
    assert _prices(predictions_for(dsn, new.predictions_table, ids + pending)) == before
    # Every record is still there, each key in one partition, in the order it was written.
    for topic, field in ((new.listings_topic, "id"), (new.predictions_topic, "listing_id")):
        assert _by_key(new, topic, field) == records_before[topic], topic

    # A bridge of the new count starts at the ends the migration committed: it prices
    # only the new rows, each once, into co-partitioned topics.
    with running_bridge(new, from_end=False):
        more = load_listings(dsn, 200, seed=813, batch=50, table=table).ids
        after = wait_until(
            lambda: settled(dsn, new, more), 240, "new rows priced after the migration",
            explain=lambda: where_stuck(new, dsn, more),
        )  # fmt: skip
    assert_prices_match_service(prediction_service, listings(dsn, table, more), after)
    assert _prices(predictions_for(dsn, new.predictions_table, ids + pending)) == before
    fresh = set(more)
    predictions = [
        r
        for r in read_topic(new, new.predictions_topic, decode_value=False)
        if r.key["listing_id"] in fresh
    ]
    priced = Counter(r.key["listing_id"] for r in predictions)
    assert priced == Counter(dict.fromkeys(more, 1)), "a new row was priced twice or not at all"
    change_partition = {
        r.key["id"]: r.partition
        for r in read_topic(new, new.listings_topic, decode_value=False)
        if r.key["id"] in fresh
    }
    assert len(set(change_partition.values())) > 1, "the new changes use one partition only"
    assert all(r.partition == change_partition[r.key["listing_id"]] for r in predictions)
