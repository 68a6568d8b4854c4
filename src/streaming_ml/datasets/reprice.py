"""Re-pricing jobs in Postgres: the job table, the chunks of listings and their touch.

A touch is ``UPDATE <listings> SET id = id``: an update that changes no column, which
Debezium still streams (Postgres writes a new row version for every UPDATE) with the
row as it is at that instant, and which the bridge prices like any update
(``kafka.changes``: a "touch"). The job's cursor (``last_id``) advances in the same
transaction as the touch of its chunk, so a job killed at any point resumes after the
last committed chunk and never touches a listing twice.

The user's ``--where`` runs only inside READ ONLY transactions (counting and choosing
each chunk's ids); the transaction that writes sees nothing but ids.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import psycopg2
import psycopg2.extras
from psycopg2 import sql

from streaming_ml.datasets.load import connect
from streaming_ml.errors import RepriceError

logger = logging.getLogger(__name__)

RUNNING = "running"
DONE = "done"
SUPERSEDED = "superseded"

# Chunks per second the throttle aims at: small enough chunks that a rate is kept
# smoothly, few enough transactions that each costs little.
CHUNKS_PER_SECOND = 5
MAX_WHERE_CHARS = 2000


@dataclass(frozen=True)
class Job:
    """One row of the job table."""

    job_id: int
    model_tag: str
    where_sql: str
    rate: float | None
    last_id: int
    max_id: int
    total: int
    done: int
    chunks: int
    state: str
    started_at: dt.datetime
    updated_at: dt.datetime
    finished_at: dt.datetime | None

    @property
    def left(self) -> int:
        """Listings still to touch (an estimate: listings deleted meanwhile are never)."""
        return 0 if self.state != RUNNING else max(0, self.total - self.done)

    def average_rate(self) -> float | None:
        """Rows/s from its start to its last chunk (downtime after a kill included)."""
        seconds = (self.updated_at - self.started_at).total_seconds()
        return self.done / seconds if seconds > 0 and self.done else None

    def as_dict(self) -> dict[str, Any]:
        found = asdict(self)
        for name in ("started_at", "updated_at", "finished_at"):
            if found[name] is not None:
                found[name] = found[name].isoformat()
        rate = self.average_rate()
        found |= {
            "left": self.left,
            "average_rate": round(rate, 1) if rate else None,
            "eta_s": eta_s(self.left, rate),
        }
        return found


def chunk_rows(rate: float | None, max_rows: int) -> int:
    """Listings per chunk: about CHUNKS_PER_SECOND chunks a second at ``rate``, never
    more than ``max_rows`` (unthrottled: ``max_rows``)."""
    if rate is None:
        return max_rows
    return max(1, min(max_rows, math.ceil(rate / CHUNKS_PER_SECOND)))


def eta_s(left: int, rate: float | None) -> float | None:
    """Seconds until ``left`` rows are done at ``rate`` rows/s; None when unknown."""
    if left <= 0:
        return 0.0
    if rate is None or rate <= 0:
        return None
    return left / rate


def due_after_s(rows: int, rate: float | None) -> float:
    """When, in seconds from the run's start, ``rows`` rows may have been touched at
    ``rate``: pacing against the start catches a slow chunk up instead of shifting the rest."""
    return 0.0 if rate is None else rows / rate


def clean_where(where: str | None) -> str:
    """``where`` stripped, or '' for every listing; RepriceError when it cannot be one
    boolean expression (a ``;`` would end it and start another statement)."""
    text = (where or "").strip()
    if ";" in text:
        raise RepriceError(
            "--where must be one boolean expression over the listings' columns, without ';' "
            f"(got {text!r}); e.g. --where \"model = 'Focus' AND year >= 2018\""
        )
    if len(text) > MAX_WHERE_CHARS:
        raise RepriceError(f"--where is longer than {MAX_WHERE_CHARS} characters; shorten it")
    return text


def _condition(where: str) -> sql.Composable:
    # The one place the user's text enters a query: always parenthesised, always run in
    # a READ ONLY transaction (``_read_only``), never where anything is written.
    # Its '%' are doubled: the query is run with parameters, whose markers are '%s'.
    text = where.replace("%", "%%")
    return sql.SQL("({})").format(sql.SQL(text)) if where else sql.SQL("true")


def connect_reader(dsn: str) -> Any:
    """A connection whose transactions are all READ ONLY: the --where runs there only."""
    reader = connect(dsn)
    reader.set_session(readonly=True)
    return reader


def connect_pair(dsn: str) -> tuple[Any, Any]:
    """(reader, writer): READ ONLY transactions for the --where, and the touches."""
    return connect_reader(dsn), connect(dsn)


def _read_only(reader: Any, query: sql.Composable, params: Sequence[Any]) -> list[tuple[Any, ...]]:
    """Rows of ``query`` in a READ ONLY transaction, ended before returning; a query Postgres
    refuses becomes RepriceError naming --where (it is the only text we did not write)."""
    try:
        with reader.cursor() as cur:
            cur.execute(query, params)
            rows = list(cur.fetchall())
        reader.commit()
        return rows
    except psycopg2.Error as error:
        reader.rollback()
        raise RepriceError(
            f"--where was refused by Postgres: {str(error).strip().splitlines()[0]}. It must be "
            "a boolean expression over the listings' columns that reads only, e.g. "
            "--where \"model = 'Focus'\""
        ) from error


def count_matching(reader: Any, listings: str, where: str, max_id: int | None = None) -> int:
    """Listings matching ``where`` (ids up to ``max_id``), counted READ ONLY: this is also
    the check that --where is a boolean expression that writes nothing."""
    query = sql.SQL("SELECT count(*) FROM {} WHERE {} AND id <= %s").format(
        sql.Identifier("public", listings), _condition(where)
    )
    limit = max_id if max_id is not None else 2**63 - 1
    return int(_read_only(reader, query, (limit,))[0][0])


def chunk_ids(
    reader: Any, listings: str, where: str, after: int, max_id: int, limit: int
) -> list[int]:
    """The next ``limit`` ids matching ``where`` in (after, max_id], in primary-key order."""
    query = sql.SQL("SELECT id FROM {} WHERE id > %s AND id <= %s AND {} ORDER BY id LIMIT %s")
    found = _read_only(
        reader,
        query.format(sql.Identifier("public", listings), _condition(where)),
        (after, max_id, limit),
    )
    return [int(row[0]) for row in found]


def check_jobs_table(conn: Any, jobs: str) -> None:
    """RepriceError unless the job table exists. It is part of the schema
    (postgres/02-schema.sql), which `stack up` and compose's postgres-init apply on every
    start; someone else's database gets it from that file."""
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass(%s) IS NOT NULL", (f"public.{jobs}",))
        found = cur.fetchone()
    conn.commit()
    if not (found and found[0]):
        raise RepriceError(
            f"no re-pricing job table {jobs}: the database predates it. Run `streaming-ml "
            "stack up` (it applies postgres/*.sql again, keeping the data), or apply "
            "postgres/02-schema.sql to your own database"
        )


def _job(row: dict[str, Any]) -> Job:
    return Job(**{name: row[name] for name in Job.__dataclass_fields__})


def _fetch(conn: Any, query: sql.Composable, params: Sequence[Any]) -> list[Job]:
    with conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
        cur.execute(query, params)
        rows = [_job(dict(row)) for row in cur.fetchall()]
    conn.commit()
    return rows


def recent_jobs(conn: Any, jobs: str, limit: int = 5) -> list[Job]:
    """The latest jobs, newest first."""
    query = sql.SQL("SELECT * FROM {} ORDER BY job_id DESC LIMIT %s")
    return _fetch(conn, query.format(sql.Identifier("public", jobs)), (limit,))


def unfinished_job(
    conn: Any, jobs: str, tag: str | None = None, where: str | None = None
) -> Job | None:
    """The newest job still running (one a kill interrupted), if any; with ``tag`` and
    ``where``, the newest of that model over those listings."""
    query = sql.SQL(
        "SELECT * FROM {} WHERE state = %s AND (%s IS NULL OR model_tag = %s) "
        "AND (%s IS NULL OR where_sql = %s) ORDER BY job_id DESC LIMIT 1"
    )
    params = (RUNNING, tag, tag, where, where)
    found = _fetch(conn, query.format(sql.Identifier("public", jobs)), params)
    return found[0] if found else None


def create_job(
    reader: Any, writer: Any, *, jobs: str, listings: str, tag: str, where: str, rate: float | None
) -> Job:
    """A new job over every listing matching ``where`` now (ids up to the current last).
    It supersedes the jobs still running whose listings are all in its range: every one
    when it has no ``where``, else those with the same ``where``."""
    table = sql.Identifier("public", listings)
    max_id = int(
        _read_only(reader, sql.SQL("SELECT coalesce(max(id), 0) FROM {}").format(table), ())[0][0]
    )
    total = count_matching(reader, listings, where, max_id)
    with writer.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
        cur.execute(
            sql.SQL(
                "UPDATE {} SET state = %s, finished_at = clock_timestamp() "
                "WHERE state = %s AND (%s = '' OR where_sql = %s)"
            ).format(sql.Identifier("public", jobs)),
            (SUPERSEDED, RUNNING, where, where),
        )
        if cur.rowcount:
            logger.info("superseded unfinished re-pricing jobs", extra={"jobs": cur.rowcount})
        cur.execute(
            sql.SQL(
                "INSERT INTO {} (model_tag, where_sql, rate, max_id, total) "
                "VALUES (%s, %s, %s, %s, %s) RETURNING *"
            ).format(sql.Identifier("public", jobs)),
            (tag, where, rate, max_id, total),
        )
        job = _job(dict(cur.fetchone()))
    writer.commit()
    return job


def touch_chunk(writer: Any, *, jobs: str, listings: str, job: Job, ids: Sequence[int]) -> Job:
    """Touch ``ids`` (ascending, after the job's cursor) and move the cursor to the last of
    them, in one transaction. RepriceError, with nothing touched, when the cursor is no
    longer where ``job`` saw it (another process runs the job) or the job ended."""
    with writer.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
        cur.execute(
            sql.SQL("UPDATE {} SET id = id WHERE id = ANY(%s)").format(
                sql.Identifier("public", listings)
            ),
            (list(ids),),
        )
        touched = cur.rowcount  # a listing deleted since its id was read is not touched
        # Compare-and-set: this row's lock orders two runners of one job; the second
        # finds the cursor moved and rolls its touch back.
        cur.execute(
            sql.SQL(
                "UPDATE {} SET last_id = %s, done = done + %s, chunks = chunks + 1, "
                "updated_at = clock_timestamp() "
                "WHERE job_id = %s AND last_id = %s AND state = %s RETURNING *"
            ).format(sql.Identifier("public", jobs)),
            (ids[-1], touched, job.job_id, job.last_id, RUNNING),
        )
        row = cur.fetchone()
    if row is None:
        writer.rollback()
        raise RepriceError(
            f"re-pricing job {job.job_id} moved on without this process (another "
            "`streaming-ml reprice` runs it, or it was superseded); see the dashboard's "
            "re-pricing panel or the job table"
        )
    writer.commit()
    return _job(dict(row))


def finish_job(writer: Any, jobs: str, job: Job) -> Job:
    """Mark the job done: no listing is left after its cursor."""
    with writer.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
        cur.execute(
            sql.SQL(
                "UPDATE {} SET state = %s, last_id = max_id, finished_at = clock_timestamp(), "
                "updated_at = clock_timestamp() WHERE job_id = %s AND state = %s RETURNING *"
            ).format(sql.Identifier("public", jobs)),
            (DONE, job.job_id, RUNNING),
        )
        row = cur.fetchone()
    writer.commit()
    return _job(dict(row)) if row is not None else job


def stale_predictions(reader: Any, *, listings: str, predictions: str, job: Job) -> int:
    """Champion-arm prediction rows in the job's range that name another model: zero once
    every touch (or a newer streamed change) has been priced and written. A listing with
    no row (one the bridge dead-lettered) is not counted: a touch cannot price it either;
    nor is one an A/B experiment's challenger prices."""
    query = sql.SQL(
        "SELECT count(*) FROM {p} WHERE model_tag IS DISTINCT FROM %s "
        "AND coalesce(arm, 'champion') = 'champion' AND listing_id IN "
        "(SELECT id FROM {l} WHERE id <= %s AND {cond})"
    ).format(
        l=sql.Identifier("public", listings),
        p=sql.Identifier("public", predictions),
        cond=_condition(job.where_sql),
    )
    return int(_read_only(reader, query, (job.model_tag, job.max_id))[0][0])
