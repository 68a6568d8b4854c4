"""Insert synthetic listings into ``car_listings`` (the demo's, the tests' and the
benchmark's source of change events) and read listings back by id."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from psycopg2 import sql

from streaming_ml.data import LISTING_COLUMNS, generate_listing_records
from streaming_ml.exceptions import DataError, StackError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadSummary:
    inserted: int
    first_id: int | None
    last_id: int | None
    ids: list[int]
    seconds: float

    def describe(self) -> str:
        if not self.inserted:
            return "inserted 0 listings"
        rate = self.inserted / self.seconds if self.seconds > 0 else float("inf")
        return (
            f"inserted {self.inserted} listings (ids {self.first_id}..{self.last_id}) "
            f"in {self.seconds:.1f} s ({rate:.0f} rows/s)"
        )


def connect(dsn: str) -> Any:
    """A psycopg2 connection to the stack's database; StackError with the fix if not."""
    import psycopg2

    try:
        return psycopg2.connect(dsn, connect_timeout=10)
    except psycopg2.OperationalError as error:
        raise StackError(
            f"cannot connect to Postgres ({str(error).strip()}); is the stack up? "
            "Run `streaming-ml stack up`."
        ) from error


def read_listings(conn: Any, table: str, ids: Sequence[int]) -> dict[int, dict[str, Any]]:
    """Rows of ``table`` with these ids (every column), by id; missing ids are absent."""
    import psycopg2.extras

    query = sql.SQL("SELECT * FROM {} WHERE id = ANY(%s) ORDER BY id")
    with conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
        cur.execute(query.format(sql.Identifier("public", table)), (list(ids),))
        return {int(row["id"]): dict(row) for row in cur.fetchall()}


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
) -> LoadSummary:
    """Insert ``records`` in transactions of ``batch`` rows, paced at ``rate`` rows/s.

    Pacing is against the start time (row i is due at ``start + i / rate``), so a
    slow transaction is caught up on instead of shifting every later row.
    """
    import psycopg2
    from psycopg2.extras import execute_values

    if batch < 1:
        raise DataError(f"--batch must be at least 1, got {batch}")
    if rate is not None and rate <= 0:
        raise DataError(f"--rate must be positive, got {rate}")
    statement = insert_statement(table)
    names = [c.name for c in LISTING_COLUMNS]
    conn = connect(dsn)
    ids: list[int] = []
    started = time.monotonic()
    try:
        with conn.cursor() as cur:
            for start in range(0, len(records), batch):
                if rate is not None:
                    due = started + start / rate
                    if (ahead := due - time.monotonic()) > 0:
                        time.sleep(ahead)  # pacing, not a readiness wait
                chunk = records[start : start + batch]
                rows = [tuple(r.get(name) for name in names) for r in chunk]
                returned = execute_values(cur, statement, rows, page_size=len(rows), fetch=True)
                conn.commit()
                ids.extend(int(row[0]) for row in returned)
                if progress:
                    progress(len(ids), len(records))
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
    )
    logger.info(
        "listings inserted",
        extra={"rows": summary.inserted, "first_id": summary.first_id, "last_id": summary.last_id},
    )
    return summary


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
) -> LoadSummary:
    """Generate ``rows`` seeded synthetic listings (``invalid`` of them broken in varied
    ways) and insert them."""
    records = generate_listing_records(rows, seed, invalid=invalid)
    return insert_records(dsn, records, table=table, batch=batch, rate=rate, progress=progress)
