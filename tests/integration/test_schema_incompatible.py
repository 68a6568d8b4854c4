"""The registry's compatibility rule, and an incompatible change to car_listings mid-stream.

On a stack of its own (it alters car_listings): the registry is BACKWARD; a column that
turns from integer to text makes it refuse the source's new schema and the source task
FAILS, which `connectors status` says in one line. After the column is reverted,
`connectors recover-schema` gets the source past the text-era rows without losing one:
those are dead-lettered by the bridge naming tax, `reprice --where` prices them again,
and every listing ends priced once, at the service's price.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest
import requests

from streaming_ml.config import REPO_ROOT, Settings
from streaming_ml.connect import client
from streaming_ml.datasets.load import load_listings
from streaming_ml.stack import schema_registry
from tests.fixtures.stack import private_stack
from tests.integration.pipeline import (
    assert_prices_match_service,
    dsn_of,
    execute,
    listings,
    pipeline_settings,
    query,
    read_topic,
    running_bridge,
    settings_env,
    settled,
    wait_until,
    where_stuck,
)

pytestmark = pytest.mark.integration

N1, N2, N3 = 40, 25, 30


@pytest.fixture(scope="module")
def own_stack() -> Iterator[Settings]:
    with private_stack("sml-schema-") as settings:
        yield settings


def cli(settings: Settings, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streaming_ml", *args], cwd=REPO_ROOT, env=settings_env(settings),
        capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


def register(settings: Settings, subject: str, tax: str, mpg: str, extra: bool = False) -> int:
    fields = [
        {"name": "tax", "type": ["null", tax], "default": None},
        {"name": "mpg", "type": ["null", mpg], "default": None},
    ]
    if extra:
        fields.append({"name": "colour", "type": ["null", "string"], "default": None})
    schema = {"type": "record", "name": "Listing", "fields": fields}
    response = requests.post(
        f"{settings.registry_url}/subjects/{subject}/versions",
        json={"schema": json.dumps(schema)}, timeout=10,
    )  # fmt: skip
    return response.status_code


def test_the_registry_is_backward(own_stack: Settings) -> None:
    assert schema_registry.global_compatibility(own_stack) == "BACKWARD"
    subject = f"throwaway-{uuid.uuid4().hex[:8]}-value"
    assert register(own_stack, subject, "int", "float") == 200
    assert register(own_stack, subject, "string", "float") == 409  # int → string
    assert register(own_stack, subject, "long", "double") == 200  # promotions
    assert register(own_stack, subject, "long", "double", extra=True) == 200  # optional field


def test_an_incompatible_column_type_fails_the_source_and_recovery_loses_nothing(
    own_stack: Settings, prediction_service: str
) -> None:
    settings = pipeline_settings(own_stack, prediction_service)
    dsn = dsn_of(settings)
    source = settings.listings_table
    with running_bridge(settings) as bridge:
        first = load_listings(dsn, N1, seed=3101, batch=10, table=source).ids
        wait_until(lambda: settled(dsn, settings, first), 180, "the first rows priced")

        execute(dsn, f"ALTER TABLE public.{source} ALTER COLUMN tax TYPE text")
        # load_listings sends tax as a number; Postgres stores its text ('145').
        second = load_listings(dsn, N2, seed=3102, batch=5, table=source).ids
        assert (
            query(dsn, f"SELECT pg_typeof(tax)::text AS t FROM public.{source} LIMIT 1")[0]["t"]
            == "text"
        )

        def source_failed() -> list[tuple[str, dict]]:
            status = client.connector_status(settings.connect_url, settings.source_connector)
            return client.failed_parts(status) if status else []

        failed = wait_until(source_failed, 120, "the source task to fail on the new schema")
        assert client.registry_refused(failed[0][1]["trace"])
        status = cli(settings, "connectors", "status")
        assert status.returncode == 1, status.stdout + status.stderr
        assert (
            f"{settings.source_connector} task 0 failed: the registry refused the new schema "
            f"of {settings.listings_topic}"
        ) in " ".join(status.stderr.split()), status.stderr
        # The same line, in `stack status --json`, under the component it concerns.
        stack_report = cli(settings, "stack", "status", "--json")
        (line,) = json.loads(stack_report.stdout)["connect"]["failures"]
        assert line.startswith(f"{settings.source_connector} task 0 failed: the registry"), line

        execute(
            dsn, f"ALTER TABLE public.{source} ALTER COLUMN tax TYPE integer USING tax::integer"
        )
        third = load_listings(dsn, N3, seed=3103, batch=10, table=source).ids
        recovered = cli(settings, "connectors", "recover-schema", "--json", "--timeout", "240")
        assert recovered.returncode == 0, recovered.stderr[-3000:]
        report = json.loads(recovered.stdout)
        assert report["slot_confirmed_lsn"] >= report["read_past_lsn"]
        subject = schema_registry.value_subject(settings.listings_topic)
        assert schema_registry.subject_rule(settings, subject) is None  # global again

        wait_until(lambda: settled(dsn, settings, first + third), 240, "N1 and N3 priced",
                   explain=lambda: where_stuck(settings, dsn, first + third))  # fmt: skip

        def dead() -> list[tuple[int, str]]:
            """The DLQ's (listing id, reason) pairs, once there are N2 of them."""
            records = read_topic(settings, settings.dlq_topic, decode_value=False)
            found = [(r.key["id"], r.headers["reason"].decode()) for r in records]
            return found if len(found) >= N2 else []

        dead_letters = dict(wait_until(dead, 120, "N2 dead letters", 2.0))
        assert len(dead()) == N2 and sorted(dead_letters) == sorted(second)
        assert all("tax" in reason for reason in dead_letters.values()), dead_letters
        assert not predictions_of(dsn, settings, second)

        low, high = min(second), max(second)
        repriced = cli(settings, "reprice", "--where", f"id BETWEEN {low} AND {high}",
                       "--json", "--settle-timeout", "240")  # fmt: skip
        assert repriced.returncode == 0, repriced.stderr[-3000:]
        everyone = first + second + third
        predictions = wait_until(
            lambda: settled(dsn, settings, everyone), 240, "every listing priced",
            explain=lambda: where_stuck(settings, dsn, everyone),
        )  # fmt: skip
        assert not bridge.errors
    assert sorted(predictions) == sorted(everyone) and len(everyone) == N1 + N2 + N3
    count = (
        f"SELECT count(*) AS n FROM public.{settings.predictions_table} WHERE listing_id = ANY(%s)"
    )
    assert query(dsn, count, (everyone,))[0]["n"] == N1 + N2 + N3
    assert_prices_match_service(prediction_service, listings(dsn, source, everyone), predictions)
    assert (
        client.failed_parts(
            client.connector_status(settings.connect_url, settings.source_connector) or {}
        )
        == []
    )


def predictions_of(dsn: str, settings: Settings, ids: list[int]) -> list[dict]:
    table = settings.predictions_table
    return query(dsn, f"SELECT listing_id FROM public.{table} WHERE listing_id = ANY(%s)", (ids,))
