"""The bridge against the real stack and the real service, end to end:
Postgres -> Debezium -> Kafka -> bridge -> service -> Kafka -> JDBC sink -> Postgres."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from streaming_ml.config import Settings
from streaming_ml.datasets.load import load_listings
from streaming_ml.service.launcher import ServiceProcess
from tests.fixtures.ports import free_port
from tests.integration.pipeline import (
    assert_prices_match_service,
    bridge_metric_or_none,
    direct_prices,
    dsn_of,
    execute,
    listings,
    pipeline_settings,
    predictions_for,
    query,
    read_topic,
    running_bridge,
    start_bridge_process,
    start_group_at_end,
    wait_for_predictions,
    wait_until,
)

pytestmark = pytest.mark.integration


def test_thousand_listings_priced_once_in_table_and_topic(
    stack_settings: Settings, prediction_service: str
) -> None:
    settings = pipeline_settings(stack_settings, prediction_service)
    dsn = dsn_of(settings)
    with running_bridge(settings) as running:
        bulk = load_listings(dsn, 500, seed=101, batch=500, table=settings.listings_table)
        single = load_listings(dsn, 500, seed=102, batch=1, table=settings.listings_table)
        ids = bulk.ids + single.ids
        assert len(set(ids)) == 1000
        predictions = wait_for_predictions(dsn, settings.predictions_table, ids)
        # A fresh group starting at the topic's end: each listing priced once, no retries.
        assert running.metric("sml_bridge_predictions_total") == 1000

    assert len(predictions) == 1000
    rows = listings(dsn, settings.listings_table, ids)
    assert_prices_match_service(prediction_service, rows, predictions)
    wanted = set(ids)
    records = [
        r
        for r in read_topic(settings, settings.predictions_topic)
        if r.value is not None and r.key["listing_id"] in wanted
    ]
    assert len(records) == 1000
    assert {r.key["listing_id"] for r in records} == wanted
    for record in records:
        row = predictions[record.key["listing_id"]]
        assert record.value["predicted_price"] == row["predicted_price"]
        assert record.value["features_hash"] == row["features_hash"]
        assert record.value["source_ts_ms"] <= record.value["kafka_ts_ms"] + 1000
        assert record.value["end_to_end_ms"] >= record.value["model_latency_ms"] - 1000


def test_invalid_rows_go_to_the_dlq_with_reasons(
    stack_settings: Settings, prediction_service: str
) -> None:
    settings = pipeline_settings(stack_settings, prediction_service)
    dsn = dsn_of(settings)
    with running_bridge(settings) as running:
        loaded = load_listings(
            dsn, 120, seed=103, invalid=10, batch=7, table=settings.listings_table
        )
        rows = listings(dsn, settings.listings_table, loaded.ids)
        from streaming_ml.schema.listing import feature_problems

        invalid = {i for i, row in rows.items() if feature_problems(row)}
        assert len(invalid) == 10
        valid = [i for i in loaded.ids if i not in invalid]
        predictions = wait_for_predictions(dsn, settings.predictions_table, valid)
        wait_until(lambda: running.bridge.stats.dlq >= 10, 60, "10 DLQ records")
        assert running.metric("sml_bridge_dlq_total") == 10

    assert not set(predictions_for(dsn, settings.predictions_table, sorted(invalid)))
    assert_prices_match_service(prediction_service, rows, predictions)
    dead = [r for r in read_topic(settings, settings.dlq_topic, decode_value=False)
            if r.key["id"] in set(loaded.ids)]  # fmt: skip
    assert {r.key["id"] for r in dead} == invalid
    assert len(dead) == 10
    for record in dead:
        reason = record.headers["reason"].decode()
        field = reason.split(":", 1)[0]
        assert field in feature_problems(rows[record.key["id"]]), reason
        assert record.headers["source.topic"].decode() == settings.listings_topic
        assert int(record.headers["source.offset"]) >= 0
        assert record.raw_value and record.raw_value[0] == 0  # original Avro bytes


def test_a_row_too_large_for_kafka_is_dead_lettered_and_the_stream_goes_on(
    stack_settings: Settings, prediction_service: str
) -> None:
    # A 2 MB model name would make the change event larger than Kafka accepts and fail the
    # Debezium task on every restart while WAL piles up; it is cut at capture instead.
    from streaming_ml.datasets.load import insert_records
    from streaming_ml.datasets.synthetic import generate_listing_records
    from streaming_ml.schema.listing import MAX_CATEGORY_CHARS

    settings = pipeline_settings(stack_settings, prediction_service)
    dsn = dsn_of(settings)
    huge, normal = generate_listing_records(2, seed=108)
    huge["model"] = "Fiesta" * 350_000
    with running_bridge(settings):
        ids = insert_records(dsn, [huge, normal], table=settings.listings_table).ids
        wait_for_predictions(dsn, settings.predictions_table, ids[1:])

        def dead_lettered() -> list[Any]:
            records = read_topic(settings, settings.dlq_topic, decode_value=False)
            return [r for r in records if r.key["id"] == ids[0]]

        dead = wait_until(dead_lettered, 60, "the oversized row dead-lettered")
    reason = dead[0].headers["reason"].decode()
    assert reason.startswith("model:") and f"{MAX_CATEGORY_CHARS}" in reason, reason
    assert len(dead[0].raw_value or b"") < 10_000
    assert not predictions_for(dsn, settings.predictions_table, ids[:1])


def test_updates_reprice_only_on_feature_change_and_deletes_remove(
    stack_settings: Settings, prediction_service: str
) -> None:
    settings = pipeline_settings(stack_settings, prediction_service)
    dsn = dsn_of(settings)
    table, source = settings.predictions_table, settings.listings_table
    with running_bridge(settings) as running:
        ids = load_listings(dsn, 3, seed=104, batch=3, table=source).ids
        first = wait_for_predictions(dsn, table, ids)
        a, b, c = ids

        execute(dsn, f"UPDATE public.{source} SET mileage = mileage + 25000 WHERE id = %s", (a,))
        execute(dsn, f"UPDATE public.{source} SET price = price + 1000 WHERE id = %s", (b,))
        # A later feature change of c is the marker that b's update was processed.
        execute(dsn, f"UPDATE public.{source} SET year = year - 1 WHERE id = %s", (c,))
        changed = wait_until(
            lambda: (
                p := predictions_for(dsn, table, ids),
                all(p[i]["features_hash"] != first[i]["features_hash"] for i in (a, c)) and p,
            )[1],
            120,
            "re-priced updates of a and c",
        )
        rows = listings(dsn, source, ids)
        assert_prices_match_service(prediction_service, rows, changed)
        assert changed[a]["predicted_price"] != first[a]["predicted_price"]
        assert changed[b]["predicted_ts_ms"] == first[b]["predicted_ts_ms"]
        assert changed[b]["features_hash"] == first[b]["features_hash"]
        assert running.bridge.stats.skipped_unchanged == 1

        execute(dsn, f"DELETE FROM public.{source} WHERE id = %s", (a,))
        wait_until(lambda: a not in predictions_for(dsn, table, ids), 120, "deleted prediction")

    # A new bridge remembers nothing: Debezium's unchanged-columns header alone stops a
    # price-only update from being re-priced.
    with running_bridge(settings) as restarted:
        execute(dsn, f"UPDATE public.{source} SET price = price + 1 WHERE id = %s", (b,))
        execute(dsn, f"UPDATE public.{source} SET tax = tax + 10 WHERE id = %s", (c,))
        wait_until(
            lambda: (
                predictions_for(dsn, table, [c])[c]["features_hash"] != changed[c]["features_hash"]
            ),
            120,
            "re-priced tax update of c",
        )
        assert restarted.bridge.stats.skipped_unchanged == 1
    assert predictions_for(dsn, table, [b])[b]["predicted_ts_ms"] == first[b]["predicted_ts_ms"]


def test_kill_and_service_outage_still_price_every_listing_once(
    stack_settings: Settings, trained_model_tag: str, tmp_path: Path
) -> None:
    port = free_port()
    service = ServiceProcess(
        host=stack_settings.host, port=port, model_tag=trained_model_tag,
        log_path=tmp_path / "service.log",
    )  # fmt: skip
    service.start()
    settings = pipeline_settings(stack_settings, service.url)
    dsn = dsn_of(settings)
    table, source = settings.predictions_table, settings.listings_table
    log = tmp_path / "bridge.log"
    start_group_at_end(settings)
    bridge = start_bridge_process(settings, log, own_port=False)
    try:
        inserted: list[int] = []
        baseline = query(dsn, f"SELECT coalesce(max(id), 0) AS top FROM public.{source}")[0]["top"]
        loader = threading.Thread(
            target=lambda: inserted.extend(
                load_listings(dsn, 400, seed=105, rate=150, batch=5, table=source).ids
            )
        )
        loader.start()
        count = f"SELECT count(*) AS n FROM public.{table} WHERE listing_id > %s"
        wait_until(
            lambda: query(dsn, count, (baseline,))[0]["n"] >= 50,
            120,
            "the first predictions of the stream",
        )
        bridge.send_signal(signal.SIGKILL)
        bridge.wait(timeout=30)
        bridge = start_bridge_process(settings, log, own_port=False)
        loader.join(timeout=120)
        assert not loader.is_alive()

        service.stop()
        outage_end = time.monotonic() + 20
        outage = load_listings(dsn, 100, seed=106, batch=10, table=source).ids
        # The restarted bridge must meet the outage: wait until it reports pausing.
        wait_until(
            lambda: bridge_metric_or_none(settings, "sml_bridge_paused") == 1,
            120,
            "the bridge to pause consumption while the service is down",
        )
        while time.monotonic() < outage_end:  # the rest of the 20 s outage
            assert bridge.poll() is None, "bridge died while the service was down"
            time.sleep(0.5)
        assert bridge.poll() is None, "bridge died while the service was down"
        assert not set(predictions_for(dsn, table, outage)), "priced without a service?"
        service = ServiceProcess(
            host=stack_settings.host, port=port, model_tag=trained_model_tag,
            log_path=tmp_path / "service.log",
        )  # fmt: skip
        service.start()

        ids = inserted + outage
        assert len(set(ids)) == 500
        predictions = wait_for_predictions(dsn, table, ids)
        assert set(predictions) == set(ids)
        rows = listings(dsn, source, ids)
        assert_prices_match_service(service.url, rows, predictions)

        bridge.send_signal(signal.SIGTERM)
        assert bridge.wait(timeout=60) == 0, log.read_text()[-3000:]
    finally:
        if bridge.poll() is None:
            bridge.kill()
            bridge.wait(timeout=30)
        service.stop()


def test_service_rejection_is_narrowed_to_the_offending_records(prediction_service: str) -> None:
    """If the real service answers 4xx for a batch (its rules stricter than ours, say),
    the batch is bisected and only the records it rejects are dead-lettered."""
    from streaming_ml.bridge.plan import service_records
    from streaming_ml.bridge.pricing import PredictionClient, Pricer
    from streaming_ml.datasets.synthetic import generate_listing_records

    rows = generate_listing_records(9, seed=107)
    rows[2] = {**rows[2], "mileage": -1}
    rows[6] = {**rows[6], "mpg": 0.0}
    pricer = Pricer(
        PredictionClient(prediction_service, 10.0),
        retry_delays=[], max_strikes=3, wait=lambda _s: False,
    )  # fmt: skip
    priced = pricer.price(service_records(rows), list(range(9)))

    assert set(priced.rejected) == {2, 6}
    assert not priced.unfinished
    assert "mileage" in priced.rejected[2] and "400" in priced.rejected[2]
    good = [i for i in range(9) if i not in (2, 6)]
    expected = direct_prices(prediction_service, [rows[i] for i in good])
    assert [priced.results[i]["predicted_price"] for i in good] == expected


def test_rebalance_between_two_bridges_loses_nothing(
    stack_settings: Settings, prediction_service: str
) -> None:
    """A second bridge joins the group mid-stream, then the first leaves: the partition
    changes hands twice and every listing is still priced."""
    settings = pipeline_settings(stack_settings, prediction_service)
    dsn = dsn_of(settings)
    table, source = settings.predictions_table, settings.listings_table
    inserted: list[int] = []
    with running_bridge(settings) as first:
        loader = threading.Thread(
            target=lambda: inserted.extend(
                load_listings(dsn, 300, seed=108, rate=60, batch=3, table=source).ids
            )
        )
        loader.start()
        wait_until(lambda: first.bridge.stats.predicted >= 30, 120, "the first bridge at work")
        second_settings = settings.model_copy(update={"bridge_metrics_port": free_port()})
        with running_bridge(second_settings, from_end=False) as second:
            wait_until(lambda: second.bridge.assignment or first.bridge.stats.predicted >= 300,
                       60, "a rebalance")  # fmt: skip
            first.bridge.stop()
            first.thread.join(timeout=60)
            loader.join(timeout=120)
            assert not loader.is_alive()
            predictions = wait_for_predictions(dsn, table, inserted)
            handled = first.bridge.stats.events + second.bridge.stats.events
    assert len(predictions) == 300
    assert handled >= 300  # a handover may redeliver a batch, never drop one
    assert_prices_match_service(prediction_service, listings(dsn, source, inserted), predictions)
