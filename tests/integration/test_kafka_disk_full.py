"""Kafka's log directory fills up mid-stream, on a stack of its own.

The broker's log dir is a size-limited tmpfs (a real ENOSPC, no fault injection): the
broker logs "No space left on device", takes the log dir offline and, with no other
log dir, shuts down. The bridge must say so (an error and its paused metric), commit
nothing for what Kafka did not take, and once space is freed and Kafka is started
again every listing must be priced once: no loss, no duplicate.
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from streaming_ml.config import Settings
from streaming_ml.connect import commands
from streaming_ml.datasets.load import load_listings
from streaming_ml.stack import down, kafka, status, up
from tests.fixtures.stack import private_stack_settings
from tests.integration.pipeline import (
    assert_prices_match_service,
    dsn_of,
    listings,
    pipeline_settings,
    query,
    read_topic,
    running_bridge,
    settled,
    wait_for_predictions,
    wait_until,
    where_stuck,
)

pytestmark = pytest.mark.integration

# Big enough for the stack's empty topics (~1 MB), small enough to fill in a moment.
LOG_DIR_MB = 64
# What is left free before the second load: a few hundred change events' worth.
LEFT_FREE_BYTES = 256 * 1024


def _mount_tmpfs(path: Path, size_mb: int) -> str | None:
    """Mount a ``size_mb`` tmpfs on ``path``; the reason it cannot be done, else None."""
    if os.geteuid() != 0:
        return "a size-limited log dir needs a tmpfs mount, which needs root (CAP_SYS_ADMIN)"
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0755", "tmpfs", str(path)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if result.returncode != 0:
        return f"mount -t tmpfs was refused here: {result.stderr.strip()}"
    return None


@pytest.fixture(scope="module")
def small_disk_stack() -> Iterator[Settings]:
    """A stack whose Kafka log dir is a LOG_DIR_MB tmpfs."""
    settings = private_stack_settings(prefix="sml-diskfull-")
    log_dir = kafka.data_dir(settings.state_dir)
    log_dir.mkdir(parents=True)
    cannot = _mount_tmpfs(log_dir, LOG_DIR_MB)
    if cannot is not None:
        pytest.skip(cannot)
    try:
        up(settings)
        commands.apply(settings)
        yield settings
    finally:
        down(settings)
        subprocess.run(["umount", str(log_dir)], check=False)
        down(settings, purge=True)


def _fill(directory: Path, leave_free: int) -> Path:
    """A file taking all of ``directory``'s free space but ``leave_free`` bytes."""
    stats = os.statvfs(directory)
    filler = directory / "filler.bin"
    with filler.open("wb") as out:
        out.truncate(0)
        chunk = b"\0" * 2**20
        remaining = stats.f_bavail * stats.f_frsize - leave_free
        while remaining > 0:
            remaining -= out.write(chunk[: min(len(chunk), remaining)])
    return filler


def test_a_full_kafka_log_dir_stops_the_pipeline_loudly_and_loses_nothing(
    small_disk_stack: Settings, prediction_service: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = pipeline_settings(small_disk_stack, prediction_service)
    dsn = dsn_of(settings)
    source = settings.listings_table
    log_dir = kafka.data_dir(settings.state_dir)
    broker_log = settings.state_dir / "logs" / "kafka-server.log"
    caplog.set_level(logging.INFO, logger="streaming_ml.bridge")
    with running_bridge(settings, watch_connectors=True) as bridge:
        first = load_listings(dsn, 300, seed=270, batch=30, table=source).ids
        wait_for_predictions(dsn, settings.predictions_table, first)

        filler = _fill(log_dir, LEFT_FREE_BYTES)
        second = load_listings(dsn, 3000, seed=271, batch=100, table=source).ids
        wait_until(
            lambda: status(settings)[kafka.NAME]["state"] == "stopped",
            180,
            "the broker to stop on its full log dir",
        )
        assert "No space left on device" in broker_log.read_text()
        assert "have failed" in broker_log.read_text()
        # The bridge says it cannot publish, and stops consuming until Kafka is back.
        paused = bridge.bridge.metrics.paused
        wait_until(lambda: paused._value.get() == 1, 120, "the bridge to pause")
        errors = [
            f"{r.getMessage()} {getattr(r, 'reason', '')}" for r in caplog.records
            if r.levelno >= logging.ERROR and r.name.startswith("streaming_ml.bridge")
        ]  # fmt: skip
        assert any(
            "Kafka producer unavailable" in message and "stack logs kafka" in message
            for message in errors
        ), errors

        filler.unlink()
        up(settings)
        ids = first + second
        predictions = wait_until(
            lambda: settled(dsn, settings, ids),
            300,
            "every listing priced after space was freed",
            explain=lambda: where_stuck(settings, dsn, ids),
        )
        assert not bridge.errors
    # The table: exactly one row per listing, at the price the service gives.
    assert sorted(predictions) == sorted(ids)
    table = settings.predictions_table
    count = f"SELECT count(*) AS n FROM public.{table} WHERE listing_id = ANY(%s)"
    assert query(dsn, count, (ids,))[0]["n"] == len(ids) == 3300
    assert_prices_match_service(prediction_service, listings(dsn, source, ids), predictions)
    # The topic: nothing committed past what was written. Each committed prediction
    # answers one committed change event; none is missing and none is there twice (a
    # change event replayed by Debezium after the outage is priced again, once).
    ours = set(ids)
    events = Counter(
        r.key["id"]
        for r in read_topic(settings, settings.listings_topic, False)
        if r.key["id"] in ours
    )
    priced = Counter(
        r.key["listing_id"]
        for r in read_topic(settings, settings.predictions_topic, False)
        if r.key["listing_id"] in ours
    )
    assert set(priced) == ours
    over = {i: (priced[i], events[i]) for i in ours if priced[i] > events[i]}
    assert not over, f"listings priced more often than they changed: {list(over.items())[:5]}"
