"""car_listings changes shape while the stream runs, on a stack of its own.

Each test applies one kind of ``ALTER TABLE`` between two batches of a steady stream of
inserts (an app writing all along), with the bridge, Debezium and the sinks running and
nothing restarted, and checks the documented outcome (docs/schema-evolution.md) row by
row: which listings are priced, at which price, and which are dead-lettered and why.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

import psycopg2
import pytest
import requests
from psycopg2 import errors, sql

from streaming_ml.bridge.reprice import Repricer, RepriceRequest
from streaming_ml.config import Settings
from streaming_ml.datasets.load import load_listings, table_columns
from streaming_ml.datasets.synthetic import generate_listing_records
from streaming_ml.errors import RegistryError
from streaming_ml.models.lifecycle import promote
from streaming_ml.schema.listing import LISTING_COLUMNS
from tests.fixtures.stack import private_stack
from tests.integration.pipeline import (
    RunningBridge,
    assert_prices_match_service,
    dsn_of,
    execute,
    listings,
    pipeline_settings,
    predictions_for,
    query,
    read_topic,
    running_bridge,
    settled,
    wait_for_predictions,
    wait_until,
    where_stuck,
)

pytestmark = pytest.mark.integration

BATCH = 10  # rows per insert
PAUSE_S = 0.05  # between inserts: about 200 rows/s
ROWS_EACH_SIDE = 100  # rows inserted before the change, and after it
SETTLE_S = 180


class Stream:
    """Synthetic listings inserted in batches from a thread, into whichever listing
    columns the table has at the time (``renamed`` maps a column to its new name), as an
    app that follows its table would. ``between_batches`` runs DDL between two inserts,
    so every id is known to be written before or after it."""

    def __init__(self, dsn: str, table: str, seed: int) -> None:
        self.dsn = dsn
        self.table = table
        self.rows = iter(generate_listing_records(20_000, seed))
        self.written: dict[int, dict[str, Any]] = {}
        self.renamed: dict[str, str] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._errors: list[BaseException] = []
        self._thread = threading.Thread(target=self._run, name="listing-stream", daemon=True)

    def __enter__(self) -> Stream:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(30)
        assert not self._errors, f"the insert stream failed: {self._errors[0]!r}"

    def ids(self) -> list[int]:
        with self._lock:
            return sorted(self.written)

    def wait_for(self, count: int) -> list[int]:
        """Ids once at least ``count`` rows are written."""
        return wait_until(lambda: len(self.written) >= count and self.ids(), 60, f"{count} rows")

    def between_batches(self, ddl: str, renamed: dict[str, str] | None = None) -> int:
        """Run ``ddl`` between two inserts (the app learning ``renamed`` columns with it);
        the number of rows written before it."""
        with self._lock:
            execute(self.dsn, ddl)
            if renamed is not None:
                self.renamed = renamed
            return len(self.written)

    def _run(self) -> None:
        try:
            with psycopg2.connect(self.dsn) as conn:
                while not self._stop.wait(PAUSE_S):
                    with self._lock:
                        self._insert(conn, [next(self.rows) for _ in range(BATCH)])
            conn.close()
        except BaseException as error:  # reported by __exit__
            self._errors.append(error)

    def _insert(self, conn: Any, rows: list[dict[str, Any]]) -> None:
        present = table_columns(conn, self.table)
        names = [c.name for c in LISTING_COLUMNS if self.renamed.get(c.name, c.name) in present]
        statement = sql.SQL("INSERT INTO {} ({}) VALUES ({}) RETURNING id").format(
            sql.Identifier("public", self.table),
            sql.SQL(", ").join(sql.Identifier(self.renamed.get(n, n)) for n in names),
            sql.SQL(", ").join(sql.Placeholder() * len(names)),
        )
        with conn.cursor() as cur:
            for row in rows:
                cur.execute(statement, [row[n] for n in names])
                (listing_id,) = cur.fetchone()
                self.written[int(listing_id)] = row
        conn.commit()


@pytest.fixture(scope="module")
def evolving_stack() -> Iterator[Settings]:
    """A stack whose car_listings the tests alter (never the shared stack's)."""
    with private_stack("sml-evolve-") as settings:
        yield settings


@pytest.fixture(scope="module")
def pipeline(evolving_stack: Settings, prediction_service: str) -> Iterator[RunningBridge]:
    settings = pipeline_settings(evolving_stack, prediction_service)
    with running_bridge(settings) as bridge:
        # One listing first, so the change topic's schema is registered before any change.
        dsn = dsn_of(settings)
        first = load_listings(dsn, 1, seed=2300, table=settings.listings_table).ids
        wait_for_predictions(dsn, settings.predictions_table, first)
        yield bridge
        assert not bridge.errors


def across(bridge: RunningBridge, ddl: str, seed: int) -> tuple[list[int], list[int], Stream]:
    """Stream rows, run ``ddl`` between two batches mid-stream, stream as many again:
    the ids written before it and after it."""
    s = bridge.bridge.settings
    with Stream(dsn_of(s), s.listings_table, seed) as stream:
        stream.wait_for(ROWS_EACH_SIDE)
        split = stream.between_batches(ddl)
        stream.wait_for(split + ROWS_EACH_SIDE)
    ids = stream.ids()
    return ids[:split], ids[split:], stream


def all_priced(bridge: RunningBridge, ids: list[int]) -> dict[int, dict[str, Any]]:
    s = bridge.bridge.settings
    dsn = dsn_of(s)
    return wait_until(
        lambda: settled(dsn, s, ids), SETTLE_S, f"{len(ids)} listings priced",
        explain=lambda: where_stuck(s, dsn, ids),
    )  # fmt: skip


def dead_letters(settings: Settings, ids: list[int]) -> dict[int, list[str]]:
    """The DLQ's reasons for each of ``ids`` that has any."""
    wanted = set(ids)
    reasons: dict[int, list[str]] = {}
    for record in read_topic(settings, settings.dlq_topic, decode_value=False):
        if record.key and record.key["id"] in wanted:
            reasons.setdefault(record.key["id"], []).append(record.headers["reason"].decode())
    return reasons


def all_dead_lettered(settings: Settings, ids: list[int]) -> dict[int, list[str]]:
    """The DLQ's reasons once every one of ``ids`` has one."""
    return wait_until(
        lambda: found if len(found := dead_letters(settings, ids)) == len(ids) else None,
        SETTLE_S, f"{len(ids)} dead letters",
    )  # fmt: skip


def value_versions(settings: Settings) -> int:
    subject = f"{settings.listings_topic}-value"
    response = requests.get(f"{settings.registry_url}/subjects/{subject}/versions", timeout=10)
    response.raise_for_status()
    return len(response.json())


def assert_priced_at_service_prices(
    bridge: RunningBridge, service: str, ids: list[int]
) -> dict[int, dict[str, Any]]:
    s = bridge.bridge.settings
    predictions = all_priced(bridge, ids)
    assert sorted(predictions) == sorted(ids)
    assert_prices_match_service(service, listings(dsn_of(s), s.listings_table, ids), predictions)
    return predictions


def test_new_columns_are_ignored_by_the_model_and_every_row_is_priced(
    pipeline: RunningBridge, prediction_service: str
) -> None:
    s = pipeline.bridge.settings
    versions = value_versions(s)
    before, nullable, _ = across(
        pipeline, f"ALTER TABLE public.{s.listings_table} ADD COLUMN colour text", seed=2301
    )
    defaulted_ddl = (
        f"ALTER TABLE public.{s.listings_table} ADD COLUMN warranty_months integer "
        "NOT NULL DEFAULT 12"
    )
    _, defaulted, _ = across(pipeline, defaulted_ddl, seed=2302)
    ids = before + nullable + defaulted
    assert_priced_at_service_prices(pipeline, prediction_service, ids)
    assert dead_letters(s, ids) == {}
    # Each change reached the registry as a new version of the change topic's schema,
    # and the records after it carry the new field, which the model never sees.
    assert value_versions(s) == versions + 2
    last = max(defaulted)
    [event] = [r.value for r in read_topic(s, s.listings_topic) if r.key and r.key["id"] == last]
    assert (event["colour"], event["warranty_months"]) == (None, 12)


def test_widened_feature_columns_keep_every_row_priced(
    pipeline: RunningBridge, prediction_service: str
) -> None:
    s = pipeline.bridge.settings
    versions = value_versions(s)
    ddl = (
        f"ALTER TABLE public.{s.listings_table} ALTER COLUMN mileage TYPE bigint, "
        "ALTER COLUMN tax TYPE bigint, ALTER COLUMN year TYPE bigint"
    )
    before, after, _ = across(pipeline, ddl, seed=2303)
    assert_priced_at_service_prices(pipeline, prediction_service, before + after)
    assert dead_letters(s, before + after) == {}
    assert value_versions(s) == versions + 1
    columns = query(
        dsn_of(s),
        "SELECT data_type FROM information_schema.columns WHERE table_name = %s "
        "AND column_name = 'mileage'",
        (s.listings_table,),
    )
    assert columns == [{"data_type": "bigint"}]


def test_a_dropped_feature_dead_letters_its_rows_alerts_and_blocks_promotion_until_restored(
    pipeline: RunningBridge, prediction_service: str, trained_model_tag: str
) -> None:
    s = pipeline.bridge.settings
    dsn = dsn_of(s)
    table = f"public.{s.listings_table}"
    before, after, stream = across(pipeline, f"ALTER TABLE {table} DROP COLUMN mpg", seed=2304)
    # The rows written before the drop are priced from the features they were sent with.
    priced = wait_for_predictions(dsn, s.predictions_table, before, SETTLE_S)
    assert_prices_match_service(prediction_service, stream.written, priced)
    reasons = all_dead_lettered(s, after)
    # Exactly one dead letter per row written without mpg, naming it; none of them priced.
    assert {i: len(r) for i, r in reasons.items()} == {i: 1 for i in after}
    assert {r[0] for r in reasons.values()} == {
        "mpg: is not in the record: its column was dropped or renamed in the source table"
    }
    assert predictions_for(dsn, s.predictions_table, after) == {}
    assert dead_letters(s, before) == {}
    alerts = wait_until(
        lambda: query(dsn, f"SELECT * FROM public.{s.alerts_table} WHERE kind = 'missing_feature'"),
        SETTLE_S, "the missing_feature alert in its table",
    )  # fmt: skip
    assert {(a["feature"], a["alert_id"]) for a in alerts} == {
        ("mpg", f"missing_feature:mpg:p{a['source_partition']}") for a in alerts
    }
    with pytest.raises(RegistryError, match="mpg is not a column"):
        promote(s, trained_model_tag)

    # Recovery: the column back, then its values (from the app's own copy). Each update
    # carries mpg again and is priced: one row per listing, at the service's price.
    execute(dsn, f"ALTER TABLE {table} ADD COLUMN mpg double precision")
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        for listing_id in before + after:
            cur.execute(
                f"UPDATE {table} SET mpg = %s WHERE id = %s",
                (stream.written[listing_id]["mpg"], listing_id),
            )
    conn.close()
    assert_priced_at_service_prices(pipeline, prediction_service, before + after)
    assert dead_letters(s, before + after) == reasons


def test_a_renamed_feature_is_dead_lettered_until_renamed_back_then_repriced(
    pipeline: RunningBridge, prediction_service: str
) -> None:
    s = pipeline.bridge.settings
    dsn = dsn_of(s)
    table = f"public.{s.listings_table}"
    with Stream(dsn, s.listings_table, seed=2305) as stream:
        stream.wait_for(ROWS_EACH_SIDE)
        split = stream.between_batches(
            f"ALTER TABLE {table} RENAME COLUMN tax TO road_tax", renamed={"tax": "road_tax"}
        )
        stream.wait_for(split + ROWS_EACH_SIDE)
        back = stream.between_batches(
            f"ALTER TABLE {table} RENAME COLUMN road_tax TO tax", renamed={}
        )
        stream.wait_for(back + ROWS_EACH_SIDE)
    ids = stream.ids()
    renamed = ids[split:back]
    priced = ids[:split] + ids[back:]
    assert_priced_at_service_prices(pipeline, prediction_service, priced)
    reasons = all_dead_lettered(s, renamed)
    assert Counter(r for rs in reasons.values() for r in rs) == {
        "tax: is not in the record: its column was dropped or renamed in the source table": len(
            renamed
        )
    }
    assert dead_letters(s, priced) == {}
    # The documented recovery: the column has its name again and the rows kept their
    # values, so re-pricing those rows prices each once.
    job = Repricer(s, dsn, RepriceRequest(where=f"id BETWEEN {renamed[0]} AND {renamed[-1]}")).run()
    assert (job.total, job.done) == (len(renamed), len(renamed))
    assert_priced_at_service_prices(pipeline, prediction_service, ids)
    count = query(
        dsn,
        f"SELECT count(*) AS n FROM public.{s.predictions_table} WHERE listing_id = ANY(%s)",
        (ids,),
    )
    assert count == [{"n": len(ids)}]
    with pytest.raises(errors.UndefinedColumn):
        execute(dsn, f"SELECT road_tax FROM {table}")
