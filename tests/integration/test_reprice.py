"""Re-pricing on promotion, on the real stack: every listing ends with the new champion's
price for its latest features, while inserts and updates stream, through a kill -9.

The re-pricing runs as `streaming-ml` child processes (so it can be killed for real);
the bridge runs in this process, the service follows a registry of the test's own.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import psycopg2
import pytest

from streaming_ml.bridge.reprice import Repricer, RepriceRequest
from streaming_ml.config import REPO_ROOT, Settings
from streaming_ml.datasets.load import load_listings
from streaming_ml.datasets.reprice import DONE, RUNNING, recent_jobs
from streaming_ml.errors import RepriceError
from streaming_ml.kafka.changes import CHANGED_HEADER, header_columns
from streaming_ml.schema.ddl import reprice_jobs_ddl
from streaming_ml.schema.listing import features_hash
from streaming_ml.stack import postgres_dsn
from streaming_ml.stack.secrets import READER_ROLE
from tests.integration.following import champion_is, following_service, own_registry
from tests.integration.pipeline import (
    dsn_of,
    execute,
    listings,
    pipeline_settings,
    predictions_for,
    query,
    read_topic,
    running_bridge,
    settings_env,
    settled,
    wait_until,
    where_stuck,
)
from tests.integration.test_model_lifecycle import local_prices

pytestmark = pytest.mark.integration

PRICED_ROWS = 20_000
STREAM_RATE = 500  # rows/s: half inserts, half feature updates
REPRICE_RATE = 1_000


def streaming(settings: Settings, dsn: str, ids: list[int], stop: threading.Event) -> Any:
    """Inserts and feature updates at STREAM_RATE rows/s until ``stop``; returns the
    threads and what they did (inserted ids, updated id counts)."""
    inserted: list[int] = []
    updated: Counter[int] = Counter()

    def insert() -> None:
        seed = 900
        while not stop.is_set():
            summary = load_listings(
                dsn, STREAM_RATE // 2, seed=seed, rate=STREAM_RATE / 2, batch=10,
                table=settings.listings_table,
            )  # fmt: skip
            inserted.extend(summary.ids)
            seed += 1

    def update() -> None:
        pick = random.Random(5)
        table = settings.listings_table
        started, done = time.monotonic(), 0
        while not stop.is_set():
            chunk = pick.sample(ids, 10)
            execute(dsn, f"UPDATE public.{table} SET mileage = mileage + 1 WHERE id = ANY(%s)",
                    (chunk,))  # fmt: skip
            updated.update(chunk)
            done += len(chunk)
            ahead = started + done / (STREAM_RATE / 2) - time.monotonic()
            if ahead > 0:
                stop.wait(ahead)  # pacing

    threads = [threading.Thread(target=t, daemon=True) for t in (insert, update)]
    for thread in threads:
        thread.start()
    return threads, inserted, updated


def cli(settings: Settings, log: Path, *args: str) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "streaming_ml.cli", *args],
            cwd=REPO_ROOT, env=settings_env(settings), stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip


def job_rows(dsn: str, table: str) -> list[dict[str, Any]]:
    return query(dsn, f"SELECT * FROM public.{table} ORDER BY job_id")


def own_jobs_table(dsn: str) -> str:
    """A job table of the test's own, made as postgres/02-schema.sql makes the real one
    (readable by the dashboard's role too)."""
    table = f"reprice_jobs_{uuid.uuid4().hex[:8]}"
    execute(dsn, reprice_jobs_ddl(table))
    execute(dsn, f"GRANT SELECT ON public.{table} TO {READER_ROLE}")
    return table


def test_promote_with_reprice_survives_a_kill_and_leaves_every_row_on_the_new_champion(
    stack_settings: Settings, trained_model_tag: str, second_model_tag: str, tmp_path: Path
) -> None:
    a, b = trained_model_tag, second_model_tag
    registry_settings = own_registry(stack_settings)
    jobs_table = own_jobs_table(dsn_of(stack_settings))
    with following_service(registry_settings, a, tmp_path / "service.log") as service:
        wait_until(lambda: champion_is(service, a), 30, "model A claimed as champion")
        settings = pipeline_settings(
            registry_settings, service.url, reprice_jobs_table=jobs_table,
            reprice_swap_timeout_s=60.0,
        )  # fmt: skip
        dsn = dsn_of(settings)
        with running_bridge(settings) as bridge:
            ids = load_listings(dsn, PRICED_ROWS, seed=77, table=settings.listings_table).ids
            first = min(ids)
            wait_until(
                lambda: settled(dsn, settings, ids), 300, f"{PRICED_ROWS} listings priced by A",
                explain=lambda: where_stuck(settings, dsn, ids),
            )  # fmt: skip
            # Only our listings (the session's stack holds other tests' too).
            where = f"id >= {first}"

            # Not the champion yet: refused, nothing written.
            with pytest.raises(RepriceError, match="the champion is"):
                Repricer(settings, dsn, RepriceRequest(model=b, where=where)).run()
            # A --where that would write is refused by the READ ONLY transaction.
            writes = f"id > 0 AND nextval('{settings.listings_table}_id_seq') > 0"
            with pytest.raises(RepriceError, match="refused by Postgres"):
                Repricer(settings, dsn, RepriceRequest(where=writes)).run()
            assert job_rows(dsn, jobs_table) == []

            stop = threading.Event()
            threads, inserted, updated = streaming(settings, dsn, ids, stop)
            try:
                stop.wait(3)  # the stream runs before the promotion too
                promote = cli(
                    settings, tmp_path / "promote.log", "model", "promote", b, "--force",
                    "--reprice", "--where", where, "--rate", str(REPRICE_RATE),
                    "--settle-timeout", "0",
                )  # fmt: skip
                halfway = wait_until(
                    lambda: [
                        j for j in job_rows(dsn, jobs_table) if j["done"] >= j["total"] // 2
                    ],
                    180, "the re-pricing job halfway",
                )  # fmt: skip
                promote.send_signal(signal.SIGKILL)
                promote.wait(timeout=30)
                killed = job_rows(dsn, jobs_table)
                assert len(killed) == 1 and killed[0]["state"] == RUNNING, killed
                assert halfway[0]["done"] <= killed[0]["done"] < killed[0]["total"]

                resume = cli(settings, tmp_path / "resume.log", "reprice", "--resume",
                             "--settle-timeout", "0")  # fmt: skip
                assert resume.wait(timeout=240) == 0, (tmp_path / "resume.log").read_text()[-3000:]
            finally:
                stop.set()
                for thread in threads:
                    thread.join(timeout=60)
            assert not any(t.is_alive() for t in threads)
            (job,) = job_rows(dsn, jobs_table)
            assert job["state"] == DONE and job["model_tag"] == b
            assert job["done"] == job["total"], job  # no listing was deleted meanwhile
            # What the dashboard's panel reads, as the read-only role.
            reader = psycopg2.connect(postgres_dsn(settings, "reader"))
            try:
                (seen,) = recent_jobs(reader, jobs_table)
            finally:
                reader.close()
            assert (seen.job_id, seen.state, seen.left) == (job["job_id"], DONE, 0)

            everyone = sorted(set(ids) | set(inserted))

            def all_on_b() -> dict[int, dict[str, Any]]:
                found = settled(dsn, settings, everyone)
                return found if all(p["model_tag"] == b for p in found.values()) else {}

            predictions = wait_until(
                all_on_b, 300, "every listing priced by B for its latest features",
                explain=lambda: where_stuck(settings, dsn, everyone),
            )  # fmt: skip
            assert bridge.bridge.stats.dlq == 0

    # Exact final state: one row per listing, each B's price of its current features.
    rows = listings(dsn, settings.listings_table, everyone)
    assert len(predictions) == len(rows) == len(everyone)
    assert {p["model_tag"] for p in predictions.values()} == {b}
    assert all(predictions[i]["features_hash"] == features_hash(rows[i]) for i in everyone)
    assert [predictions[i]["predicted_price"] for i in everyone] == local_prices(
        b, [rows[i] for i in everyone]
    )
    assert predictions_for(dsn, settings.predictions_table, everyone) == predictions
    assert sum(updated.values()) > 0 and len(inserted) > 0

    # No listing touched twice by the backfill, none missed: exactly one touch (an update
    # that changed no column; the stream's updates all change mileage) per listing in the
    # job's range on the change topic.
    touches: Counter[int] = Counter()
    ours = set(ids) | set(inserted)
    for record in read_topic(settings, settings.listings_topic):
        lid = record.key["id"]
        update = record.value is not None and record.value.get("__op") == "u"
        if lid in ours and update and header_columns(record.headers, CHANGED_HEADER) == set():
            touches[lid] += 1
    in_range = {i for i in ours if first <= i <= job["max_id"]}
    assert set(touches) == in_range, (sorted(set(touches) ^ in_range)[:5], len(in_range))
    assert set(touches.values()) == {1}, Counter(touches.values())


def test_a_stale_cursor_touches_nothing_and_jobs_resume_or_supersede_by_what_they_cover(
    stack_settings: Settings,
) -> None:
    """Two runners of one job: the one whose cursor is stale rolls its touch back (the
    compare-and-set on the job row), so no listing is touched twice."""
    from streaming_ml.datasets import reprice as jobs

    dsn = dsn_of(stack_settings)
    table, listings_table = own_jobs_table(dsn), stack_settings.listings_table
    ids = load_listings(dsn, 6, seed=78, table=listings_table).ids
    where = f"id >= {min(ids)} AND model LIKE '%'"  # a '%' reaches Postgres as written
    reader, writer = jobs.connect_pair(dsn)
    try:
        job = jobs.create_job(
            reader, writer, jobs=table, listings=listings_table, tag="m:b", where=where, rate=None
        )
        assert job.total == jobs.count_matching(reader, listings_table, where, job.max_id) == 6
        chunk = jobs.chunk_ids(reader, listings_table, where, job.last_id, job.max_id, 4)
        assert chunk == sorted(ids)[:4]
        moved = jobs.touch_chunk(writer, jobs=table, listings=listings_table, job=job, ids=chunk)
        versions = query(dsn, f"SELECT id, xmin::text FROM public.{listings_table} "
                              "WHERE id = ANY(%s) ORDER BY id", (chunk,))  # fmt: skip
        with pytest.raises(RepriceError, match="moved on without this process"):
            jobs.touch_chunk(writer, jobs=table, listings=listings_table, job=job, ids=chunk)
        assert query(dsn, f"SELECT id, xmin::text FROM public.{listings_table} "
                          "WHERE id = ANY(%s) ORDER BY id", (chunk,)) == versions  # fmt: skip
        assert (moved.last_id, moved.done, moved.chunks) == (chunk[-1], 4, 1)

        # The same model and --where resume it; another --where leaves it running;
        # no --where supersedes it (its listings are all in the new range).
        assert jobs.unfinished_job(reader, table, "m:b", where) == moved
        assert jobs.unfinished_job(reader, table, "m:b", "id > 0") is None
        other = jobs.create_job(
            reader, writer, jobs=table, listings=listings_table, tag="m:b", where="id < 0",
            rate=None,
        )  # fmt: skip
        assert (other.total, jobs.unfinished_job(reader, table, "m:b", where)) == (0, moved)
        everything = jobs.create_job(
            reader, writer, jobs=table, listings=listings_table, tag="m:b", where="", rate=None
        )
        states = {r["job_id"]: r["state"] for r in job_rows(dsn, table)}
        assert states == {
            moved.job_id: "superseded",
            other.job_id: "superseded",
            everything.job_id: RUNNING,
        }
    finally:
        reader.close()
        writer.close()
