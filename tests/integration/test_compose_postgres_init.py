"""`streaming-ml compose postgres-init`, the compose stack's one-shot database step, run
against a real Postgres 15 of its own (a throwaway cluster, so the session stack's passwords
are never touched): it applies postgres/NN-*.sql, gives each role the password compose
passes in as a SCRAM verifier (the plaintext never reaches the server), and can run again on
every `docker compose up`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator

import psycopg2
import pytest

from streaming_ml.config import REPO_ROOT, Settings
from streaming_ml.stack import detached, postgres, secrets
from streaming_ml.stack.compose import ENV_OF_ROLE
from tests.fixtures.stack import private_stack_settings

pytestmark = pytest.mark.integration

# Passwords as `streaming-ml compose init` or a user puts them in .env; one has a quote and
# a space, because they must reach SQL as literals, not as text.
ROLE_PASSWORDS = {
    "SML_PG_APP_PASSWORD": "cars-app 'local' only",
    "SML_PG_SOURCE_PASSWORD": "cars-cdc-local-only",
    "SML_PG_SINK_PASSWORD": "cars-sink-local-only",
    "SML_PG_REGISTRY_PASSWORD": "registry-local-only",
    "SML_PG_READER_PASSWORD": "cars-reader-local-only",
}
ROLE_OF = {variable: role for role, variable in ENV_OF_ROLE.items()}


@pytest.fixture(scope="module")
def bare_postgres() -> Iterator[tuple[Settings, str]]:
    """A cluster with only the superuser, as the postgres container starts, logging every
    statement (as an operator debugging it might). The tests share it and hold whether or
    not the step already ran on it (it must not matter)."""
    if not postgres.installed():
        pytest.fail("Postgres 15 is not installed; run `make setup` (streaming-ml stack install)")
    settings = private_stack_settings("sml-compose-pg-")
    passwords = secrets.ensure_passwords(settings.state_dir)
    run_as = postgres.server_user()
    try:
        postgres.initdb(settings, passwords, run_as)
        pid = postgres.start(settings, run_as)
        detached.wait_until(
            "postgres", "connections", lambda: postgres.ready(settings), timeout=60, pid=pid
        )
        admin = connect_as(settings, secrets.SUPERUSER, passwords[secrets.SUPERUSER], "postgres")
        admin.autocommit = True
        with admin.cursor() as cur:
            cur.execute("ALTER SYSTEM SET log_statement = 'all'")
            cur.execute("SELECT pg_reload_conf()")
        admin.close()
        yield settings, passwords[secrets.SUPERUSER]
    finally:
        detached.stop(settings.state_dir, postgres.NAME)
        shutil.rmtree(settings.state_dir, ignore_errors=True)


def run_init(
    settings: Settings, superuser_password: str, **passwords: str
) -> subprocess.CompletedProcess[str]:
    """The command the compose service runs, with the environment compose gives it."""
    with tempfile.TemporaryDirectory(prefix="sml-init-state-") as state_dir:
        env = {
            **os.environ,
            "SML_HOST": settings.host,
            "SML_POSTGRES_PORT": str(settings.postgres_port),
            "SML_STATE_DIR": state_dir,
            "POSTGRES_PASSWORD": superuser_password,
            **ROLE_PASSWORDS,
            **passwords,
        }
        return subprocess.run(
            [sys.executable, "-m", "streaming_ml", "compose", "postgres-init"],
            env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip


def connect_as(
    settings: Settings, role: str, password: str, database: str
) -> psycopg2.extensions.connection:
    return psycopg2.connect(postgres.dsn(settings, role, password, database))


def test_postgres_init_creates_roles_schema_and_passwords(
    bare_postgres: tuple[Settings, str],
) -> None:
    settings, superuser_password = bare_postgres
    first = run_init(settings, superuser_password)
    assert first.returncode == 0, first.stderr
    assert "roles and schema ready" in first.stdout
    applied = [line for line in first.stderr.splitlines() if "applying init SQL" in line]
    assert [line.rsplit("file=", 1)[1].split()[0] for line in applied] == sorted(
        path.name for path in (REPO_ROOT / "postgres").glob("[0-9][0-9]-*.sql")
    )
    # Every role logs in with exactly the password compose gave it.
    for variable, password in ROLE_PASSWORDS.items():
        role = ROLE_OF[variable]
        conn = connect_as(settings, role, password, postgres.database_for(role))
        conn.close()
        with pytest.raises(psycopg2.OperationalError):
            connect_as(settings, role, password + "x", postgres.database_for(role))
    conn = connect_as(
        settings, secrets.APP_ROLE, ROLE_PASSWORDS["SML_PG_APP_PASSWORD"], settings.database
    )
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1")
            assert [row[0] for row in cur.fetchall()] == sorted(
                [
                    settings.listings_table,
                    settings.predictions_table,
                    settings.shadow_table,
                    settings.outcomes_table,
                    settings.alerts_table,
                    settings.reprice_jobs_table,
                ]
            )
            cur.execute(
                "SELECT count(*) FROM pg_publication WHERE pubname = %s", (postgres.PUBLICATION,)
            )
            assert cur.fetchone() == (1,)
            cur.execute(
                "SELECT rolreplication FROM pg_roles WHERE rolname = %s", (secrets.SOURCE_ROLE,)
            )
            assert cur.fetchone() == (True,)
    finally:
        conn.close()


def test_postgres_init_runs_again_on_every_up(bare_postgres: tuple[Settings, str]) -> None:
    settings, superuser_password = bare_postgres
    assert run_init(settings, superuser_password).returncode == 0
    conn = connect_as(
        settings, secrets.APP_ROLE, ROLE_PASSWORDS["SML_PG_APP_PASSWORD"], settings.database
    )
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(
                f"INSERT INTO public.{settings.listings_table} (model, year, price, transmission, "
                'mileage, "fuelType", tax, mpg, "engineSize") '
                "VALUES ('Fiesta', 2019, 11000, 'Manual', 15000, 'Petrol', 145, 55.4, 1.0)"
            )
    finally:
        conn.close()
    again = run_init(settings, superuser_password)
    assert again.returncode == 0, again.stderr
    conn = connect_as(
        settings, secrets.APP_ROLE, ROLE_PASSWORDS["SML_PG_APP_PASSWORD"], settings.database
    )
    try:
        with conn.cursor() as cur:
            cur.execute(f"SELECT count(*) FROM public.{settings.listings_table}")
            assert cur.fetchone() == (1,), "re-running the init step must keep the data"
    finally:
        conn.close()


def test_postgres_init_stops_at_the_first_error(bare_postgres: tuple[Settings, str]) -> None:
    settings, superuser_password = bare_postgres
    result = run_init(settings, superuser_password + "-wrong")
    assert result.returncode != 0
    assert "password authentication failed" in result.stderr
    assert "roles and schema ready" not in result.stdout


def test_postgres_init_names_a_missing_password(bare_postgres: tuple[Settings, str]) -> None:
    settings, superuser_password = bare_postgres
    result = run_init(settings, superuser_password, SML_PG_READER_PASSWORD="")
    assert result.returncode != 0
    assert "SML_PG_READER_PASSWORD not set" in result.stderr
    assert "streaming-ml compose init" in result.stderr


def test_postgres_init_sends_verifiers_never_a_password(
    bare_postgres: tuple[Settings, str],
) -> None:
    """With every statement logged, the server saw SCRAM verifiers and no password; none
    was on a command line either (the step reads them from its environment)."""
    settings, superuser_password = bare_postgres
    log = detached.log_path(settings.state_dir, postgres.NAME)
    logged_before = log.stat().st_size
    assert run_init(settings, superuser_password).returncode == 0
    with log.open(errors="replace") as server_log:
        server_log.seek(logged_before)
        logged = server_log.read()
    for variable, password in ROLE_PASSWORDS.items():
        assert f"""ALTER ROLE "{ROLE_OF[variable]}" PASSWORD 'SCRAM-SHA-256$4096:""" in logged
        assert password.replace("'", "''") not in logged and password not in logged


def test_the_reader_reads_tables_and_slot_health_and_writes_nothing(
    bare_postgres: tuple[Settings, str],
) -> None:
    settings, superuser_password = bare_postgres
    assert run_init(settings, superuser_password).returncode == 0
    password = ROLE_PASSWORDS["SML_PG_READER_PASSWORD"]
    reader = connect_as(settings, secrets.READER_ROLE, password, settings.database)
    try:
        with reader.cursor() as cur:
            cur.execute(f"SELECT count(*) FROM public.{settings.predictions_table}")
            assert cur.fetchone() is not None
            with pytest.raises(psycopg2.errors.InsufficientPrivilege):
                cur.execute(f"DELETE FROM public.{settings.listings_table}")
    finally:
        reader.close()
    # `connectors watch` and `stack status` read the slot's health as the reader.
    admin = connect_as(settings, secrets.SUPERUSER, superuser_password, settings.database)
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            cur.execute(
                "SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (postgres.SLOT,)
            )
        health = postgres.slot_health(
            postgres.dsn(settings, secrets.READER_ROLE, password, settings.database)
        )
        assert health is not None
        assert health["slot"] == postgres.SLOT and health["wal_status"] == "reserved"
    finally:
        with admin.cursor() as cur:
            cur.execute("SELECT pg_drop_replication_slot(%s)", (postgres.SLOT,))
        admin.close()


def test_compose_pg_hba_refuses_physical_replication_and_allows_cdc(
    bare_postgres: tuple[Settings, str],
) -> None:
    from psycopg2.extras import LogicalReplicationConnection, PhysicalReplicationConnection

    settings, superuser_password = bare_postgres
    assert run_init(settings, superuser_password).returncode == 0
    hba = postgres.data_dir(settings.state_dir) / "pg_hba.conf"
    original = hba.read_text()
    admin = connect_as(settings, secrets.SUPERUSER, superuser_password, "postgres")
    admin.autocommit = True
    try:
        hba.write_text((REPO_ROOT / "docker" / "postgres" / "pg_hba.conf").read_text())
        with admin.cursor() as cur:
            cur.execute("SELECT pg_reload_conf()")
            cur.execute("SELECT count(*) FROM pg_hba_file_rules WHERE error IS NOT NULL")
            assert cur.fetchone() == (0,)
        cdc = postgres.dsn(
            settings, secrets.SOURCE_ROLE, ROLE_PASSWORDS["SML_PG_SOURCE_PASSWORD"], "cars"
        )
        # A base backup of the whole cluster needs a physical replication connection.
        with pytest.raises(psycopg2.OperationalError, match=r"pg_hba\.conf"):
            psycopg2.connect(cdc, connection_factory=PhysicalReplicationConnection)
        # Debezium's pgoutput stream is a logical replication connection to `cars`.
        psycopg2.connect(cdc, connection_factory=LogicalReplicationConnection).close()
        for variable, password in ROLE_PASSWORDS.items():
            role = ROLE_OF[variable]
            connect_as(settings, role, password, postgres.database_for(role)).close()
    finally:
        hba.write_text(original)
        with admin.cursor() as cur:
            cur.execute("SELECT pg_reload_conf()")
        admin.close()
