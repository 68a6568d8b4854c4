"""`streaming-ml run` against infrastructure that is not set up the way `stack up` sets it
up: Kafka reached only through a SASL_PLAINTEXT/SCRAM-SHA-512 listener (added by this test
to a private stack's broker) and Postgres reached as a role of its own, on another host name,
with a password full of URL delimiters. It prices 1,000 inserted rows end to end; no
password is on any process's command line or in any log; Ctrl-C stops what `run` started
and leaves the stack running."""

from __future__ import annotations

import secrets
import signal
import subprocess
import sys
from pathlib import Path

import psycopg2
import pytest
from confluent_kafka.admin import (
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialUpsertion,
)
from psycopg2 import sql

from streaming_ml.config import Settings
from streaming_ml.datasets.load import load_listings
from streaming_ml.datasets.predictions import wait_for_predictions
from streaming_ml.kafka import clients
from streaming_ml.stack import apps, postgres
from streaming_ml.stack.secrets import APP_ROLE, load_passwords
from streaming_ml.system import processes
from streaming_ml.system.waits import wait_until
from tests.fixtures.ports import free_port
from tests.fixtures.stack import private_stack_settings
from tests.integration.pipeline import settings_env

pytestmark = pytest.mark.integration

ROWS = 1_000
KAFKA_USER = "pricing"
PG_USER = "pricing_app"
APP_PROCESSES = {"service", "bridge-0", "evaluator", "dashboard", "watchdog"}


def _broker_properties(settings: Settings, sasl_port: int) -> str:
    host = settings.host
    return "\n".join(
        [
            f"listeners=PLAINTEXT://{host}:{settings.kafka_port},"
            f"CONTROLLER://{host}:{settings.kafka_controller_port},"
            f"SASL_PLAINTEXT://{host}:{sasl_port}",
            f"advertised.listeners=PLAINTEXT://{host}:{settings.kafka_port},"
            f"SASL_PLAINTEXT://{host}:{sasl_port}",
            "listener.security.protocol.map="
            "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT",
            "sasl.enabled.mechanisms=SCRAM-SHA-512",
            "listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config="
            "org.apache.kafka.common.security.scram.ScramLoginModule required;",
            "",
        ]
    )


def _create_scram_user(settings: Settings, password: str) -> None:
    """Through the plain listener, as an operator would with kafka-configs (the password
    goes in the request, not on a command line)."""
    admin = clients.admin(settings)
    upsert = UserScramCredentialUpsertion(
        KAFKA_USER, ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 4096), password.encode()
    )
    for future in admin.alter_user_scram_credentials([upsert]).values():
        future.result(timeout=30)


def _create_database_role(settings: Settings, password: str) -> None:
    """A login role of its own with the application role's rights; only a SCRAM verifier
    reaches the server."""
    superuser = postgres.superuser_dsn(settings, load_passwords(settings.state_dir), "cars")
    conn = psycopg2.connect(superuser)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(PG_USER)))
            cur.execute(postgres.set_password_sql(conn, PG_USER, password))
            cur.execute(
                sql.SQL("GRANT {} TO {}").format(sql.Identifier(APP_ROLE), sql.Identifier(PG_USER))
            )
    finally:
        conn.close()


def _secret_file(path: Path, value: str) -> Path:
    path.write_text(value + "\n")
    path.chmod(0o600)
    return path


def _command_lines(root: int) -> list[str]:
    lines = []
    for pid in [root, *processes.descendants(root)]:
        try:
            lines.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode())
        except OSError:
            continue  # exited meanwhile
    return lines


def test_run_prices_rows_through_sasl_kafka_and_its_own_postgres_role(
    trained_model_tag: str, tmp_path: Path
) -> None:
    from streaming_ml.stack import down, stack_running, up

    base = private_stack_settings("sml-run-own-")
    sasl_port = free_port()
    broker_props = base.state_dir / "broker-sasl.properties"
    broker_props.write_text(_broker_properties(base, sasl_port))
    settings = base.model_copy(
        update={
            "kafka_broker_properties_file": broker_props,
            "service_port": free_port(),
            "bridge_metrics_port": free_port(),
            "evaluator_metrics_port": free_port(),
            "dashboard_port": free_port(),
            "watchdog_metrics_port": free_port(),
        }
    )
    kafka_password = "k@f:k/a#%" + secrets.token_urlsafe(12)
    pg_password = "p@g:s/q#%l " + secrets.token_urlsafe(12)
    client_props = tmp_path / "kafka-client.properties"
    client_props.write_text(
        "# librdkafka settings of every client\n"
        "security.protocol=SASL_PLAINTEXT\n"
        "sasl.mechanism=SCRAM-SHA-512\n"
        f"sasl.username={KAFKA_USER}\n"
    )
    output = tmp_path / "run.out"
    run: subprocess.Popen[bytes] | None = None
    try:
        up(settings)
        _create_scram_user(settings, kafka_password)
        _create_database_role(settings, pg_password)

        env = settings_env(settings)
        env.pop("SML_KAFKA_BROKER_PROPERTIES_FILE", None)
        env.update(
            {
                # Only the SASL listener: the plain one is the stack's, not the app's.
                "SML_KAFKA_BOOTSTRAP_SERVERS": f"{settings.host}:{sasl_port}",
                "SML_KAFKA_CLIENT_PROPERTIES_FILE": str(client_props),
                "SML_KAFKA_SASL_PASSWORD_FILE": str(
                    _secret_file(tmp_path / "kafka-password", kafka_password)
                ),
                # Another host name for the same server, a role and password of its own.
                "SML_POSTGRES_HOST": "localhost",
                "SML_POSTGRES_USER": PG_USER,
                "SML_POSTGRES_PASSWORD": pg_password,
                "SML_SCHEMA_REGISTRY_URL": settings.registry_url,
                "SML_KAFKA_CONNECT_URL": settings.connect_url,
            }
        )
        with output.open("wb") as out:
            run = subprocess.Popen(
                [sys.executable, "-m", "streaming_ml.cli", "run"],
                env=env, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        wait_until(
            lambda: run.poll() is not None or "Running" in output.read_text(),
            timeout=420, interval=1.0, what="streaming-ml run to start",
        )  # fmt: skip
        assert run.poll() is None, output.read_text()[-4000:]
        assert {
            name for name, info in apps.status(settings.state_dir).items()
            if info["state"] == "running"
        } == APP_PROCESSES  # fmt: skip

        app_dsn = psycopg2.extensions.make_dsn(
            host="localhost", port=settings.postgres_port, user=PG_USER,
            password=pg_password, dbname=settings.database,
        )  # fmt: skip
        summary = load_listings(app_dsn, ROWS, seed=77, batch=100, table=settings.listings_table)
        assert len(summary.ids) == ROWS
        priced = wait_for_predictions(app_dsn, settings.predictions_table, summary.ids, 300)
        assert len(priced) == ROWS, output.read_text()[-4000:]

        for line in _command_lines(run.pid):
            assert kafka_password not in line and pg_password not in line, line
        run.send_signal(signal.SIGINT)
        assert run.wait(timeout=120) == 0, output.read_text()[-4000:]

        logs = [output, *sorted((settings.state_dir / "logs").glob("*"))]
        for log in logs:
            text = log.read_text(errors="replace")
            assert kafka_password not in text, log
            assert pg_password not in text, log
        # What run started is gone; the stack it did not start still runs.
        assert apps.status(settings.state_dir) == {}
        assert stack_running(settings)
        for port in (settings.service_port, settings.dashboard_port, settings.bridge_metrics_port):
            assert not processes.port_open(settings.host, port), port
    finally:
        if run is not None and run.poll() is None:
            run.kill()
            run.wait(timeout=30)
        for name in apps.recorded(settings.state_dir):
            apps.stop(settings.state_dir, name)
        down(settings, purge=True)
