"""Settings for someone else's infrastructure: what every Kafka client, the registry client
and the Postgres connections are given, and that secrets stay out of reprs."""

from __future__ import annotations

from pathlib import Path

import pytest
from psycopg2.extensions import parse_dsn

from streaming_ml.config import Settings
from streaming_ml.errors import ConfigError, StackError
from streaming_ml.kafka import clients
from streaming_ml.kafka.properties import parse_properties
from streaming_ml.stack import apps, postgres_dsn


def test_properties_files_read_like_kafkas_tools_read_them() -> None:
    text = (
        "# a comment\n! another\n\n"
        "security.protocol=SASL_SSL\n"
        "sasl.mechanism : SCRAM-SHA-512\n"
        "ssl.ca.location=/etc/ca.pem\n"
        "sasl.username=first\\\n    second\n"
        "empty=\n"
    )
    assert parse_properties(text) == {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "ssl.ca.location": "/etc/ca.pem",
        "sasl.username": "firstsecond",
        "empty": "",
    }


def test_every_client_gets_the_bootstrap_servers_the_file_and_the_password(
    tmp_path: Path,
) -> None:
    props = tmp_path / "client.properties"
    props.write_text("security.protocol=SASL_PLAINTEXT\nsasl.mechanism=SCRAM-SHA-512\n")
    password = tmp_path / "password"
    password.write_text("s3cr@t:/#%\n")
    settings = Settings(
        kafka_bootstrap_servers="a:9094,b:9094",
        kafka_client_properties_file=props,
        kafka_sasl_password_file=password,
    )
    expected = {
        "bootstrap.servers": "a:9094,b:9094",
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.password": "s3cr@t:/#%",
    }
    assert clients.common_config(settings) == expected
    for config in (
        clients.consumer_config(settings, "g"),
        clients.producer_config(settings, "g"),
    ):
        assert expected.items() <= config.items()


def test_without_endpoints_clients_dial_the_local_stack() -> None:
    settings = Settings(host="127.0.0.9", kafka_port=19092)
    assert clients.common_config(settings) == {"bootstrap.servers": "127.0.0.9:19092"}
    assert settings.listen_host == "127.0.0.9"
    assert Settings(host="10.0.0.1", bind_host="0.0.0.0").listen_host == "0.0.0.0"


def test_the_environment_password_wins_and_a_missing_file_says_which(tmp_path: Path) -> None:
    assert Settings(kafka_sasl_password="env").sasl_password == "env"
    with pytest.raises(ConfigError, match="missing"):
        _ = Settings(kafka_sasl_password_file=tmp_path / "missing").sasl_password


def test_secrets_never_show_in_a_repr() -> None:
    settings = Settings(
        kafka_sasl_password="kafka-secret",
        postgres_password="pg-secret",
        schema_registry_password="registry-secret",
        postgres_dsn="host=db password=dsn-secret",
    )
    for secret in ("kafka-secret", "pg-secret", "registry-secret", "dsn-secret"):
        assert secret not in repr(settings)


def test_the_app_role_dsn_quotes_any_password() -> None:
    password = "p@ss:w/rd#% 'q'"
    settings = Settings(
        postgres_host="db.example.com", postgres_port=5433, postgres_user="pricing",
        postgres_password=password,
    )  # fmt: skip
    parsed = parse_dsn(postgres_dsn(settings))
    assert parsed == {
        "host": "db.example.com",
        "port": "5433",
        "user": "pricing",
        "password": password,
        "dbname": "cars",
        "connect_timeout": "5",
    }
    assert postgres_dsn(Settings(postgres_dsn="host=x dbname=y")) == "host=x dbname=y"


def test_registry_and_connect_urls_and_basic_auth() -> None:
    settings = Settings(
        schema_registry_url="https://reg.example.com/apis/ccompat/v7",
        schema_registry_user="me",
        schema_registry_password="pw",
        kafka_connect_url="https://connect.example.com",
    )
    assert settings.registry_url == "https://reg.example.com/apis/ccompat/v7"
    assert settings.registry_core_url == "https://reg.example.com/apis/registry/v3"
    assert settings.registry_basic_auth == "me:pw"
    assert settings.connect_url == "https://connect.example.com"
    assert Settings().registry_basic_auth is None


def test_application_process_names_never_match_a_stack_component() -> None:
    for name in ("service", "bridge-0", "bridge-12", "evaluator", "dashboard", "watchdog"):
        assert apps.APP_NAME.match(name)
    for name in ("postgres", "kafka", "registry", "connect", "adminer", "bridge-", "kafka-2"):
        assert not apps.APP_NAME.match(name)


def test_stack_status_and_logs_cover_the_processes_run_started(tmp_path: Path) -> None:
    from streaming_ml import stack

    settings = Settings(state_dir=tmp_path)
    (tmp_path / "run").mkdir()
    # A process that run started and that died since: its pid file is left behind.
    (tmp_path / "run" / "bridge-0.pid").write_text("999999999 12345\n")
    log = tmp_path / "logs" / "bridge-0.log"
    log.parent.mkdir()
    log.write_text("bridge output\n")
    current = stack.status(settings)
    assert current["bridge-0"]["state"] == "stopped"
    assert current["bridge-0"]["log"] == str(log)
    assert stack.log_files(settings, "bridge-0") == [log]
    with pytest.raises(StackError, match="unknown component 'bridge-1'"):
        stack.log_files(settings, "bridge-1")
