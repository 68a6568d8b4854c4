"""Stack configuration that needs no running component: init SQL, connector configs,
worker/broker properties, secrets, port conflicts and process-group stop."""

from __future__ import annotations

import json
import shutil
import socket
import stat
import sys
from pathlib import Path
from typing import Any

import pytest

from streaming_ml import stack
from streaming_ml.config import REPO_ROOT, Settings
from streaming_ml.connect import client
from streaming_ml.errors import ConfigError, StackError
from streaming_ml.kafka.changes import UNCHANGED_HEADER
from streaming_ml.schema import ddl
from streaming_ml.stack import connect_worker, detached, jars, kafka, postgres, secrets, up
from streaming_ml.system import processes
from tests.fixtures.ports import free_port
from tests.fixtures.stack import private_stack_settings

SOURCE = "car-listings-source"
SINK = "car-price-predictions-sink"


def test_schema_sql_file_matches_the_generator() -> None:
    text = (REPO_ROOT / "postgres" / postgres.SCHEMA_SQL).read_text()
    assert text == postgres.schema_sql()
    assert ddl.listings_ddl() in text
    assert ddl.predictions_ddl() in text


def test_init_sql_creates_least_privilege_roles_and_publication() -> None:
    roles = (REPO_ROOT / "postgres" / "01-roles.sql").read_text()
    assert "CREATE ROLE cars_cdc LOGIN REPLICATION" in roles
    assert "SUPERUSER" not in roles  # no connector role gets superuser rights
    schema = postgres.schema_sql()
    assert "GRANT SELECT ON public.car_listings TO cars_cdc;" in schema
    assert (
        "GRANT SELECT, INSERT, UPDATE, DELETE ON public.car_price_predictions TO cars_sink;"
        in schema
    )
    publication = (REPO_ROOT / "postgres" / "03-publication.sql").read_text()
    assert f"CREATE PUBLICATION {postgres.PUBLICATION} FOR TABLE public.car_listings" in publication


def _settings() -> Settings:
    return Settings(
        host="127.0.0.1", postgres_port=15432, registry_port=18081, kafka_port=19092,
        state_dir=Path("/nonexistent-state"),
    )  # fmt: skip


@pytest.mark.parametrize("name", [SOURCE, SINK])
def test_connector_configs_render_without_secrets(name: str) -> None:
    config = client.load_connector(name, _settings())
    text = json.dumps(config)
    assert "{{" not in text and "}}" not in text
    password = config.get("database.password") or config.get("connection.password")
    assert password is not None and password.startswith("${env:SML_PG_")
    for side in ("key", "value"):
        prefix = f"{side}.converter"
        assert config[prefix] == connect_worker.CONVERTER_CLASS
        assert (
            config[f"{prefix}.apicurio.registry.url"] == "http://127.0.0.1:18081/apis/registry/v3"
        )
        # Confluent wire format: 4-byte ids, no headers, ids as the ccompat API hands them out.
        assert config[f"{prefix}.apicurio.registry.headers.enabled"] == "false"
        assert config[f"{prefix}.apicurio.registry.id-handler"].endswith("Default4ByteIdHandler")
        assert config[f"{prefix}.apicurio.registry.use-id"] == "contentId"


def test_source_connector_settings() -> None:
    config = client.load_connector(SOURCE, _settings())
    assert config["plugin.name"] == "pgoutput"
    assert config["database.hostname"] == "127.0.0.1"
    assert config["database.port"] == "15432"
    assert config["database.user"] == secrets.SOURCE_ROLE
    assert config["topic.prefix"] == "cars"
    assert config["table.include.list"] == "public.car_listings"
    assert config["slot.name"] == postgres.SLOT
    assert config["publication.name"] == postgres.PUBLICATION
    assert config["publication.autocreate.mode"] == "disabled"
    assert config["transforms.unwrap.add.fields"] == "op,lsn,source.ts_ms,ts_ms"
    # Debezium's idle waits between reads set the floor of commit_to_kafka (bench hops).
    assert int(config["poll.interval.ms"]) <= 10
    # The header the bridge reads to skip price-only updates, added before the unwrap;
    # the partitions of the change topic Debezium creates.
    assert config["transforms"] == "changes,unwrap"
    assert config["transforms.changes.type"] == "io.debezium.transforms.ExtractChangedRecordState"
    assert config["transforms.changes.header.unchanged.name"] == UNCHANGED_HEADER
    assert config["topic.creation.default.partitions"] == str(_settings().partitions)
    # A huge text value would make the change event too large for Kafka and fail the task
    # forever: text columns are cut at capture to one character over the rule's limit, so
    # the bridge still refuses the row, with its reason.
    from streaming_ml.schema.listing import LISTING_COLUMNS, MAX_CATEGORY_CHARS

    texts = [c.name for c in LISTING_COLUMNS if c.kind == "category"]
    truncate = config[f"column.truncate.to.{MAX_CATEGORY_CHARS + 1}.chars"]
    assert truncate.split(",") == [f"public.car_listings.{name}" for name in texts]


def test_sink_connector_settings() -> None:
    config = client.load_connector(SINK, _settings())
    assert config["topics"] == "car_price_predictions"
    assert config["connection.url"] == "jdbc:postgresql://127.0.0.1:15432/cars"
    assert config["connection.username"] == secrets.SINK_ROLE
    assert config["insert.mode"] == "upsert"
    assert config["primary.key.mode"] == "record_key"
    assert config["primary.key.fields"] == "listing_id"
    assert config["delete.enabled"] == "true"
    assert config["collection.name.format"] == "public.car_price_predictions"


def test_render_rejects_unknown_placeholder() -> None:
    with pytest.raises(ConfigError, match="no_such_value"):
        client.render_connector({"x": "{{no_such_value}}"}, {"known": "1"})


def test_render_keeps_connect_config_provider_references() -> None:
    rendered = client.render_connector({"p": "${env:X}", "h": "{{host}}"}, {"host": "db"})
    assert rendered == {"p": "${env:X}", "h": "db"}


def test_worker_gets_secrets_only_through_its_environment(tmp_path: Path) -> None:
    settings = _settings()
    props = connect_worker.worker_properties(settings, tmp_path)
    passwords = secrets.ensure_passwords(tmp_path)
    assert "EnvVarConfigProvider" in props
    for role in secrets.ROLES:
        assert passwords[role] not in props
    env = connect_worker.worker_env(passwords)
    assert env[secrets.SOURCE_PASSWORD_ENV] == passwords[secrets.SOURCE_ROLE]
    assert env[secrets.SINK_PASSWORD_ENV] == passwords[secrets.SINK_ROLE]


def test_connect_resolves_only_the_two_passwords_and_no_client_overrides(tmp_path: Path) -> None:
    import re

    lines = dict(
        line.split("=", 1)
        for line in connect_worker.worker_properties(_settings(), tmp_path).splitlines()
    )
    assert lines["config.providers"] == "env"  # no ${file:...}
    allowed = re.compile(lines["config.providers.env.param.allowlist.pattern"])
    assert allowed.match(secrets.SOURCE_PASSWORD_ENV) and allowed.match(secrets.SINK_PASSWORD_ENV)
    for other in ("HOME", "PATH", "SML_PG_APP_PASSWORD", f"{secrets.SINK_PASSWORD_ENV}_X"):
        assert not allowed.match(other), other
    assert lines["connector.client.config.override.policy"] == "None"
    # Every ${env:...} the connectors use is allowed.
    for path in client.CONNECTORS_DIR.glob("*.json"):
        for name in re.findall(r"\$\{env:([A-Z_]+)\}", path.read_text()):
            assert allowed.match(name), (path.name, name)


def test_kafka_listens_on_loopback_only() -> None:
    props = kafka.server_properties(_settings())
    lines = dict(line.split("=", 1) for line in props.splitlines())
    assert lines["listeners"] == "PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:9093"
    assert lines["advertised.listeners"] == "PLAINTEXT://127.0.0.1:19092"
    assert lines["offsets.topic.replication.factor"] == "1"


def test_postgres_listens_on_loopback_with_logical_wal() -> None:
    argv = postgres.server_argv(_settings())
    options = dict(argv[i + 1].split("=", 1) for i, arg in enumerate(argv) if arg == "-c")
    assert options["listen_addresses"] == "127.0.0.1"
    assert options["port"] == "15432"
    assert options["wal_level"] == "logical"
    assert int(options["max_replication_slots"]) >= 4
    assert options["max_slot_wal_keep_size"] != "-1"


def test_passwords_are_private_stable_and_not_in_repr(tmp_path: Path) -> None:
    first = secrets.ensure_passwords(tmp_path)
    again = secrets.ensure_passwords(tmp_path)
    path = secrets.secrets_path(tmp_path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    for role in secrets.ROLES:
        assert first[role] == again[role]
        assert len(first[role]) >= 24
        assert first[role] not in repr(first)
    assert len({first[role] for role in secrets.ROLES}) == len(secrets.ROLES)


def test_missing_credentials_say_to_start_the_stack(tmp_path: Path) -> None:
    with pytest.raises(StackError, match="stack up"):
        secrets.load_passwords(tmp_path)


def test_up_refuses_a_port_in_use_and_starts_nothing() -> None:
    settings = private_stack_settings(prefix="sml-unit-")
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            taken = busy.getsockname()[1]
            settings = settings.model_copy(update={"registry_port": taken})
            with pytest.raises(StackError) as error:
                up(settings)
        message = str(error.value)
        assert message.startswith("registry:")
        assert f"127.0.0.1:{taken} is already in use" in message
        assert "SML_REGISTRY_PORT" in message
        # Nothing was started: no pid file for any component.
        assert not (settings.state_dir / "run").exists()
    finally:
        shutil.rmtree(settings.state_dir, ignore_errors=True)


def test_stop_ends_the_whole_process_group(tmp_path: Path) -> None:
    # A parent that ignores SIGTERM plus a child: stop() must escalate and leave neither.
    script = (
        "import signal, subprocess, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    pid = detached.start("sleeper", [sys.executable, "-c", script], state_dir=tmp_path)
    log = detached.log_path(tmp_path, "sleeper")
    detached.wait_until(
        "sleeper", "child pid in the log", lambda: log.read_text().strip()[-1:].isdigit(),
        timeout=20, pid=pid, log=log,
    )  # fmt: skip
    child = int(log.read_text().split()[-1])
    assert detached.running_pid(tmp_path, "sleeper") == pid
    assert detached.stop(tmp_path, "sleeper", timeout=1.0)
    for gone in (pid, child):
        assert not Path(f"/proc/{gone}").exists() or _is_zombie(gone)
    assert detached.running_pid(tmp_path, "sleeper") is None
    assert not detached.stop(tmp_path, "sleeper")


def _is_zombie(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True
    return "State:\tZ" in status


def test_port_helpers() -> None:
    port = free_port()
    assert processes.port_free("127.0.0.1", port)
    assert not processes.port_open("127.0.0.1", port)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", port))
        sock.listen()
        assert processes.port_open("127.0.0.1", port)
        assert not processes.port_free("127.0.0.1", port)


def test_missing_java_names_the_fix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(jars, "JAVA_HOME_17", tmp_path / "no-jdk")
    monkeypatch.setattr(jars.shutil, "which", lambda name: None)
    with pytest.raises(StackError, match="openjdk-17-jre-headless"):
        jars.java_binary()


def test_missing_maven_names_the_fix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(jars.shutil, "which", lambda name: None)
    with pytest.raises(StackError, match="apt-get install maven"):
        jars.fetch_jars(tmp_path / "dist")


def test_jar_stamp_follows_the_poms(tmp_path: Path) -> None:
    assert not jars.jars_present(tmp_path)
    (tmp_path / ".installed").write_text("stale\n")
    assert not jars.jars_present(tmp_path)


def test_purge_deletes_state_but_keeps_jars_inside_it(tmp_path: Path) -> None:
    state = tmp_path / "state"
    dist = state / "dist"
    (dist / "kafka").mkdir(parents=True)
    (dist / "kafka" / "kafka_2.13-4.3.1.jar").write_bytes(b"jar")
    (state / "postgres" / "data").mkdir(parents=True)
    (state / "logs").mkdir()
    (state / "logs" / "kafka.log").write_text("log")
    settings = Settings(state_dir=state, dist_dir=dist)
    stack.down(settings, purge=True)
    assert sorted(p.name for p in state.iterdir()) == ["dist"]
    assert (dist / "kafka" / "kafka_2.13-4.3.1.jar").read_bytes() == b"jar"


def test_kraft_cluster_ids_never_look_like_an_option() -> None:
    ids = [kafka.new_cluster_id() for _ in range(3000)]
    assert len(set(ids)) == 3000
    assert all(len(i) == 22 and not i.startswith("-") for i in ids)


def test_table_and_database_names_must_be_plain_identifiers() -> None:
    import pydantic

    from streaming_ml.config import Settings

    for field in ("listings_table", "predictions_table", "shadow_table", "database"):
        for bad in ('cars"; DROP TABLE car_listings; --', "Car Listings", "1cars", ""):
            with pytest.raises(pydantic.ValidationError, match=field):
                Settings(**{field: bad})
    assert Settings(listings_table="listings_2026").listings_table == "listings_2026"


def test_slot_warning_before_the_wal_cap_and_when_lost() -> None:
    cap = 2 * 2**30
    assert postgres.slot_warning("reserved", 10 * 2**20, cap) is None
    assert "over half" in str(postgres.slot_warning("extended", cap // 2 + 1, cap))
    assert "changes are lost" in str(postgres.slot_warning("lost", None, cap))
    assert "changes are lost" in str(postgres.slot_warning("unreserved", cap, cap))


def _slot_metrics(read: Any) -> dict[str, float]:
    """What a Prometheus scrape of SlotHealthMetrics(read) shows, as {series: value}."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    registry = CollectorRegistry()
    registry.register(postgres.SlotHealthMetrics(read))
    text = generate_latest(registry).decode()
    return {
        sample.name + json.dumps(sample.labels, sort_keys=True): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _health(wal_status: str, retained: int | None, cap: int) -> dict[str, Any]:
    safe = None if retained is None else cap - retained
    return {
        "slot": postgres.SLOT, "active": False, "wal_status": wal_status,
        "retained_bytes": retained, "safe_wal_size_bytes": safe, "cap_bytes": cap,
        "confirmed_lsn": None, "warning": postgres.slot_warning(wal_status, retained, cap),
    }  # fmt: skip


SLOT = json.dumps({"slot": postgres.SLOT})


def test_slot_metrics_flag_a_slot_past_half_its_cap_and_a_lost_one(
    caplog: pytest.LogCaptureFixture,
) -> None:
    cap = 2 * 2**30
    healthy = _slot_metrics(lambda: _health("reserved", 10 * 2**20, cap))
    nearly_full = _slot_metrics(lambda: _health("extended", cap // 2 + 1, cap))
    with caplog.at_level("WARNING", logger="streaming_ml.stack.postgres"):
        lost = _slot_metrics(lambda: _health("lost", None, cap))

    assert healthy["sml_replication_slot_up" + SLOT] == 1
    assert healthy["sml_replication_slot_warning" + SLOT] == 0
    assert healthy["sml_replication_slot_retained_wal_bytes" + SLOT] == 10 * 2**20
    assert healthy["sml_replication_slot_wal_cap_bytes" + SLOT] == cap
    status = 'sml_replication_slot_wal_status{"slot": "%s", "wal_status": "%s"}'
    assert healthy[status % (postgres.SLOT, "reserved")] == 1
    assert healthy[status % (postgres.SLOT, "lost")] == 0
    assert nearly_full["sml_replication_slot_warning" + SLOT] == 1
    assert lost["sml_replication_slot_warning" + SLOT] == 1
    assert lost[status % (postgres.SLOT, "lost")] == 1
    assert "sml_replication_slot_retained_wal_bytes" + SLOT not in lost  # unknown, not 0
    assert "changes are lost" in caplog.records[-1].warning


def test_slot_metrics_say_down_when_postgres_or_the_slot_is_missing() -> None:
    def unreachable() -> None:
        raise StackError("no stack credentials")

    assert _slot_metrics(unreachable) == {"sml_replication_slot_up" + SLOT: 0}
    assert _slot_metrics(lambda: None) == {"sml_replication_slot_up" + SLOT: 0}


def test_the_slot_warning_is_logged_once_per_change(caplog: pytest.LogCaptureFixture) -> None:
    cap = 2 * 2**30
    states = iter(["extended", "extended", "reserved", "extended"])
    metrics = postgres.SlotHealthMetrics(
        lambda: _health(state := next(states), cap // 2 + 1 if state == "extended" else 0, cap)
    )
    with caplog.at_level("INFO", logger="streaming_ml.stack.postgres"):
        for _ in range(4):
            metrics.check()

    assert [r.getMessage() for r in caplog.records] == [
        "replication slot needs attention",
        "replication slot healthy again",
        "replication slot needs attention",
    ]


def test_a_crashed_broker_registers_again_before_the_first_transaction_sweep() -> None:
    # Markers of a transaction aborted while the restarted node is not registered yet are
    # skipped (no leader): the transaction would hang and stop read_committed readers.
    props = dict(line.split("=", 1) for line in kafka.server_properties(_settings()).splitlines())
    session_ms = int(props["broker.session.timeout.ms"])
    first_sweep_ms = int(props["transaction.abort.timed.out.transaction.cleanup.interval.ms"])
    assert first_sweep_ms >= 2 * session_ms + int(props["broker.heartbeat.interval.ms"])


def test_the_jars_download_fails_on_a_checksum_mismatch(tmp_path: Path) -> None:
    from streaming_ml.stack.jars import maven_argv

    argv = maven_argv("mvn", tmp_path)
    assert "--strict-checksums" in argv
    assert argv[-1] == "package"


def _properties(settings: Settings, node: kafka.Node | None = None) -> dict[str, str]:
    text = kafka.server_properties(settings, node)
    return dict(line.split("=", 1) for line in text.splitlines())


def test_one_kafka_node_keeps_one_replica_everywhere_and_creates_no_topic_on_use() -> None:
    settings = _settings()
    (node,) = kafka.nodes(settings)
    assert (node.name, node.node_id, node.port, node.controller_port) == ("kafka", 1, 19092, 9093)
    props = _properties(settings)
    assert props == _properties(settings, node)
    assert props["node.id"] == "1"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:9093"
    assert props["log.dirs"] == "/nonexistent-state/kafka/data"
    assert props["auto.create.topics.enable"] == "false"
    for key in ("offsets.topic.replication.factor", "transaction.state.log.replication.factor",
                "share.coordinator.state.topic.replication.factor", "default.replication.factor",
                "transaction.state.log.min.isr", "share.coordinator.state.topic.min.isr",
                "min.insync.replicas"):  # fmt: skip
        assert props[key] == "1", key
    assert settings.kafka_bootstrap == "127.0.0.1:19092"
    assert settings.kafka_topic_configs() == {}
    worker = dict(
        line.split("=", 1)
        for line in connect_worker.worker_properties(settings, Path("/dist")).splitlines()
    )
    for kind in ("config", "offset", "status"):
        assert worker[f"{kind}.storage.replication.factor"] == "1"
    assert [c.name for c in stack.components(settings)] == [c.name for c in stack.COMPONENTS]


def test_three_kafka_nodes_form_one_quorum_on_their_own_ports_and_dirs() -> None:
    settings = _settings().model_copy(update={"kafka_nodes": 3})
    nodes = kafka.nodes(settings)
    assert [(n.name, n.node_id, n.port, n.controller_port) for n in nodes] == [
        ("kafka-1", 1, 19092, 9093),
        ("kafka-2", 2, 19094, 9095),
        ("kafka-3", 3, 19096, 9097),
    ]
    voters = "1@127.0.0.1:9093,2@127.0.0.1:9095,3@127.0.0.1:9097"
    every = [_properties(settings, node) for node in nodes]
    for node, props in zip(nodes, every, strict=True):
        assert props["node.id"] == str(node.node_id)
        assert props["process.roles"] == "broker,controller"
        assert props["controller.quorum.voters"] == voters
        assert props["listeners"] == (
            f"PLAINTEXT://127.0.0.1:{node.port},CONTROLLER://127.0.0.1:{node.controller_port}"
        )
        assert props["advertised.listeners"] == f"PLAINTEXT://127.0.0.1:{node.port}"
        assert props["log.dirs"] == f"/nonexistent-state/{node.name}/data"
        assert props["auto.create.topics.enable"] == "false"
        for key in ("offsets.topic.replication.factor", "transaction.state.log.replication.factor",
                    "share.coordinator.state.topic.replication.factor",
                    "default.replication.factor"):  # fmt: skip
            assert props[key] == "3", key
        for key in ("transaction.state.log.min.isr", "share.coordinator.state.topic.min.isr",
                    "min.insync.replicas"):  # fmt: skip
            assert props[key] == "2", key
    assert settings.kafka_bootstrap == "127.0.0.1:19092,127.0.0.1:19094,127.0.0.1:19096"
    assert settings.kafka_topic_configs() == {"min.insync.replicas": "2"}
    worker = dict(
        line.split("=", 1)
        for line in connect_worker.worker_properties(settings, Path("/dist")).splitlines()
    )
    assert worker["bootstrap.servers"] == settings.kafka_bootstrap
    for kind in ("config", "offset", "status"):
        assert worker[f"{kind}.storage.replication.factor"] == "3"
    names = [c.name for c in stack.components(settings)]
    assert names == ["postgres", "kafka-1", "kafka-2", "kafka-3", "registry", "connect", "adminer"]
    assert set(stack.endpoints(settings)) == set(names)


def test_kafka_nodes_ports_must_not_overlap() -> None:
    with pytest.raises(ValueError, match="overlap"):
        Settings(kafka_port=19092, kafka_controller_port=19094, kafka_nodes=3)


def test_up_refuses_a_state_dir_formatted_for_another_number_of_nodes(tmp_path: Path) -> None:
    single = Settings(state_dir=tmp_path)
    meta = kafka.data_dir(tmp_path) / "meta.properties"
    meta.parent.mkdir(parents=True)
    meta.write_text("cluster.id=abc\nnode.id=1\n")
    kafka.check_layout(single)
    assert kafka.cluster_id(single) == "abc"
    with pytest.raises(StackError, match="SML_KAFKA_NODES=3"):
        kafka.check_layout(single.model_copy(update={"kafka_nodes": 3}))
