"""A registry restart fails the Debezium source task for good (the Apicurio converter's
connection error is not retried by Connect); the bridge's connector watchdog restarts
the failed task and every listing is still priced."""

from __future__ import annotations

import itertools
import logging
import time

import pytest

from streaming_ml.config import Settings
from streaming_ml.connect import client
from streaming_ml.datasets.load import load_listings
from streaming_ml.stack import stop_component, up
from tests.integration.pipeline import (
    dsn_of,
    pipeline_settings,
    running_bridge,
    wait_for_predictions,
    wait_until,
)

pytestmark = pytest.mark.integration

RESTARTS = "sml_connector_restarts_total"
# The Apicurio converter keeps a looked-up schema for 30 s (its check-period default):
# a row written that long after the last lookup makes it ask the registry, and fail.
OUTAGE_LIMIT_S = 60


def connector_states(settings: Settings) -> dict[str, list[str]]:
    """State of each connector instance followed by its tasks' states."""
    states: dict[str, list[str]] = {}
    for name in settings.connector_names:
        status = client.connector_status(settings.connect_url, name)
        assert status is not None, f"connector {name} is not registered"
        states[name] = [status["connector"]["state"]] + [t["state"] for t in status["tasks"]]
    return states


def all_running(settings: Settings) -> bool:
    return all(
        len(states) > 1 and set(states) == {"RUNNING"}
        for states in connector_states(settings).values()
    )


def heal(settings: Settings, timeout_s: float = 90) -> None:
    """Leave the shared stack as the next test expects it: registry up, both connectors
    and their tasks RUNNING (restarting failed parts ourselves if the bridge could not)."""
    up(settings)
    deadline = time.monotonic() + timeout_s

    def healed() -> bool:
        if all_running(settings):
            return True
        for name in settings.connector_names:
            if time.monotonic() < deadline - 5:
                status = client.connector_status(settings.connect_url, name)
                if status is not None and client.failed_parts(status):
                    client.restart_failed(settings.connect_url, name)
        return False

    wait_until(healed, timeout_s, "both connectors RUNNING again", interval_s=2)


def test_registry_restart_failed_task_is_restarted_and_every_row_priced(
    stack_settings: Settings, prediction_service: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = pipeline_settings(stack_settings, prediction_service, connector_check_interval_s=2.0)
    dsn = dsn_of(settings)
    source, table = settings.listings_table, settings.predictions_table
    seeds = itertools.count(1100)
    ids: list[int] = []
    seen_failed: list[str] = []
    caplog.set_level(logging.WARNING, logger="streaming_ml.bridge")
    try:
        with running_bridge(settings, watch_connectors=True) as running:
            ids += load_listings(dsn, 10, seed=next(seeds), batch=5, table=source).ids
            wait_for_predictions(dsn, table, ids, timeout_s=60)

            stop_component(settings, "registry")
            try:

                def task_failed_or_restarted() -> bool:
                    ids.extend(load_listings(dsn, 1, seed=next(seeds), table=source).ids)
                    for name, states in connector_states(settings).items():
                        if "FAILED" in states:
                            seen_failed.append(name)
                    return bool(seen_failed) or running.metric(RESTARTS) > 0

                wait_until(
                    task_failed_or_restarted,
                    OUTAGE_LIMIT_S,
                    "a connector task to fail while the registry is down",
                    interval_s=2,
                )
            finally:
                up(settings)  # the registry again (everything else is still running)

            ids += load_listings(dsn, 10, seed=next(seeds), batch=5, table=source).ids
            predictions = wait_for_predictions(dsn, table, ids, timeout_s=120)
            wait_until(lambda: all_running(settings), 60, "both connectors RUNNING", 1)
            restarts = running.metric(RESTARTS)
    finally:
        heal(settings)

    assert set(predictions) == set(ids)
    assert restarts >= 1, f"connectors seen FAILED: {seen_failed}, but no restart counted"
    acted = [r for r in caplog.records if r.getMessage().startswith("connector FAILED: restarting")]
    assert acted, "the watchdog logged no restart"
    # The failure it repaired is the one the outage caused: the converter could not
    # reach the registry.
    traces = " ".join(str(getattr(r, "trace", "")) for r in acted)
    assert f":{settings.registry_port}" in traces, traces[:2000]


def test_new_schema_version_during_a_registry_outage_is_priced_not_dead_lettered(
    stack_settings: Settings, prediction_service: str
) -> None:
    """The table gains a column while the registry is down: Debezium needs a schema
    version nobody has seen, cannot register it, and fails; once the registry is back the
    watchdog restarts it and those changes are priced like any other."""
    from tests.integration.pipeline import execute, read_topic

    settings = pipeline_settings(stack_settings, prediction_service, connector_check_interval_s=2.0)
    dsn = dsn_of(settings)
    source, table = settings.listings_table, settings.predictions_table
    column = f"colour_{int(time.time())}"
    try:
        with running_bridge(settings, watch_connectors=True) as running:
            before = load_listings(dsn, 10, seed=1200, batch=5, table=source).ids
            wait_for_predictions(dsn, table, before, timeout_s=60)
            stop_component(settings, "registry")
            try:
                execute(dsn, f"ALTER TABLE public.{source} ADD COLUMN {column} text")
                during = load_listings(dsn, 10, seed=1201, batch=5, table=source).ids

                def source_failed() -> bool:
                    states = connector_states(settings)[settings.source_connector]
                    return "FAILED" in states or running.metric(RESTARTS) > 0

                wait_until(source_failed, OUTAGE_LIMIT_S, "the source to fail on the new schema", 1)
            finally:
                up(settings)
            after = load_listings(dsn, 10, seed=1202, batch=5, table=source).ids
            ids = before + during + after
            predictions = wait_for_predictions(dsn, table, ids, timeout_s=120)
            wait_until(lambda: all_running(settings), 60, "every connector RUNNING", 1)
    finally:
        execute(dsn, f"ALTER TABLE public.{source} DROP COLUMN IF EXISTS {column}")
        heal(settings)
    assert set(predictions) == set(ids)
    dead = {r.key["id"] for r in read_topic(settings, settings.dlq_topic, decode_value=False)}
    assert not dead & set(ids), "a change was dead-lettered"
