"""Postgres 15 from the Debian packages, with its own data dir under the state dir.

Logical decoding is on (``wal_level=logical``) for Debezium's pgoutput slot; TCP
listens on the loopback only and every login needs a SCRAM password. As root we
run the server as the Debian ``postgres`` OS user, because Postgres refuses root.
"""

from __future__ import annotations

import logging
import os
import pwd
import subprocess
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import psycopg2
from prometheus_client.core import GaugeMetricFamily, Metric
from psycopg2 import sql
from psycopg2.extensions import encrypt_password, make_dsn

from streaming_ml.config import REPO_ROOT, Settings
from streaming_ml.errors import StackError
from streaming_ml.schema import ddl
from streaming_ml.stack import detached
from streaming_ml.stack.secrets import (
    APP_ROLE,
    READER_ROLE,
    REGISTRY_ROLE,
    ROLES,
    SINK_ROLE,
    SOURCE_ROLE,
    SUPERUSER,
    Passwords,
)

logger = logging.getLogger(__name__)

NAME = "postgres"
BIN_DIR = Path("/usr/lib/postgresql/15/bin")
INIT_SQL_DIR = REPO_ROOT / "postgres"
SCHEMA_SQL = "02-schema.sql"
PUBLICATION = "car_listings_pub"
SLOT = "car_listings_slot"

# Short role aliases used by postgres_dsn() and the CLI.
ROLE_ALIASES = {
    "app": APP_ROLE,
    "source": SOURCE_ROLE,
    "sink": SINK_ROLE,
    "registry": REGISTRY_ROLE,
    "reader": READER_ROLE,
    "superuser": SUPERUSER,
}


def data_dir(state_dir: Path) -> Path:
    return state_dir / "postgres" / "data"


def socket_dir(state_dir: Path) -> Path:
    return state_dir / "postgres" / "run"


def installed() -> bool:
    return (BIN_DIR / "postgres").exists() and (BIN_DIR / "initdb").exists()


def psql_binary() -> Path:
    return BIN_DIR / "psql"


def schema_sql(settings: Settings | None = None) -> str:
    """Text of ``postgres/02-schema.sql``, derived from the schema in streaming_ml.data."""
    listings = settings.listings_table if settings else "car_listings"
    predictions = settings.predictions_table if settings else "car_price_predictions"
    shadow = settings.shadow_table if settings else "car_price_predictions_shadow"
    outcomes = settings.outcomes_table if settings else "car_price_outcomes"
    alerts = settings.alerts_table if settings else "car_price_alerts"
    jobs = settings.reprice_jobs_table if settings else "car_price_reprice_jobs"
    sink_tables = (predictions, shadow, outcomes, alerts)
    return (
        "-- GENERATED from streaming_ml.schema.ddl (listings_ddl, table_ddl); a unit test keeps\n"
        "-- this file equal to streaming_ml.stack.postgres.schema_sql(). Idempotent.\n"
        "\\connect cars\n"
        f"SET ROLE {APP_ROLE};\n"
        f"{ddl.listings_ddl(listings)}"
        f"{ddl.predictions_ddl(predictions)}"
        f"{ddl.predictions_ddl(shadow)}"
        f"{ddl.outcomes_ddl(outcomes)}"
        f"{ddl.alerts_ddl(alerts)}"
        f"{ddl.reprice_jobs_ddl(jobs)}"
        "-- Least privilege: the CDC role reads the listings, the sinks write their tables,\n"
        "-- the reader reads them all (the re-pricing jobs too: the dashboard's panel).\n"
        f"GRANT SELECT ON public.{listings} TO {SOURCE_ROLE};\n"
        + "".join(
            f"GRANT SELECT, INSERT, UPDATE, DELETE ON public.{table} TO {SINK_ROLE};\n"
            for table in sink_tables
        )
        + "".join(
            f"GRANT SELECT ON public.{table} TO {READER_ROLE};\n"
            for table in (listings, *sink_tables, jobs)
        )
        + "RESET ROLE;\n"
    )


def server_user() -> detached.RunAs | None:
    """The OS user to run the server as: ``postgres`` when we are root, else ourselves."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam("postgres")
    except KeyError as error:
        raise StackError(
            "postgres: running as root but there is no `postgres` OS user to run the server as. "
            "Install the Debian package (`apt-get install postgresql-15`), which creates it."
        ) from error
    return detached.RunAs(entry.pw_uid, entry.pw_gid, "postgres")


def _write_hba(path: Path) -> None:
    path.write_text(
        "# Written by streaming-ml: every login needs a SCRAM password, TCP on loopback only.\n"
        "local   all   all                 scram-sha-256\n"
        "host    all   all   127.0.0.1/32  scram-sha-256\n"
        "host    all   all   ::1/128       scram-sha-256\n"
    )


def initdb(settings: Settings, passwords: Passwords, run_as: detached.RunAs | None) -> bool:
    """Create the cluster on first start. Returns True when it was created now."""
    pgdata = data_dir(settings.state_dir)
    if (pgdata / "PG_VERSION").exists():
        return False
    for directory in (pgdata, socket_dir(settings.state_dir)):
        directory.mkdir(parents=True, exist_ok=True)
        os.chmod(directory, 0o700)
    pwfile = socket_dir(settings.state_dir) / "initdb.pw"
    fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(passwords[SUPERUSER] + "\n")
    if run_as:
        settings.state_dir.chmod(settings.state_dir.stat().st_mode | 0o011)
        (settings.state_dir / "postgres").mkdir(exist_ok=True)
        (settings.state_dir / "postgres").chmod(0o711)
        detached.check_traversable(settings.state_dir / "postgres", run_as, NAME)
        detached.own_tree(settings.state_dir / "postgres", run_as)
    try:
        result = subprocess.run(
            [
                str(BIN_DIR / "initdb"), "-D", str(pgdata), "-U", SUPERUSER,
                f"--pwfile={pwfile}", "--auth=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8",
            ],
            capture_output=True, text=True, timeout=120, cwd=pgdata.parent,
            user=run_as.uid if run_as else None, group=run_as.gid if run_as else None,
            extra_groups=[] if run_as else None,
        )  # fmt: skip
    finally:
        pwfile.unlink(missing_ok=True)
    if result.returncode != 0:
        raise StackError(f"postgres: initdb failed:\n{result.stderr.strip()[-2000:]}")
    _write_hba(pgdata / "pg_hba.conf")
    if run_as:
        os.chown(pgdata / "pg_hba.conf", run_as.uid, run_as.gid)
    return True


def server_argv(settings: Settings) -> list[str]:
    # Settings on the command line (not postgresql.conf) so a changed port or host
    # takes effect on the next `up` without editing the data dir.
    options = {
        "listen_addresses": settings.host,
        "port": str(settings.postgres_port),
        "unix_socket_directories": str(socket_dir(settings.state_dir)),
        "wal_level": "logical",
        "max_wal_senders": "10",
        "max_replication_slots": "10",
        # A stalled or forgotten slot must not fill the disk.
        "max_slot_wal_keep_size": settings.slot_wal_keep_size,
        "shared_buffers": "128MB",
        "password_encryption": "scram-sha-256",
        "logging_collector": "off",
        "log_line_prefix": "%m [%p] %q%u@%d ",
    }
    argv = [str(BIN_DIR / "postgres"), "-D", str(data_dir(settings.state_dir))]
    for key, value in options.items():
        argv += ["-c", f"{key}={value}"]
    return argv


def start(settings: Settings, run_as: detached.RunAs | None) -> int:
    return detached.start(NAME, server_argv(settings), state_dir=settings.state_dir, run_as=run_as)


def ready(settings: Settings) -> bool:
    result = subprocess.run(
        [str(BIN_DIR / "pg_isready"), "-q", "-h", settings.host, "-p", str(settings.postgres_port)],
        capture_output=True, timeout=5,
    )  # fmt: skip
    return result.returncode == 0


def _superuser_env(passwords: Passwords) -> dict[str, str]:
    return {**os.environ, "PGPASSWORD": passwords[SUPERUSER], "PGCONNECT_TIMEOUT": "5"}


def apply_init_sql(settings: Settings, passwords: Passwords) -> None:
    """Run postgres/NN-*.sql as the superuser (idempotent), then set role passwords."""
    files = sorted(INIT_SQL_DIR.glob("[0-9][0-9]-*.sql"))
    if not files:
        raise StackError(f"postgres: no init SQL in {INIT_SQL_DIR}; is the repository complete?")
    for sql_file in files:
        logger.info("applying init SQL", extra={"file": sql_file.name})
        result = subprocess.run(
            [
                str(psql_binary()), "-X", "-q", "-v", "ON_ERROR_STOP=1",
                "-h", settings.host, "-p", str(settings.postgres_port),
                "-U", SUPERUSER, "-d", "postgres", "-f", str(sql_file),
            ],
            capture_output=True, text=True, timeout=60, env=_superuser_env(passwords),
        )  # fmt: skip
        if result.returncode != 0:
            raise StackError(f"postgres: {sql_file.name} failed:\n{result.stderr.strip()[-2000:]}")
    conn = psycopg2.connect(superuser_dsn(settings, passwords, "postgres"))
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            for role in ROLES:
                cur.execute(set_password_sql(conn, role, passwords[role]))
    finally:
        conn.close()


def set_password_sql(conn: Any, role: str, password: str) -> sql.Composed:
    """``ALTER ROLE role PASSWORD 'SCRAM-SHA-256$...'``: the verifier is computed here
    (libpq's PQencryptPasswordConn), so the plaintext never reaches the server, where
    statement logging or pg_stat_statements could record it."""
    verifier = encrypt_password(password, role, conn, "scram-sha-256")
    return sql.SQL("ALTER ROLE {} PASSWORD {}").format(sql.Identifier(role), sql.Literal(verifier))


# Retained WAL past this share of max_slot_wal_keep_size gets a warning in `stack status`.
SLOT_WARN_SHARE = 0.5


def slot_health(reader_dsn: str) -> dict[str, Any] | None:
    """The CDC slot's state: active, ``wal_status``, retained WAL and what is left before
    Postgres invalidates it (``max_slot_wal_keep_size``), and ``confirmed_lsn``, how far
    the source connector has read and committed (a byte position); None if the slot does
    not exist.
    ``warning`` says what is wrong when the slot is lost or nearing its cap. Read as the
    reader role (``stack.postgres_dsn(settings, "reader")``): every role may read
    pg_replication_slots, so no superuser is needed."""
    conn = psycopg2.connect(reader_dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT active, wal_status, "
                "pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint, safe_wal_size, "
                "pg_size_bytes(current_setting('max_slot_wal_keep_size')), "
                "pg_wal_lsn_diff(confirmed_flush_lsn, '0/0')::bigint "
                "FROM pg_replication_slots WHERE slot_name = %s",
                (SLOT,),
            )
            row = cur.fetchone()
    finally:
        conn.close()
    if row is None:
        return None
    active, wal_status, retained, safe, cap, confirmed = row
    return {
        "slot": SLOT, "active": active, "wal_status": wal_status,
        "retained_bytes": retained, "safe_wal_size_bytes": safe, "cap_bytes": cap,
        "confirmed_lsn": confirmed, "warning": slot_warning(wal_status, retained, cap),
    }  # fmt: skip


# The prefix of the logical decoding messages that mark a WAL position for the source
# connector; its config (message.prefix.exclude.list) keeps them out of every topic.
MARKER_PREFIX = "streaming-ml-recover"


def write_marker(dsn: str) -> int:
    """Write a logical decoding message (outside any transaction) and return its WAL
    position. Every change committed before it is decoded before it, so once the slot
    has confirmed this position the source connector has read them all. Works with
    the reader role: the message changes no table."""
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT pg_wal_lsn_diff(pg_logical_emit_message(false, %s, ''), '0/0')::bigint",
                (MARKER_PREFIX,),
            )
            row = cur.fetchone()
    finally:
        conn.close()
    assert row is not None  # a SELECT without FROM returns one row
    return int(row[0])


def slot_warning(wal_status: str | None, retained: int | None, cap: int | None) -> str | None:
    """What is wrong with the slot, if anything: lost, or past half its WAL cap."""
    if wal_status in ("unreserved", "lost"):
        return (
            f"slot {SLOT} is {wal_status}: Postgres has dropped or will drop WAL it still "
            "needs; changes are lost. Re-snapshot (delete and re-apply the source connector)."
        )
    if retained is not None and cap and cap > 0 and retained > cap * SLOT_WARN_SHARE:
        return (
            f"slot {SLOT} retains {retained / 2**20:.0f} MB of WAL, over half of "
            "max_slot_wal_keep_size: is the source connector FAILED or stopped? "
            "See `streaming-ml connectors status`."
        )
    return None


def superuser_dsn(settings: Settings, passwords: Passwords, database: str) -> str:
    return dsn(settings, SUPERUSER, passwords[SUPERUSER], database)


def dsn(settings: Settings, role: str, password: str, database: str) -> str:
    """libpq key/value DSN (quoted by libpq's rules, so any character of a password works)."""
    return make_dsn(
        host=settings.host, port=settings.postgres_port, user=role, password=password,
        dbname=database, connect_timeout=5,
    )  # fmt: skip


def resolve_role(role: str) -> str:
    if role in ROLE_ALIASES:
        return ROLE_ALIASES[role]
    if role in ROLES:
        return role
    raise StackError(f"unknown database role {role!r}; use one of {', '.join(ROLE_ALIASES)}")


def database_for(role: str) -> str:
    return "registry" if role == REGISTRY_ROLE else "cars"


def psql(settings: Settings, passwords: Passwords, command: str | None, role: str = "app") -> int:
    """Run psql as ``role`` on the cars database; the password travels in PGPASSWORD."""
    name = resolve_role(role)
    argv = [
        str(psql_binary()), "-X", "-h", settings.host, "-p", str(settings.postgres_port),
        "-U", name, "-d", database_for(name),
    ]  # fmt: skip
    if command is not None:
        argv += ["-v", "ON_ERROR_STOP=1", "-c", command]
    env = {**os.environ, "PGPASSWORD": passwords[name], "PGCONNECT_TIMEOUT": "5"}
    return subprocess.run(argv, env=env, check=False).returncode


# Every value pg_replication_slots.wal_status takes (Postgres 13+), one series each.
WAL_STATUSES = ("reserved", "extended", "unreserved", "lost")


class SlotHealthMetrics:
    """The CDC slot's health as Prometheus metrics, read from Postgres at each scrape
    (a custom collector: no copy of the values goes stale between scrapes).

    ``read`` returns ``slot_health``'s dict, or None when the slot does not exist; it
    may raise StackError or psycopg2.Error (no credentials, Postgres down), which is
    reported as ``sml_replication_slot_up 0``. ``check`` logs a warning when the slot's
    warning appears or changes, so an operator without Prometheus sees it too.
    """

    def __init__(self, read: Callable[[], Mapping[str, Any] | None]) -> None:
        self._read = read
        self._last_warning: str | None = None

    def check(self) -> Mapping[str, Any] | None:
        """The slot's health now; None when it does not exist or cannot be read."""
        try:
            health = self._read()
        except (StackError, psycopg2.Error) as error:
            self._log_change(f"slot {SLOT} not readable: {str(error).strip()}")
            return None
        if health is None:
            self._log_change(f"slot {SLOT} does not exist: is the source connector applied?")
            return None
        self._log_change(health["warning"])
        return health

    def _log_change(self, warning: str | None) -> None:
        if warning == self._last_warning:
            return
        if warning is not None:
            logger.warning("replication slot needs attention", extra={"warning": warning})
        else:
            logger.info("replication slot healthy again", extra={"slot": SLOT})
        self._last_warning = warning

    def describe(self) -> list[Metric]:
        return []  # registering the collector must not query Postgres

    def collect(self) -> Iterator[Metric]:
        health = self.check()
        up = GaugeMetricFamily(
            "sml_replication_slot_up",
            "1 when the CDC slot exists and its health was read from Postgres",
            labels=["slot"],
        )
        up.add_metric([SLOT], 0 if health is None else 1)
        yield up
        if health is None:
            return
        status = GaugeMetricFamily(
            "sml_replication_slot_wal_status",
            "1 for the slot's current wal_status (unreserved or lost: changes are being lost)",
            labels=["slot", "wal_status"],
        )
        for name in WAL_STATUSES:
            status.add_metric([SLOT, name], 1 if health["wal_status"] == name else 0)
        yield status
        gauges = {
            "active": ("1 while a client (the source connector) streams from the slot", None),
            "retained_wal_bytes": ("WAL the slot holds back (retained_bytes)", "retained_bytes"),
            "wal_cap_bytes": (
                "max_slot_wal_keep_size: past it the slot is invalidated (-1: no cap)",
                "cap_bytes",
            ),
            "safe_wal_bytes": (
                "WAL that can still be written before the slot is invalidated",
                "safe_wal_size_bytes",
            ),
        }
        for suffix, (documentation, key) in gauges.items():
            value = health[key or suffix]
            if value is None:
                continue  # e.g. no safe size without a cap, no retained WAL once lost
            family = GaugeMetricFamily(
                f"sml_replication_slot_{suffix}", documentation, labels=["slot"]
            )
            family.add_metric([SLOT], float(value))
            yield family
        warning = GaugeMetricFamily(
            "sml_replication_slot_warning",
            f"1 when the slot is lost or retains over {SLOT_WARN_SHARE:.0%} of its WAL cap "
            "(see `streaming-ml stack status`)",
            labels=["slot"],
        )
        warning.add_metric([SLOT], 0 if health["warning"] is None else 1)
        yield warning
