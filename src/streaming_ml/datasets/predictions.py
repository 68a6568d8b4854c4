"""Reading the pipeline's output back from the predictions table (the JDBC sink's target).

The demo shows these rows and the tests check them; both wait for them the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, cast

import psycopg2
import psycopg2.extras
from psycopg2 import sql

from streaming_ml.errors import WaitTimeoutError
from streaming_ml.system.waits import Deadline, wait_until

# Poll interval of a bounded wait: short against the pipeline's ~100 ms latency,
# long enough not to load Postgres.
POLL_INTERVAL_S = 0.2


def read_predictions(conn: Any, table: str, ids: Iterable[int]) -> dict[int, dict[str, Any]]:
    """Prediction rows of ``ids`` by listing id, with ``written_ms`` (epoch ms of
    ``written_at``) for latency arithmetic against the ms fields."""
    with conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
        query = sql.SQL(
            "SELECT *, (extract(epoch FROM written_at) * 1000)::bigint AS written_ms "
            "FROM {} WHERE listing_id = ANY(%s)"
        ).format(sql.Identifier("public", table))
        cur.execute(query, (list(ids),))
        return {int(row["listing_id"]): dict(row) for row in cur.fetchall()}


def wait_for_predictions(
    dsn: str,
    table: str,
    ids: Iterable[int],
    timeout_s: float,
    on_progress: Callable[[int, int, float], None] | None = None,
    progress_every_s: float = 5.0,
) -> dict[int, dict[str, Any]]:
    """Poll until every id has a prediction row or ``timeout_s`` passes; return what is
    there (the caller decides whether a shortfall is an error). ``on_progress`` gets
    (found, wanted, elapsed seconds) every ``progress_every_s`` while it waits."""
    wanted = set(ids)
    next_progress = progress_every_s

    def report(rows: dict[int, dict[str, Any]], deadline: Deadline) -> None:
        nonlocal next_progress
        if on_progress is not None and (elapsed := deadline.elapsed()) >= next_progress:
            on_progress(len(rows), len(wanted), elapsed)
            next_progress = elapsed + progress_every_s

    conn = psycopg2.connect(dsn, connect_timeout=10)
    conn.autocommit = True
    try:
        return wait_until(
            lambda: read_predictions(conn, table, wanted),
            done=lambda rows: wanted <= rows.keys(),
            timeout=timeout_s,
            interval=POLL_INTERVAL_S,
            on_wait=report,
            what=f"prediction rows of {len(wanted)} listings",
        )
    except WaitTimeoutError as error:
        return cast("dict[int, dict[str, Any]]", error.last)  # what there is, at the deadline
    finally:
        conn.close()
