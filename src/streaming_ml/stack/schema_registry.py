"""Apicurio Registry 3.0.9 (the Quarkus runner jar) with SQL storage in our Postgres.

Schemas live in the ``registry`` database, so ids survive restarts. Clients use the
Confluent-compatible API at ``/apis/ccompat/v7``; in 3.0.9 with the default
``apicurio.ccompat.legacy-id-mode.enabled=false`` the ids it hands out there are
*content ids*, so the Connect converter is configured with ``use-id=contentId``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import requests

from streaming_ml.config import Settings
from streaming_ml.errors import StackError
from streaming_ml.stack import detached
from streaming_ml.stack.jars import java_binary, registry_jar
from streaming_ml.stack.secrets import REGISTRY_ROLE, Passwords

logger = logging.getLogger(__name__)

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


# --- compatibility rules ----------------------------------------------------------
#
# Every HTTP call about the registry's compatibility rules is here. The global rule goes
# through the Confluent-compatible API (``PUT /config``: Apicurio stores it as its global
# COMPATIBILITY rule). A subject's own rule goes through Apicurio's native v3 API: in
# 3.0.9 ccompat's ``PUT /config/<subject>`` answers 200 for an existing subject but the
# rule it stores is not the one checked on registration, so it cannot lift the rule.

# The level `stack up` and `connectors apply` set: a consumer with the new schema can read
# every record written with the previous one (added optional fields, int→long and
# float→double promotions pass; a field changing to an unrelated type is refused).
COMPATIBILITY = "BACKWARD"
# Levels that already refuse what BACKWARD refuses: a registry set to one is left as it is.
AT_LEAST_BACKWARD = frozenset({"BACKWARD", "BACKWARD_TRANSITIVE", "FULL", "FULL_TRANSITIVE"})
# Apicurio's group of artifacts registered without one (the converter's and ccompat's).
DEFAULT_GROUP = "default"
TIMEOUT_S = 10.0


def value_subject(topic: str) -> str:
    """The subject (Apicurio artifact) of a topic's value schema, as the converter's
    TopicIdStrategy and the Confluent clients name it."""
    return f"{topic}-value"


def _auth(settings: Settings) -> tuple[str, str] | None:
    credentials = settings.registry_basic_auth
    if credentials is None:
        return None
    user, _, password = credentials.partition(":")
    return user, password


def _call(
    settings: Settings, method: str, url: str, ok: tuple[int, ...], **kwargs: object
) -> requests.Response:
    """One request to the registry; a status outside ``ok`` (or no answer) is a StackError
    that names the call and what to check."""
    try:
        response = requests.request(method, url, timeout=TIMEOUT_S, auth=_auth(settings), **kwargs)  # type: ignore[arg-type]
    except requests.RequestException as error:
        raise StackError(
            f"cannot reach the schema registry at {url}: {error}. Is it up "
            "(`streaming-ml stack status`)?"
        ) from error
    if response.status_code not in ok:
        raise StackError(
            f"schema registry: {method} {url} answered HTTP {response.status_code}: "
            f"{response.text[:300]}. Check the registry (`streaming-ml stack logs registry`) "
            "and its credentials (SML_SCHEMA_REGISTRY_USER)."
        )
    return response


def global_compatibility(settings: Settings) -> str:
    """The registry's global compatibility level (``NONE`` when no rule is set)."""
    response = _call(settings, "GET", f"{settings.registry_url}/config", (200,))
    return str(response.json().get("compatibilityLevel") or "NONE")


def ensure_compatibility(settings: Settings) -> str:
    """Make our registry refuse incompatible schemas: set its global rule to BACKWARD
    unless it is already at least that strict (idempotent). Returns the level in force.

    Someone else's registry (SML_SCHEMA_REGISTRY_URL) is left alone: its global rule
    covers other teams' subjects too, and its owners choose it. A level weaker than
    BACKWARD there is logged as a warning with the call that sets it.
    """
    current = global_compatibility(settings)
    if current in AT_LEAST_BACKWARD:
        return current
    if settings.schema_registry_url is not None:
        logger.warning(
            "the schema registry accepts incompatible schema changes; left as it is "
            "because it is not ours. Ask its owners for BACKWARD (PUT <registry>/config "
            '{"compatibility": "BACKWARD"}), or a rule on our subjects',
            extra={"registry": settings.registry_url, "compatibility": current},
        )
        return current
    _call(
        settings,
        "PUT",
        f"{settings.registry_url}/config",
        (200,),
        json={"compatibility": COMPATIBILITY},
    )
    logger.info(
        "schema registry compatibility set",
        extra={"compatibility": COMPATIBILITY, "was": current},
    )
    return COMPATIBILITY


def _rules_url(settings: Settings, subject: str) -> str:
    return f"{settings.registry_core_url}/groups/{DEFAULT_GROUP}/artifacts/{subject}/rules"


def subject_rule(settings: Settings, subject: str) -> str | None:
    """The subject's own compatibility level, or None when it follows the global rule."""
    url = f"{_rules_url(settings, subject)}/COMPATIBILITY"
    response = _call(settings, "GET", url, (200, 404))
    if response.status_code == 404:
        return None
    return str(response.json()["config"])


def set_subject_rule(settings: Settings, subject: str, level: str | None) -> None:
    """Give the subject its own compatibility level (``NONE`` lifts the global rule for
    it alone), or with None remove its own so the global rule applies again."""
    url = f"{_rules_url(settings, subject)}/COMPATIBILITY"
    if level is None:
        _call(settings, "DELETE", url, (204, 404))
    elif subject_rule(settings, subject) is None:
        body = {"ruleType": "COMPATIBILITY", "config": level}
        _call(settings, "POST", _rules_url(settings, subject), (200, 204), json=body)
    else:
        _call(settings, "PUT", url, (200,), json={"ruleType": "COMPATIBILITY", "config": level})
    logger.info("subject compatibility rule", extra={"subject": subject, "level": level})
