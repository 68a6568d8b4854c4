"""Database passwords of the local stack: generated on first ``up``, kept in the state dir.

The file is 0600 in a 0700 directory and its values are never printed or logged.
Connectors never see them either: the Connect worker gets them as environment
variables and connector configs refer to them as ``${env:NAME}`` (Kafka's
EnvVarConfigProvider), so the same JSON works locally and in docker compose.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from pydantic import SecretStr

from streaming_ml.errors import StackError

# Role names are part of the shared init SQL in postgres/ (01-roles.sql).
SUPERUSER = "postgres"
APP_ROLE = "cars_app"
SOURCE_ROLE = "cars_cdc"
SINK_ROLE = "cars_sink"
REGISTRY_ROLE = "registry"
# Reads only: the dashboard's lookups and the replication slot's health.
READER_ROLE = "cars_reader"

ROLES = (SUPERUSER, APP_ROLE, SOURCE_ROLE, SINK_ROLE, REGISTRY_ROLE, READER_ROLE)

# Environment variables through which the Connect worker resolves ${env:...} references.
SOURCE_PASSWORD_ENV = "SML_PG_SOURCE_PASSWORD"
SINK_PASSWORD_ENV = "SML_PG_SINK_PASSWORD"


@dataclass(frozen=True)
class Passwords:
    by_role: dict[str, SecretStr]

    def __getitem__(self, role: str) -> str:
        return self.by_role[role].get_secret_value()

    def __repr__(self) -> str:  # never leak through a debug print
        return f"Passwords(roles={sorted(self.by_role)})"


def secrets_path(state_dir: Path) -> Path:
    return state_dir / "secrets" / "passwords.json"


def load_passwords(state_dir: Path) -> Passwords:
    path = secrets_path(state_dir)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError as error:
        raise StackError(
            f"no stack credentials in {path.parent}: the stack was never started with this "
            "state dir. Run `streaming-ml stack up` first."
        ) from error
    except (OSError, ValueError) as error:
        raise StackError(
            f"cannot read stack credentials {path}: {error}. Run as the user who ran "
            "`streaming-ml stack up` (the file is mode 0600), or point SML_STATE_DIR at "
            "that stack's state dir."
        ) from error
    return Passwords({role: SecretStr(str(value)) for role, value in raw.items()})


def ensure_passwords(state_dir: Path) -> Passwords:
    """Load the passwords, creating any that are missing (first ``up``)."""
    path = secrets_path(state_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    existing: dict[str, str] = {}
    if path.exists():
        loaded = load_passwords(state_dir)
        existing = {role: loaded[role] for role in loaded.by_role}
    missing = [role for role in ROLES if role not in existing]
    if missing:
        values = {**existing, **{role: secrets.token_urlsafe(24) for role in missing}}
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(values, handle)
        os.replace(tmp, path)
    os.chmod(path, 0o600)
    return load_passwords(state_dir)


def signing_key_path(state_dir: Path) -> Path:
    """The model registry's signing key (models/signing.py), kept with the passwords."""
    return state_dir / "secrets" / "model-signing.key"


def ensure_signing_key(state_dir: Path) -> None:
    """Create the state dir's signing key if it has none (first ``stack up``)."""
    path = signing_key_path(state_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(32) + "\n")
        os.replace(tmp, path)
    os.chmod(path, 0o600)
