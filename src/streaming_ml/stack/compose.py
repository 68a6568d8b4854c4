"""``streaming-ml compose init``: the secrets of the Docker Compose stack, generated once.

docker-compose.yml ships no password: each one is required from the environment or the
``.env`` file next to it. This writes that file (mode 0600) with a random password per
database role, keeping any value already there, and the same values as the host CLI's
stack credentials (``.stack/compose``), so `SML_STATE_DIR=.stack/compose streaming-ml load`
talks to the containers.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

from pydantic import SecretStr
from rich.console import Console
from rich.table import Table

from streaming_ml.config import REPO_ROOT, Settings
from streaming_ml.errors import StackError
from streaming_ml.stack import postgres, secrets

# The registry's model signing key (models/signing.py): every app container signs or checks.
SIGNING_KEY_ENV = "SML_MODEL_SIGNING_KEY"

# The compose variable of each role's password.
ENV_OF_ROLE = {
    secrets.SUPERUSER: "POSTGRES_PASSWORD",
    secrets.APP_ROLE: "SML_PG_APP_PASSWORD",
    secrets.SOURCE_ROLE: secrets.SOURCE_PASSWORD_ENV,
    secrets.SINK_ROLE: secrets.SINK_PASSWORD_ENV,
    secrets.REGISTRY_ROLE: "SML_PG_REGISTRY_PASSWORD",
    secrets.READER_ROLE: "SML_PG_READER_PASSWORD",
}


def read_env_file(path: Path) -> dict[str, str]:
    """``KEY=value`` lines of a compose ``.env`` (comments and blank lines skipped)."""
    if not path.exists():
        return {}
    values = {}
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#") and "=" in stripped:
            key, _, value = stripped.partition("=")
            values[key.strip()] = value.strip()
    return values


def init(env_file: Path, state_dir: Path) -> list[str]:
    """Make sure ``env_file`` holds every compose password and ``state_dir`` the same
    values; return the variables added now (their values are never printed)."""
    present = read_env_file(env_file)
    generated = secrets.ensure_passwords(state_dir)
    added = [variable for variable in ENV_OF_ROLE.values() if not present.get(variable)]
    values = {
        role: present.get(variable) or generated[role] for role, variable in ENV_OF_ROLE.items()
    }
    if added:
        lines = [] if not env_file.exists() else env_file.read_text().splitlines()
        if not lines:
            lines.append("# Written by `streaming-ml compose init`: keep it private (0600).")
        role_of = {variable: role for role, variable in ENV_OF_ROLE.items()}
        lines += [f"{variable}={values[role_of[variable]]}" for variable in added]
        _write_private(env_file, "\n".join(lines) + "\n")
    key = present.get(SIGNING_KEY_ENV) or _state_signing_key(state_dir)
    if not present.get(SIGNING_KEY_ENV):
        lines = env_file.read_text().splitlines() if env_file.exists() else []
        _write_private(env_file, "\n".join([*lines, f"{SIGNING_KEY_ENV}={key}"]) + "\n")
        added.append(SIGNING_KEY_ENV)
    os.chmod(env_file, 0o600)
    # The host CLI reads the containers' passwords and the registry's key from the state dir.
    _write_private(secrets.secrets_path(state_dir), json.dumps(values))
    _write_private(secrets.signing_key_path(state_dir), key + "\n")
    return added


def _state_signing_key(state_dir: Path) -> str:
    """The state dir's model signing key, made now if it has none."""
    secrets.ensure_signing_key(state_dir)
    return secrets.signing_key_path(state_dir).read_text().strip()


def init_database(settings: Settings, environ: Mapping[str, str] | None = None) -> None:
    """The compose stack's one-shot ``postgres-init`` step, the twin of what ``stack up``
    does after Postgres starts: (re)apply postgres/NN-*.sql (idempotent, so a volume made
    by an older checkout gets new tables and roles too) and give each role the password
    compose passed, sent as a SCRAM verifier computed here, never as plaintext."""
    given = passwords_from_env(environ)
    missing = [variable for role, variable in ENV_OF_ROLE.items() if role not in given]
    if missing:
        raise StackError(
            f"postgres-init: {', '.join(missing)} not set; run `streaming-ml compose init` "
            "on the host (it writes every password to .env) and start the stack again."
        )
    passwords = secrets.Passwords({role: SecretStr(value) for role, value in given.items()})
    postgres.apply_init_sql(settings, passwords)


def passwords_from_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Each role's password compose passed as its variable (``ENV_OF_ROLE``), for the roles
    whose variable is set."""
    environ = os.environ if environ is None else environ
    return {role: environ[env] for role, env in ENV_OF_ROLE.items() if environ.get(env)}


def write_state_from_env(environ: Mapping[str, str] | None = None) -> list[str]:
    """Inside a compose container: the role passwords compose passed as variables
    (``ENV_OF_ROLE``) into ``$SML_STATE_DIR/secrets/passwords.json`` (0600), where the
    CLI reads them. Only the roles whose variable is set; returns them. A container
    given none (the bridge, the evaluator) gets no file."""
    environ = os.environ if environ is None else environ
    values = passwords_from_env(environ)
    if values:
        path = secrets.secrets_path(Path(environ.get("SML_STATE_DIR", ".stack")))
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        _write_private(path, json.dumps(values))
    return sorted(values)


def print_endpoints(repo_root: Path | None = None) -> None:
    """The endpoint table for the compose stack (``make compose-up``): the same ports as
    the demo's (the SML_* settings, from ``.env``), all on 127.0.0.1."""
    root = repo_root or REPO_ROOT
    ports = {
        key[4:].lower(): value
        for key, value in read_env_file(root / ".env").items()
        if key.startswith("SML_") and key.endswith("_PORT")
    }
    settings = Settings.model_validate(ports).model_copy(
        update={"state_dir": root / ".stack" / "compose"}
    )
    table = Table(title="Endpoints (compose)", show_header=False)
    table.add_row("Adminer", f"http://{settings.host}:{settings.adminer_port}/")
    table.add_row(
        "  login",
        f"System: PostgreSQL, Server: postgres:{settings.postgres_port}, "
        f"Username: {secrets.APP_ROLE}, Database: {settings.database}",
    )
    table.add_row(
        "  password",
        f"SML_STATE_DIR={settings.state_dir} streaming-ml stack credentials adminer",
    )
    table.add_row("Prediction service", f"{settings.prediction_url}  (POST /predict_batch, /docs)")
    table.add_row("Dashboard", f"{settings.dashboard_url}  (live, read-only)")
    table.add_row("Kafka", settings.kafka_bootstrap)
    table.add_row("Schema registry", settings.registry_url)
    table.add_row("Kafka Connect", settings.connect_url + "/connectors")
    table.add_row(
        "Bridge, evaluator /metrics",
        "on the pod's loopback: `docker compose exec bridge python -c \"import urllib.request "
        "as u; print(u.urlopen('http://127.0.0.1:9400/metrics').read().decode())\"`",
    )
    Console().print(table)


def _write_private(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)
