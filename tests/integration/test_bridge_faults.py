"""The bridge under faults, on the real stack: replicas killed and added, rebalances while
paused, a misbehaving service, Kafka and Kafka Connect restarts. Each test asserts the
exact final state: one row per live listing, each with the price of its current
features, no row for a deleted listing, and only the records that deserve it in the DLQ.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path

import pytest

from streaming_ml.bench.kafka import LagProbe
from streaming_ml.config import Settings
from streaming_ml.datasets.load import insert_records, load_listings
from streaming_ml.datasets.synthetic import generate_listing_records
from streaming_ml.stack import stop_component, up
from tests.fixtures.ports import free_port
from tests.integration.pipeline import (
    assert_prices_match_service,
    dsn_of,
    execute,
    listings,
    pipeline_settings,
    predictions_for,
    query,
    read_topic,
    restartable_service,
    running_bridge,
    settled,
    start_bridge_process,
    start_group_at_end,
    stop_processes,
    wait_for_predictions,
    wait_until,
    where_stuck,
)
from tests.integration.stub_service import MODEL_TAG, stub_price, stub_service

pytestmark = pytest.mark.integration


def group_drained(settings: Settings) -> bool:
    probe = LagProbe(settings, settings.consumer_group, settings.listings_topic)
    try:
        return probe.lag() == 0
    finally:
        probe.close()


def test_three_bridges_survive_kill_term_and_a_fourth_joining(
    stack_settings: Settings, prediction_service: str, tmp_path: Path
) -> None:
    settings = pipeline_settings(stack_settings, prediction_service)
    dsn = dsn_of(settings)
    source = settings.listings_table
    log = tmp_path / "bridges.log"
    # Least privilege, proven: the bridges get a state dir without the stack's passwords.
    no_secrets = tmp_path / "bridge-state"
    no_secrets.mkdir()
    start_group_at_end(settings)
    bridges = [start_bridge_process(settings, log, no_secrets) for _ in range(3)]
    before = query(dsn, f"SELECT coalesce(max(id), 0) AS top FROM public.{source}")[0]["top"]

    def priced(at_least: int) -> bool:
        sql = f"SELECT count(*) AS n FROM public.{settings.predictions_table} WHERE listing_id > %s"
        return query(dsn, sql, (before,))[0]["n"] >= at_least

    try:
        inserted: list[int] = []
        loader = threading.Thread(
            target=lambda: inserted.extend(
                load_listings(dsn, 3000, seed=201, rate=200, batch=10, table=source).ids
            )
        )
        loader.start()
        # Each fault lands mid-stream (the load lasts 15 s), after a share of it is priced.
        wait_until(lambda: priced(300), 120, "300 listings priced before the kill")
        bridges[0].send_signal(signal.SIGKILL)
        wait_until(lambda: priced(1000), 120, "1,000 listings priced before the SIGTERM")
        bridges[1].send_signal(signal.SIGTERM)
        wait_until(lambda: priced(1500), 120, "1,500 listings priced before the 4th bridge")
        bridges.append(start_bridge_process(settings, log, no_secrets))
        loader.join(timeout=120)
        assert not loader.is_alive()
        assert bridges[1].wait(timeout=60) == 0, "SIGTERM must stop a bridge cleanly"
        assert len(set(inserted)) == 3000
        wait_for_predictions(dsn, settings.predictions_table, inserted)

        # Every listing updated five times in quick succession (five transactions).
        for step in range(1, 6):
            execute(
                dsn,
                f"UPDATE public.{source} SET mileage = mileage + %s WHERE id = ANY(%s)",
                (step * 7, inserted),
            )
        predictions = wait_until(
            lambda: settled(dsn, settings, inserted),
            240,
            "the last update of each listing",
            explain=lambda: where_stuck(settings, dsn, inserted),
        )
        for alive in (bridges[2], bridges[3]):
            assert alive.poll() is None, log.read_text()[-3000:]
    finally:
        stop_processes(bridges)
    assert len(predictions) == 3000
    rows = listings(dsn, source, inserted)
    assert_prices_match_service(prediction_service, rows, predictions)
    assert not list(no_secrets.iterdir()), "a bridge wrote state (it needs none)"


def test_rebalance_while_paused_leaves_no_ghost_row_and_no_stale_price(
    stack_settings: Settings, trained_model_tag: str, tmp_path: Path
) -> None:
    start_service = restartable_service(stack_settings, trained_model_tag, tmp_path / "service.log")

    service = start_service()
    settings = pipeline_settings(stack_settings, service.url, service_backoff_s=0.1)
    dsn = dsn_of(settings)
    source = settings.listings_table
    try:
        with running_bridge(settings) as first:
            ids = load_listings(dsn, 60, seed=202, batch=6, table=source).ids
            wait_for_predictions(dsn, settings.predictions_table, ids)

            service.stop()
            execute(dsn, f"UPDATE public.{source} SET year = year - 1 WHERE id = ANY(%s)", (ids,))
            wait_until(lambda: first.bridge.metrics.paused._value.get() == 1, 60, "a pause")
            second_settings = settings.model_copy(update={"bridge_metrics_port": free_port()})
            with running_bridge(second_settings, from_end=False) as second:
                wait_until(lambda: second.bridge.assignment, 60, "the second bridge's partitions")
                gone, changed_then_gone = ids[0], ids[1]
                execute(dsn, f"UPDATE public.{source} SET tax = tax + 5 WHERE id = %s",
                        (changed_then_gone,))  # fmt: skip
                execute(dsn, f"DELETE FROM public.{source} WHERE id = ANY(%s)",
                        ([gone, changed_then_gone],))  # fmt: skip
                assert not second.errors and not first.errors
                service = start_service()
                predictions = wait_until(
                    lambda: settled(dsn, settings, ids),
                    180,
                    "every change priced after the pause",
                    explain=lambda: where_stuck(settings, dsn, ids),
                )
                # Both group members drained: a late write would have landed by now.
                wait_until(lambda: group_drained(settings), 60, "the group's lag to reach 0")
            # The second bridge left: the partitions it took come back to the first, which
            # paused them before they went (librdkafka keeps that flag) and must resume them.
            wait_until(
                lambda: len(first.bridge.assignment) == settings.partitions,
                60,
                "the first bridge to own every partition again",
            )
            more = load_listings(dsn, 30, seed=203, batch=3, table=source).ids
            wait_until(
                lambda: settled(dsn, settings, more),
                120,
                "listings inserted after the second bridge left",
                explain=lambda: where_stuck(settings, dsn, more),
            )
        after = predictions_for(dsn, settings.predictions_table, ids)
        rows = listings(dsn, source, ids)
        assert gone not in after and changed_then_gone not in after
        assert sorted(after) == sorted(rows) and len(after) == len(ids) - 2 == len(predictions)
        assert_prices_match_service(service.url, rows, after)
    finally:
        service.stop()


def test_fault_matrix_dead_letters_only_the_always_failing_record(
    stack_settings: Settings,
) -> None:
    with stub_service(stack_settings.host) as (url, faults):
        settings = pipeline_settings(
            stack_settings, url, request_timeout_s=1.0, service_backoff_s=0.1,
            service_retries=1, service_max_strikes=3,
        )  # fmt: skip
        dsn = dsn_of(settings)
        source = settings.listings_table
        seeds = iter(range(210, 230))
        ids: list[int] = []

        def insert(n: int) -> list[int]:
            new = load_listings(dsn, n, seed=next(seeds), batch=5, table=source).ids
            ids.extend(new)
            return new

        with running_bridge(settings) as running:
            wait_for_predictions(dsn, settings.predictions_table, insert(20))

            faults.burst_429_every = 3  # 429 bursts
            wait_for_predictions(dsn, settings.predictions_table, insert(40))
            faults.burst_429_every = 0

            faults.status = 404  # a wrong URL / an old service, for a while
            during_404 = insert(20)
            wait_until(lambda: running.bridge.metrics.paused._value.get() == 1, 60, "a pause")
            assert not predictions_for(dsn, settings.predictions_table, during_404)
            faults.status = None
            wait_for_predictions(dsn, settings.predictions_table, during_404)

            faults.poison_model = "Poison"  # one record that always gets 500
            poison_row = {**generate_listing_records(1, seed=231)[0], "model": "Poison"}
            poison = insert_records(dsn, [poison_row], table=source, batch=1).ids[0]
            ids.append(poison)
            wait_for_predictions(dsn, settings.predictions_table, insert(30))

            faults.slow_calls, faults.slow_s = 1, 1.5  # slower than the 1 s timeout
            wait_for_predictions(dsn, settings.predictions_table, insert(20))

            faults.short_answers = 2  # wrong-length answers
            wait_for_predictions(dsn, settings.predictions_table, insert(20))

            wait_until(lambda: running.bridge.stats.dlq >= 1, 60, "the poison record's DLQ entry")
            assert running.thread.is_alive() and not running.errors
            dlq_count = running.bridge.stats.dlq

    good = [i for i in ids if i != poison]
    predictions = predictions_for(dsn, settings.predictions_table, ids)
    assert sorted(predictions) == sorted(good)
    rows = listings(dsn, source, good)
    assert all(predictions[i]["predicted_price"] == stub_price(rows[i]) for i in good)
    assert {predictions[i]["model_tag"] for i in good} == {MODEL_TAG}
    dead = [r for r in read_topic(settings, settings.dlq_topic, decode_value=False)
            if r.key["id"] in set(ids)]  # fmt: skip
    assert [r.key["id"] for r in dead] == [poison]
    assert dlq_count == 1
    reason = dead[0].headers["reason"].decode()
    assert "HTTP 500" in reason and "failed 3 times" in reason, reason


def test_kafka_and_connect_restarts_under_load_lose_and_duplicate_nothing(
    stack_settings: Settings, prediction_service: str
) -> None:
    settings = pipeline_settings(stack_settings, prediction_service)
    dsn = dsn_of(settings)
    source = settings.listings_table
    second_settings = settings.model_copy(update={"bridge_metrics_port": free_port()})
    inserted: list[int] = []
    with (
        running_bridge(settings) as first,
        running_bridge(second_settings, from_end=False) as second,
    ):
        loader = threading.Thread(
            target=lambda: inserted.extend(
                load_listings(dsn, 1500, seed=240, rate=60, batch=3, table=source).ids
            )
        )
        loader.start()
        wait_until(lambda: first.bridge.stats.predicted >= 100, 120, "the bridges at work")
        stop_component(settings, "kafka")
        up(settings)
        recovered_at = first.bridge.stats.predicted + second.bridge.stats.predicted + 100
        wait_until(
            lambda: first.bridge.stats.predicted + second.bridge.stats.predicted >= recovered_at,
            180,
            "100 more listings priced after the Kafka restart",
        )
        stop_component(settings, "connect")
        up(settings)
        loader.join(timeout=240)
        assert not loader.is_alive()
        assert len(set(inserted)) == 1500
        predictions = wait_until(
            lambda: settled(dsn, settings, inserted),
            240,
            "every listing priced",
            explain=lambda: where_stuck(settings, dsn, inserted),
        )
    assert len(predictions) == 1500
    count = (
        f"SELECT count(*) AS n FROM public.{settings.predictions_table} WHERE listing_id = ANY(%s)"
    )
    assert query(dsn, count, (inserted,))[0]["n"] == 1500
    assert_prices_match_service(prediction_service, listings(dsn, source, inserted), predictions)


@pytest.mark.parametrize("point", ["priced", "produced"])
def test_sigkill_at_an_exact_point_of_a_batch_loses_and_duplicates_nothing(
    stack_settings: Settings, prediction_service: str, tmp_path: Path, point: str
) -> None:
    # Small batches, every listing in the topic before the bridge starts: batch 3 is full.
    settings = pipeline_settings(stack_settings, prediction_service, batch_max_events=50)
    dsn = dsn_of(settings)
    start_group_at_end(settings)
    ids = load_listings(dsn, 400, seed=250, batch=40, table=settings.listings_table).ids
    log = tmp_path / "bridges.log"
    dying = start_bridge_process(settings.model_copy(update={"fault_kill_at": f"{point}:3"}), log)
    assert dying.wait(timeout=120) == -signal.SIGKILL, log.read_text()[-3000:]
    assert f"point={point} batch=3" in log.read_text()
    ours = set(ids)
    if point == "produced":
        # Batch 3's records reached the brokers, in a transaction that never committed.
        def count(committed_only: bool) -> int:
            records = read_topic(settings, settings.predictions_topic, False, committed_only)
            return sum(r.key["listing_id"] in ours for r in records)

        assert count(committed_only=False) > count(committed_only=True) > 0

    survivor = start_bridge_process(settings, log)
    try:
        predictions = wait_until(
            lambda: settled(dsn, settings, ids),
            120,
            "every listing priced after the kill",
            explain=lambda: where_stuck(settings, dsn, ids),
        )
    finally:
        survivor.send_signal(signal.SIGTERM)
        survivor.wait(timeout=60)
    committed = [
        r.key["listing_id"]
        for r in read_topic(settings, settings.predictions_topic, False)
        if r.key["listing_id"] in ours
    ]
    assert sorted(committed) == sorted(ids), "a listing was lost or priced twice in the topic"
    rows = listings(dsn, settings.listings_table, ids)
    assert_prices_match_service(prediction_service, rows, predictions)


def test_postgres_restart_under_load_loses_and_duplicates_nothing(
    stack_settings: Settings, prediction_service: str
) -> None:
    settings = pipeline_settings(stack_settings, prediction_service)
    dsn = dsn_of(settings)
    source = settings.listings_table
    with running_bridge(settings, watch_connectors=True) as bridge:
        first = load_listings(dsn, 1000, seed=260, batch=20, table=source).ids
        # Restart while the change stream and the sink are still busy with them.
        wait_until(lambda: bridge.bridge.stats.predicted >= 100, 120, "the pipeline at work")
        stop_component(settings, "postgres")
        up(settings)
        second = load_listings(dsn, 500, seed=261, batch=20, table=source).ids
        ids = first + second
        predictions = wait_until(
            lambda: settled(dsn, settings, ids),
            240,
            "every listing priced after the Postgres restart",
            explain=lambda: where_stuck(settings, dsn, ids),
        )
    # The table holds exactly one current row per listing (settled), at the right price.
    # (The topic may hold a listing twice: Debezium resumes from its last flushed offset,
    # so a restart can replay a few change events, and the bridge prices them again.)
    assert sorted(predictions) == sorted(ids)
    count = (
        f"SELECT count(*) AS n FROM public.{settings.predictions_table} WHERE listing_id = ANY(%s)"
    )
    assert query(dsn, count, (ids,))[0]["n"] == 1500
    assert_prices_match_service(prediction_service, listings(dsn, source, ids), predictions)
