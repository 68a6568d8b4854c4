"""The pipeline on three Kafka brokers (SML_KAFKA_NODES=3), on a private stack started once
for this module: every topic has three replicas and min.insync.replicas 2, so one broker
may die under load without losing or duplicating a prediction, and with two down nothing
is committed until one returns. Each test asserts the exact final state.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer
from confluent_kafka.admin import AdminClient, ConfigResource

from streaming_ml.bench.kafka import high_watermarks
from streaming_ml.config import Settings
from streaming_ml.datasets.load import load_listings
from streaming_ml.stack import detached, kafka, up
from tests.fixtures.stack import private_stack
from tests.integration.pipeline import (
    assert_prices_match_service,
    dsn_of,
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
    wait_until,
    where_stuck,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def three_brokers() -> Iterator[Settings]:
    """A whole stack on three KRaft nodes, topics and connectors applied."""
    with private_stack("sml-brokers-", kafka_nodes=3) as settings:
        yield settings


def leader_of(settings: Settings, topic: str, partition: int) -> kafka.Node:
    metadata = AdminClient({"bootstrap.servers": settings.kafka_bootstrap}).list_topics(timeout=15)
    leader = metadata.topics[topic].partitions[partition].leader
    return next(node for node in kafka.nodes(settings) if node.node_id == leader)


def kill(settings: Settings, node: kafka.Node) -> None:
    """SIGKILL the node's process group (no controlled shutdown), as a crash would."""
    assert detached.stop(settings.state_dir, node.name, sig=signal.SIGKILL), node.name


def all_in_sync(settings: Settings) -> None:
    """Wait until every partition of every topic has all its replicas in sync."""
    wait_until(
        lambda: kafka.out_of_sync(settings) == {},
        180,
        "every partition back in sync",
        explain=lambda: f"out of sync: {kafka.out_of_sync(settings)}",
    )
    metadata = AdminClient({"bootstrap.servers": settings.kafka_bootstrap}).list_topics(timeout=15)
    for name, topic in metadata.topics.items():
        for partition in topic.partitions.values():
            assert len(partition.replicas) == 3, (name, partition.id, partition.replicas)


def holds(condition: Callable[[], bool], seconds: float, what: str) -> None:
    """``condition`` stays true for ``seconds`` (checked twice a second)."""
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        assert condition(), f"no longer true: {what}"
        time.sleep(0.5)


def change_events(settings: Settings) -> int:
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": "sml-probe"})
    try:
        return sum((high_watermarks(consumer, settings.listings_topic) or {}).values())
    finally:
        consumer.close()


def committed_once(settings: Settings, ids: list[int]) -> None:
    """Each listing's prediction is in the predictions topic exactly once (committed)."""
    ours = set(ids)
    committed = [
        r.key["listing_id"]
        for r in read_topic(settings, settings.predictions_topic, False)
        if r.key["listing_id"] in ours
    ]
    assert sorted(committed) == sorted(ids), "a listing was lost or priced twice in the topic"


def test_every_topic_we_create_has_three_replicas_and_needs_two_in_sync(
    three_brokers: Settings,
) -> None:
    settings = three_brokers
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    ours = [
        settings.listings_topic, settings.predictions_topic, settings.dlq_topic,
        settings.shadow_topic, settings.outcomes_topic, settings.alerts_topic,
        "_connect-configs", "_connect-offsets", "_connect-status", "__consumer_offsets",
    ]  # fmt: skip
    topics = admin.list_topics(timeout=15).topics
    for name in ours:
        assert {len(p.replicas) for p in topics[name].partitions.values()} == {3}, name
    resources = [ConfigResource(ConfigResource.Type.TOPIC, name) for name in ours]
    for resource, future in admin.describe_configs(resources).items():
        assert future.result(timeout=30)["min.insync.replicas"].value == "2", resource


def test_a_broker_killed_under_load_loses_and_duplicates_nothing(
    three_brokers: Settings, prediction_service: str, tmp_path: Path
) -> None:
    settings = pipeline_settings(three_brokers, prediction_service)
    dsn = dsn_of(settings)
    source = settings.listings_table
    log = tmp_path / "bridges.log"
    start_group_at_end(settings)
    bridges = [start_bridge_process(settings, log) for _ in range(2)]
    before = query(dsn, f"SELECT coalesce(max(id), 0) AS top FROM public.{source}")[0]["top"]

    def priced(at_least: int) -> bool:
        sql = f"SELECT count(*) AS n FROM public.{settings.predictions_table} WHERE listing_id > %s"
        return query(dsn, sql, (before,))[0]["n"] >= at_least

    inserted: list[int] = []
    try:
        loader = threading.Thread(
            target=lambda: inserted.extend(
                load_listings(dsn, 5000, seed=301, rate=500, batch=25, table=source).ids
            )
        )
        loader.start()
        wait_until(lambda: priced(1000), 120, "1,000 listings priced before the kill")
        # The broker leading the predictions topic's first partition: its leadership, and
        # whatever coordinators it held, move while the bridges keep writing.
        victim = leader_of(settings, settings.predictions_topic, 0)
        kill(settings, victim)
        wait_until(lambda: priced(2500), 180, "2,500 listings priced with a broker down")
        up(settings)  # starts the killed node again, waits until it serves
        loader.join(timeout=240)
        assert not loader.is_alive()
        assert len(set(inserted)) == 5000
        predictions = wait_until(
            lambda: settled(dsn, settings, inserted),
            240,
            "every listing priced",
            explain=lambda: where_stuck(settings, dsn, inserted),
        )
        for bridge in bridges:
            assert bridge.poll() is None, log.read_text()[-3000:]
    finally:
        stop_processes(bridges)
    assert len(predictions) == 5000
    count = (
        f"SELECT count(*) AS n, count(DISTINCT listing_id) AS listings "
        f"FROM public.{settings.predictions_table} WHERE listing_id = ANY(%s)"
    )
    assert query(dsn, count, (inserted,))[0] == {"n": 5000, "listings": 5000}
    assert_prices_match_service(prediction_service, listings(dsn, source, inserted), predictions)
    all_in_sync(settings)


def test_with_two_brokers_down_nothing_is_committed_until_one_returns(
    three_brokers: Settings, trained_model_tag: str, tmp_path: Path
) -> None:
    start_service = restartable_service(three_brokers, trained_model_tag, tmp_path / "service.log")

    service = start_service()
    settings = pipeline_settings(three_brokers, service.url, service_backoff_s=0.1)
    dsn = dsn_of(settings)
    source = settings.listings_table
    try:
        with running_bridge(settings) as running:
            warm = load_listings(dsn, 100, seed=311, batch=10, table=source).ids
            wait_until(lambda: settled(dsn, settings, warm), 120, "the first listings priced")
            # Changes wait on the change topic while the service is away (the bridge pauses),
            # so there is work for the bridge when the brokers go.
            service.stop()
            events = change_events(settings)
            held = load_listings(dsn, 300, seed=312, batch=30, table=source).ids
            wait_until(
                lambda: change_events(settings) >= events + len(held),
                120,
                "every held change on the change topic",
            )
            survivor = leader_of(settings, settings.listings_topic, 0)
            dead = [node for node in kafka.nodes(settings) if node != survivor]
            for node in dead:
                kill(settings, node)
            service = start_service()
            # Production stops: the bridge, alive, commits nothing of the held changes (it
            # backs off on a transaction it cannot commit, or cannot read at all).
            holds(
                lambda: (
                    not predictions_for(dsn, settings.predictions_table, held)
                    and running.thread.is_alive()
                    and not running.errors
                ),
                30,
                "nothing committed and the bridge alive with two brokers down",
            )

            # One node back: two of three in sync is enough again.
            returning = dead[0]
            kafka.start(settings, settings.dist_dir, detached.component_user(), returning)
            predictions = wait_until(
                lambda: settled(dsn, settings, held),
                240,
                "every held listing priced after one broker returned",
                explain=lambda: where_stuck(settings, dsn, held),
            )
            assert running.thread.is_alive() and not running.errors
        up(settings)  # the last node, so the cluster ends whole
        all_in_sync(settings)
        assert sorted(predictions) == sorted(held)
        assert_prices_match_service(service.url, listings(dsn, source, held), predictions)
        committed_once(settings, held)
    finally:
        service.stop()
