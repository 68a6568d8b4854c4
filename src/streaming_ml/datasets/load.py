"""Insert synthetic listings into ``car_listings`` (the demo's, the tests' and the
benchmark's source of change events) and read listings back by id."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psycopg2
import psycopg2.extras
from psycopg2 import sql
from psycopg2.extras import execute_values

from streaming_ml.datasets.csv import listing_records, load_listings_csv
from streaming_ml.datasets.synthetic import Shift, generate_listing_records
from streaming_ml.errors import DataError, StackError
from streaming_ml.schema.listing import LISTING_COLUMNS, TARGET

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadSummary:
    inserted: int
    first_id: int | None
    last_id: int | None
    ids: list[int]
    seconds: float
    labelled: list[int] = field(default_factory=list)  # late-labels: ids given a price later

    def as_dict(self) -> dict[str, Any]:
        return {
            "inserted": self.inserted, "first_id": self.first_id, "last_id": self.last_id,
            "seconds": round(self.seconds, 3), "labelled_later": len(self.labelled),
        }  # fmt: skip

    def describe(self) -> str:
        if not self.inserted:
            return "inserted 0 listings"
        rate = self.inserted / self.seconds if self.seconds > 0 else float("inf")
        labelled = f", {len(self.labelled)} labelled later" if self.labelled else ""
        return (
            f"inserted {self.inserted} listings (ids {self.first_id}..{self.last_id}) "
            f"in {self.seconds:.1f} s ({rate:.0f} rows/s){labelled}"
        )


def connect(dsn: str) -> Any:
    """A psycopg2 connection to the stack's database; StackError with the fix if not."""

    try:
        return psycopg2.connect(dsn, connect_timeout=10)
    except psycopg2.OperationalError as error:
        raise StackError(
            f"cannot connect to Postgres ({str(error).strip()}); is the stack up? "
            "Run `streaming-ml stack up`."
        ) from error


def read_listings(conn: Any, table: str, ids: Sequence[int]) -> dict[int, dict[str, Any]]:
    """Rows of ``table`` with these ids (every column), by id; missing ids are absent."""

    query = sql.SQL("SELECT * FROM {} WHERE id = ANY(%s) ORDER BY id")
    with conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
        cur.execute(query.format(sql.Identifier("public", table)), (list(ids),))
        return {int(row["id"]): dict(row) for row in cur.fetchall()}


def table_columns(conn: Any, table: str) -> dict[str, str]:
    """The columns of ``public.table`` and their Postgres types (information_schema's
    ``data_type``, e.g. ``integer``, ``text``); empty when there is no such table."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT column_name, data_type FROM information_schema.columns"
            " WHERE table_schema = 'public' AND table_name = %s",
            (table,),
        )
        return {str(name): str(data_type) for name, data_type in cur.fetchall()}


def insert_statement(table: str) -> sql.Composed:
    columns = sql.SQL(", ").join(sql.Identifier(c.name) for c in LISTING_COLUMNS)
    return sql.SQL("INSERT INTO {} ({}) VALUES %s RETURNING id").format(
        sql.Identifier("public", table), columns
    )


def insert_records(
    dsn: str,
    records: Sequence[Mapping[str, Any]],
    *,
    table: str = "car_listings",
    batch: int = 500,
    rate: float | None = None,
    progress: Callable[[int, int], None] | None = None,
    late_labels: LateLabels | None = None,
) -> LoadSummary:
    """Insert ``records`` in transactions of ``batch`` rows, paced at ``rate`` rows/s.

    Pacing is against the start time (row i is due at ``start + i / rate``), so a
    slow transaction is caught up on instead of shifting every later row. With
    ``late_labels`` the rows go in without a price, and an UPDATE sets the price of
    some of them ``late_labels.delay_s`` after their insert.
    """

    if batch < 1:
        raise DataError(f"--batch must be at least 1, got {batch}")
    if rate is not None and rate <= 0:
        raise DataError(f"--rate must be positive, got {rate}")
    statement = insert_statement(table)
    names = [c.name for c in LISTING_COLUMNS]
    conn = connect(dsn)
    ids: list[int] = []
    pending: list[tuple[float, list[tuple[int, Any]]]] = []  # (due, [(id, price)])
    labelled: list[int] = []
    started = time.monotonic()
    try:
        with conn.cursor() as cur:
            for start in range(0, len(records), batch):
                if rate is not None:
                    due = started + start / rate
                    if (ahead := due - time.monotonic()) > 0:
                        time.sleep(ahead)  # pacing, not a readiness wait
                chunk = records[start : start + batch]
                rows = [
                    tuple(None if late_labels and name == TARGET else r.get(name) for name in names)
                    for r in chunk
                ]
                returned = execute_values(cur, statement, rows, page_size=len(rows), fetch=True)
                conn.commit()
                new_ids = [int(row[0]) for row in returned]
                ids.extend(new_ids)
                if late_labels:
                    chosen = late_labels.chosen(start, len(chunk))
                    labels = [(new_ids[i], chunk[i][TARGET]) for i in chosen]
                    pending.append((time.monotonic() + late_labels.delay_s, labels))
                    labelled += _label_due(cur, conn, table, pending, wait=False)
                if progress:
                    progress(len(ids), len(records))
            labelled += _label_due(cur, conn, table, pending, wait=True)
    except psycopg2.Error as error:
        conn.rollback()
        raise StackError(
            f"inserting into {table} failed after {len(ids)} rows: {str(error).strip()}. "
            f"The rows before were committed. Check that {table} has the listing columns "
            "(`streaming-ml stack psql`) and see `streaming-ml stack logs postgres`."
        ) from error
    finally:
        conn.close()
    seconds = time.monotonic() - started
    summary = LoadSummary(
        inserted=len(ids),
        first_id=min(ids) if ids else None,
        last_id=max(ids) if ids else None,
        ids=ids,
        seconds=seconds,
        labelled=labelled,
    )
    logger.info(
        "listings inserted",
        extra={"rows": summary.inserted, "first_id": summary.first_id, "last_id": summary.last_id},
    )
    return summary


@dataclass(frozen=True)
class LateLabels:
    """Rows go in with a NULL price; ``share`` of them (a seeded choice) get it by an
    UPDATE ``delay_s`` seconds later, the others never."""

    delay_s: float = 2.0
    share: float = 0.8
    seed: int = 0

    def chosen(self, start: int, n: int) -> list[int]:
        """Positions in a chunk (rows ``start``.. of the load) that get their label."""

        rng = np.random.default_rng([self.seed, start])
        return [i for i in range(n) if rng.random() < self.share]


def _label_due(
    cur: Any,
    conn: Any,
    table: str,
    pending: list[tuple[float, list[tuple[int, Any]]]],
    wait: bool,
) -> list[int]:
    """Set the price of the rows whose label is due (all of them when ``wait``)."""

    done: list[int] = []
    statement = sql.SQL(
        "UPDATE {table} SET {price} = data.price FROM (VALUES %s) AS data(id, price) "
        "WHERE {table}.id = data.id"
    ).format(table=sql.Identifier("public", table), price=sql.Identifier(TARGET))
    while pending and (wait or pending[0][0] <= time.monotonic()):
        due, labels = pending.pop(0)
        if (ahead := due - time.monotonic()) > 0:
            time.sleep(ahead)  # the label delay is the scenario, not a readiness wait
        if labels:
            execute_values(cur, statement, labels, page_size=len(labels))
            conn.commit()
            done.extend(i for i, _ in labels)
    return done


# Scenarios for demos and tests (docs/monitoring.md): what changes, and from which row.
SCENARIOS = ("normal", "price-shift", "feature-shift", "late-labels")
PRICE_SHIFT = Shift(price_factors={"Kuga": 1.2, "EcoSport": 1.2})
FEATURE_SHIFT = Shift(mileage_scale=2.5)


def scenario_records(
    scenario: str, rows: int, seed: int, invalid: int = 0, lead_in: int | None = None
) -> list[dict[str, Any]]:
    """The listings of a scenario. The shifts start after ``lead_in`` normal rows
    (default a quarter of them, at most 2,000) so detectors see the change happen."""
    if scenario not in SCENARIOS:
        raise DataError(f"unknown scenario {scenario!r}; choose one of {', '.join(SCENARIOS)}")
    shift = {"price-shift": PRICE_SHIFT, "feature-shift": FEATURE_SHIFT}.get(scenario)
    if shift is None:
        return generate_listing_records(rows, seed, invalid=invalid)
    normal = min(rows // 4, 2_000) if lead_in is None else max(0, min(lead_in, rows))
    before = generate_listing_records(normal, seed, invalid=invalid)
    after = generate_listing_records(rows - normal, seed + 1, shift=shift)
    return before + after


def csv_records(path: Path, rows: int | None = None) -> tuple[list[dict[str, Any]], str]:
    """A user's own listings from a CSV, cleaned as training cleans them (a row that
    cannot be a listing cannot be inserted), the first ``rows`` of them when given, and
    the cleaning's report."""
    loaded = load_listings_csv(path)
    records = listing_records(loaded.frame)
    return (records if rows is None else records[:rows]), loaded.report()


def load_listings(
    dsn: str,
    rows: int,
    *,
    seed: int = 0,
    invalid: int = 0,
    rate: float | None = None,
    batch: int = 500,
    table: str = "car_listings",
    progress: Callable[[int, int], None] | None = None,
    scenario: str = "normal",
    lead_in: int | None = None,
    label_delay_s: float = 2.0,
    label_share: float = 0.8,
    records: Sequence[Mapping[str, Any]] | None = None,
) -> LoadSummary:
    """Insert ``records`` when given (a user's own rows), else ``rows`` seeded synthetic
    listings of a scenario (``invalid`` of them broken in varied ways)."""
    if records is None:
        records = scenario_records(scenario, rows, seed, invalid, lead_in)
    late = LateLabels(label_delay_s, label_share, seed) if scenario == "late-labels" else None
    return insert_records(
        dsn, records, table=table, batch=batch, rate=rate, progress=progress, late_labels=late
    )
