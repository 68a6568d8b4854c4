"""Apicurio Registry 3.0.9 (the Quarkus runner jar) with SQL storage in our Postgres.

Schemas live in the ``registry`` database, so ids survive restarts. Clients use the
Confluent-compatible API at ``/apis/ccompat/v7``; in 3.0.9 with the default
``apicurio.ccompat.legacy-id-mode.enabled=false`` the ids it hands out there are
*content ids*, so the Connect converter is configured with ``use-id=contentId``.
"""

from __future__ import annotations

from pathlib import Path

import requests

from streaming_ml.config import Settings
from streaming_ml.stack import detached
from streaming_ml.stack.jars import java_binary, registry_jar
from streaming_ml.stack.secrets import REGISTRY_ROLE, Passwords

NAME = "registry"
HEAP = "-Xmx384m"


def start(
    settings: Settings, dist_dir: Path, passwords: Passwords, run_as: detached.RunAs | None = None
) -> int:
    env = {
        "QUARKUS_HTTP_HOST": settings.host,
        "QUARKUS_HTTP_PORT": str(settings.registry_port),
        "QUARKUS_HTTP_ACCESS_LOG_ENABLED": "false",
        "QUARKUS_LOG_LEVEL": "WARN",
        "QUARKUS_LOG_CATEGORY__IO_APICURIO__LEVEL": "INFO",
        "APICURIO_STORAGE_KIND": "sql",
        "APICURIO_STORAGE_SQL_KIND": "postgresql",
        "APICURIO_DATASOURCE_URL": (
            f"jdbc:postgresql://{settings.host}:{settings.postgres_port}/registry"
        ),
        "APICURIO_DATASOURCE_USERNAME": REGISTRY_ROLE,
        "APICURIO_DATASOURCE_PASSWORD": passwords[REGISTRY_ROLE],
        "APICURIO_DATASOURCE_JDBC_INITIAL_SIZE": "2",
        "APICURIO_DATASOURCE_JDBC_MIN_SIZE": "2",
        "APICURIO_DATASOURCE_JDBC_MAX_SIZE": "10",
    }
    jar = registry_jar(dist_dir)
    argv = [
        str(java_binary()), HEAP, "-Xms64m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
        "-Djava.awt.headless=true", "-jar", str(jar),
    ]  # fmt: skip
    return detached.start(
        NAME, argv, state_dir=settings.state_dir, env=env, cwd=jar.parent, run_as=run_as
    )


def ready(settings: Settings) -> bool:
    base = f"http://{settings.host}:{settings.registry_port}"
    health = requests.get(f"{base}/health/ready", timeout=2)
    if health.status_code != 200:
        return False
    # Storage is up only when the ccompat API answers too.
    return requests.get(f"{settings.registry_url}/subjects", timeout=2).status_code == 200
