"""The local stack end to end, on its own ports and state dir (these tests stop it).

Insert → Debezium → Kafka (Avro, Confluent wire format) → confluent_kafka deserializer;
confluent_kafka serializer → JDBC sink → Postgres; a restart keeps offsets, the slot
and the schemas; the CLI's status/psql work; the final ``down`` leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest
import requests
from confluent_kafka import Consumer, Producer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext

from streaming_ml import stack
from streaming_ml.config import Settings
from streaming_ml.connect import client
from streaming_ml.connect.commands import apply as apply_connectors
from streaming_ml.errors import StackError
from streaming_ml.kafka.topics import ensure_topics
from streaming_ml.schema import avro
from streaming_ml.schema.fields import EXPLANATION_FIELDS, PREDICTION_FIELDS
from streaming_ml.schema.listing import FEATURES, LISTING_COLUMNS
from streaming_ml.stack import detached, postgres
from streaming_ml.system import processes
from tests.fixtures.stack import PORT_FIELDS, private_stack
from tests.integration.pipeline import wait_until

pytestmark = pytest.mark.integration

WAIT_S = 90.0


@pytest.fixture(scope="module")
def own_stack() -> Iterator[Settings]:
    with private_stack("sml-stack-test-", with_connectors=False) as settings:
        yield settings


LISTING = {
    "model": "Focus", "year": 2019, "price": 12_495, "transmission": "Manual",
    "mileage": 15_320, "fuelType": "Petrol", "tax": 145, "mpg": 55.4, "engineSize": 1.0,
}  # fmt: skip


def insert_listing(settings: Settings, row: dict[str, Any]) -> int:
    columns = ", ".join(f'"{c.name}"' for c in LISTING_COLUMNS)
    marks = ", ".join(["%s"] * len(LISTING_COLUMNS))
    with psycopg2.connect(stack.postgres_dsn(settings)) as conn, conn.cursor() as cur:
        cur.execute(
            f"INSERT INTO public.car_listings ({columns}) VALUES ({marks}) RETURNING id",
            [row[c.name] for c in LISTING_COLUMNS],
        )
        return int(cur.fetchone()[0])


def read_change_events(
    settings: Settings, until: Callable[[list[dict[str, Any]]], bool], timeout: float = WAIT_S
) -> list[dict[str, Any]]:
    """Every change event on the listings topic from the beginning (fresh group), decoded
    with confluent_kafka's AvroDeserializer, until ``until(events)`` holds."""
    registry = SchemaRegistryClient({"url": settings.registry_url})
    decode = AvroDeserializer(registry)
    consumer = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": f"test-stack-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "topic.metadata.refresh.interval.ms": 1000,
        }
    )
    events: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    try:
        consumer.subscribe([settings.listings_topic])
        while not until(events):
            if time.monotonic() > deadline:
                pytest.fail(f"timed out reading change events; got {events}")
            msg = consumer.poll(1.0)
            if msg is None or msg.error():
                continue  # the topic appears with the first captured row
            raw = msg.value()
            # Confluent wire format: magic byte 0, then a 4-byte big-endian schema id.
            assert raw[0] == 0
            schema_id = struct.unpack(">I", raw[1:5])[0]
            key = decode(msg.key(), SerializationContext(msg.topic(), MessageField.KEY))
            value = decode(raw, SerializationContext(msg.topic(), MessageField.VALUE))
            events.append({"key": key, "value": value, "schema_id": schema_id})
    finally:
        consumer.close()
    return events


def has_listing(*listing_ids: int) -> Callable[[list[dict[str, Any]]], bool]:
    """Until every one of ``listing_ids`` was seen (they may sit in different partitions)."""
    return lambda events: set(listing_ids) <= {e["key"]["id"] for e in events}


def test_change_event_carries_every_field(own_stack: Settings) -> None:
    settings = own_stack
    snap_id = insert_listing(settings, LISTING)
    status = client.register_connector(settings, settings.source_connector)
    assert status["connector"]["state"] == "RUNNING"
    live_row = {**LISTING, "model": "Kuga", "fuelType": "Diesel", "mpg": 47.1, "engineSize": 2.0}
    live_id = insert_listing(settings, live_row)

    events = read_change_events(settings, has_listing(snap_id, live_id))
    by_id = {e["key"]["id"]: e for e in events}
    for listing_id, row, op in ((snap_id, LISTING, "r"), (live_id, live_row, "c")):
        value = by_id[listing_id]["value"]
        assert value["id"] == listing_id
        for column in LISTING_COLUMNS:
            assert value[column.name] == row[column.name], column.name
        assert value["__op"] == op
        assert value["__deleted"] == "false"
        assert isinstance(value["__lsn"], int) and value["__lsn"] > 0
        assert isinstance(value["__source_ts_ms"], int) and value["__source_ts_ms"] > 0
        # When Debezium read the change from the WAL: never before the commit.
        assert value["__ts_ms"] >= value["__source_ts_ms"]
        # Plain numbers, not Debezium's bytes-encoded decimals.
        assert isinstance(value["mpg"], float) and isinstance(value["engineSize"], float)
        columns = (c.name for c in LISTING_COLUMNS)
        expected = {"id", *columns, "__op", "__lsn", "__source_ts_ms", "__ts_ms"}
        assert set(value) == expected | {"__deleted"}
    # The id in the payload is the one the Confluent API serves for the topic's subject.
    registry = SchemaRegistryClient({"url": settings.registry_url})
    latest = registry.get_latest_version(f"{settings.listings_topic}-value")
    assert by_id[live_id]["schema_id"] == latest.schema_id
    # The bridge prices these fields straight from the event.
    assert set(FEATURES) <= set(by_id[live_id]["value"])


def _diverge_content_and_global_ids(registry_port: int) -> None:
    """Register one schema under two subjects: its content id is shared, its global ids
    are not, so every schema registered afterwards has contentId != globalId. A converter
    resolving ids the wrong way round then cannot find the schema."""
    schema = {
        "type": "record", "name": f"Probe{uuid.uuid4().hex[:8]}",
        "fields": [{"name": "x", "type": "long"}],
    }  # fmt: skip
    body = {"schema": json.dumps(schema)}
    base = f"http://127.0.0.1:{registry_port}/apis/ccompat/v7/subjects"
    for subject in (f"probe-{uuid.uuid4().hex[:8]}-value", f"probe-{uuid.uuid4().hex[:8]}-value"):
        requests.post(f"{base}/{subject}/versions", json=body, timeout=10).raise_for_status()


def _prediction(listing_id: int, price: float) -> dict[str, Any]:
    now = int(time.time() * 1000)
    values: dict[str, Any] = {
        "listing_id": listing_id, "predicted_price": price, "model_tag": "ford_price:test",
        "features_hash": "f" * 16, "source_lsn": None, "source_ts_ms": now, "kafka_ts_ms": now,
        "bridge_received_ts_ms": now, "predicted_ts_ms": now, "model_latency_ms": 1.25,
        "end_to_end_ms": 12.5, "model_name": "ford_price", "model_version": "test",
        "arm": "champion", **{f.name: None for f in EXPLANATION_FIELDS},
    }  # fmt: skip
    assert set(values) == {f.name for f in PREDICTION_FIELDS}
    return values


def test_jdbc_sink_reads_confluent_serializer_records(own_stack: Settings) -> None:
    settings = own_stack
    _diverge_content_and_global_ids(settings.registry_port)
    registry = avro.registry_client(settings.registry_url)
    key_ser, value_ser = avro.prediction_serializers(registry)
    topic = settings.predictions_topic
    ensure_topics(settings)  # the brokers create no topic on first use
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap})

    def send(listing_id: int, value: dict[str, Any] | None) -> None:
        producer.produce(
            topic,
            key=key_ser({"listing_id": listing_id}, SerializationContext(topic, MessageField.KEY)),
            value=None
            if value is None
            else value_ser(value, SerializationContext(topic, MessageField.VALUE)),
        )

    kept, deleted = 900_001, 900_002
    send(kept, _prediction(kept, 10_000.5))
    send(deleted, _prediction(deleted, 20_000.0))
    producer.flush(30)
    # The schema the serializer registered really has different content and global ids.
    artifact = requests.get(
        f"http://127.0.0.1:{settings.registry_port}/apis/registry/v3/groups/default/artifacts/"
        f"{topic}-value/versions/branch=latest",
        timeout=10,
    ).json()
    assert artifact["contentId"] != artifact["globalId"]

    client.register_connector(settings, settings.sink_connector)

    def rows() -> dict[int, tuple[Any, ...]]:
        with psycopg2.connect(stack.postgres_dsn(settings)) as conn, conn.cursor() as cur:
            cur.execute(
                "SELECT listing_id, predicted_price, model_tag, source_lsn, model_latency_ms "
                "FROM public.car_price_predictions WHERE listing_id = ANY(%s)",
                ([kept, deleted],),
            )
            return {row[0]: row for row in cur.fetchall()}

    def upserted() -> bool:
        # A sink task that cannot resolve the schema ids fails: report its trace at once.
        status = client.connector_status(settings.connect_url, settings.sink_connector)
        failed = [t for t in (status or {}).get("tasks", []) if t["state"] == "FAILED"]
        if failed:
            pytest.fail(f"sink task failed: {failed[0].get('trace', '')[:2000]}")
        return len(rows()) == 2

    wait_until(upserted, WAIT_S, "both predictions upserted")
    assert rows()[kept] == (kept, 10_000.5, "ford_price:test", None, 1.25)

    send(kept, _prediction(kept, 11_000.0))  # upsert, same key
    send(deleted, None)  # tombstone deletes the row
    producer.flush(30)
    wait_until(
        lambda: set(rows()) == {kept} and rows()[kept][1] == 11_000.0,
        WAIT_S,
        "update and delete applied",
    )


def test_connect_refuses_a_connector_that_overrides_its_kafka_clients(own_stack: Settings) -> None:
    # The REST API is unauthenticated: a connector config must not be able to point its
    # Kafka clients elsewhere (connector.client.config.override.policy=None).
    sink = client.load_connector(own_stack.sink_connector, own_stack)
    rogue = {**sink, "consumer.override.bootstrap.servers": "127.0.0.1:1"}
    url = own_stack.connect_url
    answer = requests.put(f"{url}/connectors/rogue/config", json=rogue, timeout=30)
    assert answer.status_code == 400, answer.text
    assert "bootstrap.servers" in answer.text and "policy" in answer.text.lower(), answer.text
    assert "rogue" not in requests.get(f"{url}/connectors", timeout=10).json()


def test_role_passwords_reach_postgres_only_as_scram_verifiers(own_stack: Settings) -> None:
    from streaming_ml.stack import secrets as stack_secrets

    passwords = stack_secrets.load_passwords(own_stack.state_dir)
    role = stack_secrets.APP_ROLE
    conn = psycopg2.connect(postgres.superuser_dsn(own_stack, passwords, "postgres"))
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            # As a server that logs every statement would record it.
            cur.execute("SET log_statement = 'all'")
            cur.execute(postgres.set_password_sql(conn, role, passwords[role]))
    finally:
        conn.close()
    log = own_stack.state_dir / "logs" / "postgres.log"

    def logged() -> str | None:
        text = log.read_text(errors="replace")
        return text if "ALTER ROLE" in text else None

    text = wait_until(logged, 10, "the ALTER ROLE statement in the server log")
    assert "SCRAM-SHA-256$4096:" in text
    assert passwords[role] not in text
    # The verifier is the password: the role still logs in with it.
    psycopg2.connect(stack.postgres_dsn(own_stack)).close()


def test_second_up_is_a_no_op(own_stack: Settings) -> None:
    before = {name: info["pid"] for name, info in stack.status(own_stack).items()}
    assert all(before.values())
    stack.up(own_stack)
    after = {name: info["pid"] for name, info in stack.status(own_stack).items()}
    assert after == before


def _replication_slot(settings: Settings) -> tuple[str, str] | None:
    dsn = stack.postgres_dsn(settings, role="superuser")
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT slot_name, plugin FROM pg_replication_slots WHERE slot_name = %s",
            (postgres.SLOT,),
        )
        return cur.fetchone()


def test_restart_keeps_offsets_slot_and_schemas(own_stack: Settings) -> None:
    settings = own_stack
    client.ensure_connectors(settings)
    before_id = insert_listing(settings, {**LISTING, "model": "Puma"})
    read_change_events(settings, has_listing(before_id))
    registry = SchemaRegistryClient({"url": settings.registry_url})
    subjects_before = {s: registry.get_latest_version(s).schema_id for s in registry.get_subjects()}
    assert _replication_slot(settings) == (postgres.SLOT, "pgoutput")

    stack.down(settings)
    for name, info in stack.status(settings).items():
        assert info["state"] == "stopped", name
    for field in PORT_FIELDS:
        assert not processes.port_open(settings.host, getattr(settings, field)), field

    stack.up(settings)
    statuses = client.ensure_connectors(settings)
    assert all(s["connector"]["state"] == "RUNNING" for s in statuses.values())
    assert _replication_slot(settings) == (postgres.SLOT, "pgoutput")
    subjects_after = {s: registry.get_latest_version(s).schema_id for s in registry.get_subjects()}
    assert subjects_after == subjects_before

    after_id = insert_listing(settings, {**LISTING, "model": "Mondeo"})
    events = read_change_events(settings, has_listing(after_id))
    ids = [e["key"]["id"] for e in events]
    # Nothing replayed or re-snapshotted: every row's event appears exactly once.
    assert len(ids) == len(set(ids)), ids
    assert [e["value"]["__op"] for e in events if e["key"]["id"] == after_id] == ["c"]


def _cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    from streaming_ml.bench import settings_env

    cli = Path(sys.executable).parent / "streaming-ml"
    return subprocess.run(
        [str(cli), *args], env={**os.environ, **settings_env(settings)},
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def test_connectors_command_applies_topics_and_connectors_and_reports_them(
    own_stack: Settings,
) -> None:
    from confluent_kafka.admin import AdminClient

    applied = _cli(own_stack, "connectors", "apply", "--json")
    assert applied.returncode == 0, applied.stderr
    status = _cli(own_stack, "connectors", "status", "--json")
    assert status.returncode == 0, status.stderr
    body = json.loads(status.stdout)
    assert set(body) == set(own_stack.connector_names)
    for info in body.values():
        assert info["state"] == "RUNNING" and info["tasks"] == ["RUNNING"], info
    topics = AdminClient({"bootstrap.servers": own_stack.kafka_bootstrap}).list_topics(timeout=15)
    # The change topic was created by Debezium (topic.creation.default.partitions), the
    # DLQ by `apply`; an earlier test here let the broker auto-create the predictions one.
    for topic in (own_stack.listings_topic, own_stack.dlq_topic):
        assert len(topics.topics[topic].partitions) == own_stack.partitions == 3
    # Without the sink connector, status says so and fails.
    client._request("DELETE", f"{own_stack.connect_url}/connectors/{own_stack.sink_connector}")
    try:
        wait_until(
            lambda: (
                client.connector_status(own_stack.connect_url, own_stack.sink_connector) is None
            ),
            30,
            "the sink connector to be deleted",
        )
        missing = _cli(own_stack, "connectors", "status", "--json")
        assert missing.returncode == 1
        assert json.loads(missing.stdout)[own_stack.sink_connector]["state"] == "MISSING"
    finally:
        assert _cli(own_stack, "connectors", "apply").returncode == 0


def test_status_json_describes_every_component(own_stack: Settings) -> None:
    apply_connectors(own_stack)  # the slot exists once the source connector has run
    result = _cli(own_stack, "stack", "status", "--json")
    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)
    assert set(body) == {"postgres", "kafka", "registry", "connect", "adminer"}
    for field, name in zip(
        ("postgres_port", "kafka_port", "registry_port", "connect_port", "adminer_port"),
        ("postgres", "kafka", "registry", "connect", "adminer"),
        strict=True,
    ):
        info = body[name]
        assert info["state"] == "running"
        assert info["host"] == "127.0.0.1"
        assert info["port"] == getattr(own_stack, field)
        assert str(info["port"]) in info["url"]
    assert body["registry"]["url"] == own_stack.registry_url
    assert body["connect"]["url"] == own_stack.connect_url
    assert body["connect"]["failures"] == []  # every connector part is RUNNING
    # The CDC slot's health, with its distance from the WAL cap that would invalidate it.
    slot = body["postgres"]["replication"]
    assert slot["slot"] == postgres.SLOT and slot["wal_status"] == "reserved", slot
    assert 0 <= slot["retained_bytes"] < slot["cap_bytes"] == 2 * 2**30
    assert slot["confirmed_lsn"] > 0  # the source connector has read and committed
    assert slot["warning"] is None
    assert requests.get(body["registry"]["url"] + "/subjects", timeout=5).status_code == 200


def _scrape(url: str) -> dict[str, float]:
    """``{name{labels}: value}`` of a Prometheus text endpoint; {} while it is not up."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        text = requests.get(url, timeout=5).text
    except requests.RequestException:
        return {}
    return {
        sample.name + json.dumps(sample.labels, sort_keys=True): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _superuser_sql(settings: Settings, *statements: str) -> Any:
    """Run ``statements`` as the superuser outside a transaction (ALTER SYSTEM needs it);
    return the first row of the last one, if it returns rows."""
    conn = psycopg2.connect(stack.postgres_dsn(settings, role="superuser"))
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            for statement in statements:
                cur.execute(statement)
            return cur.fetchone() if cur.description else None
    finally:
        conn.close()


def test_connectors_watch_exports_the_slot_health_and_flags_it_before_the_cap(
    own_stack: Settings,
) -> None:
    from streaming_ml.bench import settings_env
    from tests.fixtures.ports import free_port

    settings = own_stack
    client.ensure_connectors(settings)  # the source connector creates the slot
    port = free_port()
    log = settings.state_dir / "logs" / "watch-test.log"
    cli = Path(sys.executable).parent / "streaming-ml"
    slot = json.dumps({"slot": postgres.SLOT})
    source_url = f"{settings.connect_url}/connectors/{settings.source_connector}"
    with log.open("wb") as output:
        watcher = subprocess.Popen(
            [str(cli), "connectors", "watch", "--interval", "1", "--metrics-port", str(port)],
            env={**os.environ, **settings_env(settings)}, stdout=output, stderr=output,
        )  # fmt: skip
    url = f"http://{settings.host}:{port}/metrics"
    try:
        healthy = wait_until(lambda: _scrape(url), 30, "the watcher's /metrics")
        assert healthy["sml_replication_slot_up" + slot] == 1, healthy
        assert healthy["sml_replication_slot_warning" + slot] == 0
        assert healthy["sml_replication_slot_wal_cap_bytes" + slot] == 2 * 2**30
        reserved = json.dumps({"slot": postgres.SLOT, "wal_status": "reserved"}, sort_keys=True)
        assert healthy["sml_replication_slot_wal_status" + reserved] == 1
        assert 0 <= healthy["sml_replication_slot_retained_wal_bytes" + slot] < 2**30

        # Stopped, the source connector confirms nothing: the slot keeps every WAL byte
        # written from now on. Write ~19 MB of it in another database, then restart Postgres
        # with a cap of two WAL segments (32 MB; Postgres keeps whole 16 MB segments): the
        # slot is past half of it, yet within it, so Postgres does not invalidate it.
        assert requests.put(f"{source_url}/stop", timeout=30).status_code in (202, 204)
        wait_until(
            lambda: not _superuser_sql(
                settings,
                f"SELECT active FROM pg_replication_slots WHERE slot_name = '{postgres.SLOT}'",
            )[0],
            60, "the slot to go inactive",
        )  # fmt: skip
        _superuser_sql(
            settings,
            "CREATE TABLE wal_filler AS SELECT md5(i::text) || repeat('x', 968) AS pad "
            "FROM generate_series(1, 18000) AS i",
            "DROP TABLE wal_filler",
        )
        retained = postgres.slot_health(stack.postgres_dsn(settings, "reader"))
        cap_mb = 32
        assert 16 * 2**20 < retained["retained_bytes"] < 28 * 2**20, retained
        stack.restart_component(
            settings.model_copy(update={"slot_wal_keep_size": f"{cap_mb}MB"}), postgres.NAME
        )
        flagged = wait_until(
            lambda: (m := _scrape(url)).get("sml_replication_slot_warning" + slot) == 1 and m,
            30, "the slot warning metric",
            explain=lambda: f"{_scrape(url)}; {log.read_text()[-1500:]}",
        )  # fmt: skip
        assert flagged["sml_replication_slot_wal_cap_bytes" + slot] == cap_mb * 2**20
        assert flagged["sml_replication_slot_active" + slot] == 0
        for gone in ("unreserved", "lost"):  # flagged while the changes are still there
            labels = json.dumps({"slot": postgres.SLOT, "wal_status": gone}, sort_keys=True)
            assert flagged["sml_replication_slot_wal_status" + labels] == 0
        assert flagged["sml_replication_slot_safe_wal_bytes" + slot] > 0
        wait_until(lambda: b"over half" in log.read_bytes(), 30, "the watcher's warning log")
    finally:
        stack.restart_component(settings, postgres.NAME)
        requests.put(f"{source_url}/resume", timeout=30)
        watcher.terminate()
        watcher.wait(timeout=30)
    assert watcher.returncode == 0, log.read_text()[-2000:]
    statuses = client.ensure_connectors(settings)
    assert statuses[settings.source_connector]["connector"]["state"] == "RUNNING"
    assert postgres.slot_health(stack.postgres_dsn(settings, "reader"))["wal_status"] == "reserved"


def _uids(pid: int) -> set[int] | None:
    """Real, effective, saved and filesystem uids of a process; None once it has exited."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):  # gone before, or during, the read
        return None
    for line in status.splitlines():
        if line.startswith("Uid:"):
            return {int(uid) for uid in line.split()[1:]}
    raise AssertionError(f"no Uid line for pid {pid}")


def test_components_started_by_root_run_as_unprivileged_users(own_stack: Settings) -> None:
    import pwd

    if os.geteuid() != 0:
        pytest.skip("started by a normal user every component already runs as that user")
    expected = {
        name: detached.COMPONENT_USER for name in ("kafka", "registry", "connect", "adminer")
    }
    expected["postgres"] = "postgres"
    for name, info in stack.status(own_stack).items():
        assert info["pid"], name
        uid = pwd.getpwnam(expected[name]).pw_uid
        assert _uids(info["pid"]) == {uid}, name
        # PHP and Postgres workers come and go (autovacuum, a request's child): one that
        # exited between listing and reading has nothing left to check.
        for pid in processes.descendants(info["pid"]):
            assert _uids(pid) in ({uid}, None), (name, pid)
    # What they write belongs to them: nothing under Kafka's log dir is root's.
    component_uid = pwd.getpwnam(detached.COMPONENT_USER).pw_uid
    data = own_stack.state_dir / "kafka" / "data"
    owners = {path.stat().st_uid for path in [data, *data.rglob("*")]}
    assert owners == {component_uid}, owners


def test_psql_runs_as_the_app_role(own_stack: Settings) -> None:
    result = _cli(own_stack, "stack", "psql", "-c", "SELECT current_user, current_database()")
    assert result.returncode == 0, result.stderr
    assert "cars_app" in result.stdout and "cars" in result.stdout
    failed = _cli(own_stack, "stack", "psql", "-c", "SELECT * FROM no_such_table")
    assert failed.returncode != 0
    assert "no_such_table" in failed.stderr


def test_connector_roles_are_least_privilege(own_stack: Settings) -> None:
    with psycopg2.connect(stack.postgres_dsn(own_stack, role="sink")) as conn, conn.cursor() as cur:
        cur.execute("SELECT rolsuper, rolreplication FROM pg_roles WHERE rolname = current_user")
        assert cur.fetchone() == (False, False)
        with pytest.raises(psycopg2.errors.InsufficientPrivilege):
            cur.execute("SELECT * FROM public.car_listings")
    with (
        psycopg2.connect(stack.postgres_dsn(own_stack, role="source")) as conn,
        conn.cursor() as cur,
    ):
        cur.execute("SELECT rolsuper, rolreplication FROM pg_roles WHERE rolname = current_user")
        assert cur.fetchone() == (False, True)
        with pytest.raises(psycopg2.errors.InsufficientPrivilege):
            cur.execute("INSERT INTO public.car_price_predictions (listing_id) VALUES (1)")


def test_failed_up_stops_what_it_started(own_stack: Settings) -> None:
    settings = own_stack
    stack.down(settings)
    meta = settings.state_dir / "kafka" / "data" / "meta.properties"
    original = meta.read_text()
    # A real start-up failure: the broker refuses a log dir that belongs to another node.
    meta.write_text(original.replace("node.id=1", "node.id=7"))
    try:
        with pytest.raises(StackError) as error:
            stack.up(settings)
        assert str(error.value).startswith("kafka exited while starting")
        assert "See " in str(error.value) and "kafka" in str(error.value)
        # Postgres and Adminer had been started by that call: they are stopped again.
        for name, info in stack.status(settings).items():
            assert info["state"] == "stopped", name
        for field in PORT_FIELDS:
            assert not processes.port_open(settings.host, getattr(settings, field)), field
    finally:
        meta.write_text(original)
    stack.up(settings)
    assert all(info["state"] == "running" for info in stack.status(settings).values())


def test_final_down_leaves_no_process_and_no_port(own_stack: Settings) -> None:
    settings = own_stack
    pids = [info["pid"] for info in stack.status(settings).values()]
    assert all(pids)
    stack.down(settings, purge=True)
    for pid in pids:
        assert _gone(pid), pid
    for field in PORT_FIELDS:
        assert not processes.port_open(settings.host, getattr(settings, field)), field
    assert not settings.state_dir.exists()
    assert (settings.dist_dir / "kafka").is_dir()  # jars are kept


def _gone(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True
    return "State:\tZ" in status
