"""Register Kafka Connect connectors from the bare JSON configs in ``debezium/``.

A config file is the connector's ``config`` map, named after the connector. Values may
hold ``{{placeholder}}`` fields (hosts, ports, names, the registry URL) that are filled
from Settings here; secrets are never in the file or the request: they stay as
``${env:NAME}`` references that the Connect worker resolves with Kafka's
EnvVarConfigProvider. Registration is an idempotent ``PUT /connectors/<name>/config``.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import requests
from rich.console import Console

from streaming_ml.config import REPO_ROOT, Settings
from streaming_ml.errors import ConfigError, ConnectorError, WaitTimeoutError
from streaming_ml.schema.fields import ALERT_KEY_FIELDS, OUTCOME_KEY_FIELDS
from streaming_ml.system.waits import Deadline, wait_until

logger = logging.getLogger(__name__)

CONNECTORS_DIR = REPO_ROOT / "debezium"
_PLACEHOLDER = re.compile(r"\{\{\s*([a-z_]+)\s*\}\}")
_console = Console(stderr=True, highlight=False)


def connector_values(settings: Settings) -> dict[str, str]:
    """Values for the ``{{...}}`` placeholders of the connector configs."""
    return {
        "postgres_host": settings.database_host,
        "postgres_port": str(settings.postgres_port),
        "database": settings.database,
        "listings_table": settings.listings_table,
        "predictions_table": settings.predictions_table,
        "primary_key_fields": "listing_id",
        "topic_prefix": settings.topic_prefix,
        "predictions_topic": settings.predictions_topic,
        "dlq_topic": settings.dlq_topic,
        "partitions": str(settings.partitions),
        "kafka_bootstrap": settings.kafka_bootstrap,
        # The Apicurio converter talks to the registry's native v3 API; clients in Python
        # use the Confluent-compatible API (settings.registry_url) for the same schemas.
        "registry_api_url": settings.registry_core_url,
    }


def render_connector(template: Mapping[str, Any], values: Mapping[str, str]) -> dict[str, str]:
    """Fill ``{{name}}`` placeholders; Connect's own ``${provider:key}`` references stay."""

    def fill(match: re.Match[str]) -> str:
        key = match.group(1)
        if key not in values:
            raise ConfigError(
                f"connector config uses unknown placeholder {{{{{key}}}}}; "
                f"known: {', '.join(sorted(values))}"
            )
        return values[key]

    return {str(k): _PLACEHOLDER.sub(fill, str(v)) for k, v in template.items()}


def derived_sinks(settings: Settings) -> dict[str, dict[str, str]]:
    """Placeholder values of each sink rendered from the predictions sink's config."""
    return {
        settings.shadow_sink_connector: {
            "predictions_topic": settings.shadow_topic,
            "predictions_table": settings.shadow_table,
        },
        settings.outcomes_sink_connector: {
            "predictions_topic": settings.outcomes_topic,
            "predictions_table": settings.outcomes_table,
            "primary_key_fields": ",".join(OUTCOME_KEY_FIELDS),
        },
        settings.alerts_sink_connector: {
            "predictions_topic": settings.alerts_topic,
            "predictions_table": settings.alerts_table,
            "primary_key_fields": ",".join(ALERT_KEY_FIELDS),
        },
    }


def connector_path(name: str, directory: Path = CONNECTORS_DIR) -> Path:
    return directory / f"{name}.json"


def load_connector(
    name: str,
    settings: Settings,
    overrides: Mapping[str, str] | None = None,
    directory: Path = CONNECTORS_DIR,
) -> dict[str, str]:
    """Read ``<directory>/<name>.json`` and render it for ``settings``.

    ``overrides`` replace placeholder values (e.g. container host names for compose).
    """
    # The shadow, outcomes and alerts sinks are the predictions sink pointed at another
    # topic and table: one config file, so the sinks cannot drift apart.
    derived = derived_sinks(settings)
    if name in derived:
        return load_connector(
            settings.sink_connector, settings, {**(overrides or {}), **derived[name]}, directory
        )
    path = connector_path(name, directory)
    try:
        template = json.loads(path.read_text())
    except FileNotFoundError as error:
        raise ConfigError(
            f"no connector config {path}; expected one JSON file per connector"
        ) from error
    except ValueError as error:
        raise ConfigError(f"connector config {path} is not valid JSON: {error}") from error
    if not isinstance(template, dict):
        raise ConfigError(f"connector config {path} must be a JSON object of config keys")
    return render_connector(template, {**connector_values(settings), **(overrides or {})})


def _request(method: str, url: str, timeout_s: float = 10.0, **kwargs: Any) -> requests.Response:
    try:
        return requests.request(method, url, timeout=timeout_s, **kwargs)
    except requests.RequestException as error:
        raise ConnectorError(
            f"cannot reach Kafka Connect at {url}: {error}. Is the stack up "
            "(`streaming-ml stack status`)?"
        ) from error


def apply_connector(
    connect_url: str, name: str, config: Mapping[str, str], timeout: float = 60.0
) -> dict[str, Any]:
    """Create or update connector ``name`` (idempotent PUT). Returns Connect's answer.

    A worker that is rebalancing answers 409; that is retried until ``timeout``.
    """
    url = f"{connect_url}/connectors/{name}/config"
    deadline = Deadline.after(timeout)
    while True:
        response = _request("PUT", url, json=dict(config))
        if response.status_code in (200, 201):
            logger.info(
                "connector applied", extra={"connector": name, "status": response.status_code}
            )
            return response.json()
        retryable = response.status_code == 409 or response.status_code >= 500
        if not retryable or deadline.expired():
            raise ConnectorError(
                f"Kafka Connect rejected connector {name!r} (HTTP {response.status_code}): "
                f"{_message(response)}. Check debezium/{name}.json and "
                "`streaming-ml stack logs connect`."
            )
        deadline.sleep(0.5)


def _message(response: requests.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:500]
    return str(body.get("message", body))[:2000]


def connector_status(connect_url: str, name: str) -> dict[str, Any] | None:
    """``GET /connectors/<name>/status``, or None when the connector does not exist."""
    response = _request("GET", f"{connect_url}/connectors/{name}/status")
    if response.status_code == 404:
        return None
    if response.status_code != 200:
        raise ConnectorError(
            f"status of connector {name!r}: HTTP {response.status_code} {_message(response)}. "
            "Is Kafka Connect healthy? See `streaming-ml stack logs connect`."
        )
    return response.json()


def delete_connector(connect_url: str, name: str, timeout: float = 60.0) -> bool:
    """``DELETE /connectors/<name>`` and wait until its tasks are gone; False when it did
    not exist. Its offsets stay with Connect: a source applied again resumes where it was."""
    deadline = Deadline.after(timeout)
    while True:
        response = _request("DELETE", f"{connect_url}/connectors/{name}")
        if response.status_code == 404:
            return False
        if response.status_code in (200, 204):
            break
        if response.status_code != 409 or deadline.expired():  # 409: the worker rebalances
            raise ConnectorError(
                f"Kafka Connect did not delete connector {name!r} (HTTP {response.status_code}): "
                f"{_message(response)}. See `streaming-ml stack logs connect`."
            )
        deadline.sleep(0.5)
    while connector_status(connect_url, name) is not None and not deadline.expired():
        deadline.sleep(0.5)
    logger.info("connector deleted", extra={"connector": name})
    return True


def all_statuses(connect_url: str, timeout_s: float = 10.0) -> dict[str, dict[str, Any]]:
    """Every registered connector's ``/status`` answer by name, in one request
    (``GET /connectors?expand=status``)."""
    response = _request("GET", f"{connect_url}/connectors?expand=status", timeout_s=timeout_s)
    if response.status_code != 200:
        raise ConnectorError(
            f"listing the connectors: HTTP {response.status_code} {_message(response)}. "
            "Is Kafka Connect healthy? See `streaming-ml stack logs connect`."
        )
    return {name: entry["status"] for name, entry in response.json().items()}


def failed_parts(status: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The FAILED parts of a ``connector_status`` answer as (label, entry) pairs; the
    label is ``connector`` or ``task <id>``, the entry carries ``state`` and ``trace``."""
    parts = [("connector", status["connector"])]
    parts += [(f"task {task.get('id')}", task) for task in status.get("tasks", [])]
    return [(label, part) for label, part in parts if part.get("state") == "FAILED"]


def restart_failed(connect_url: str, name: str) -> bool:
    """Restart only the FAILED parts (connector instance and/or tasks) of ``name`` with
    ``POST /connectors/<name>/restart?includeTasks=true&onlyFailed=true``.

    Returns whether anything was failed: Connect answers 202 with the status, in which
    the parts it is restarting show as RESTARTING. Running parts are left alone.
    """
    response = _request(
        "POST",
        f"{connect_url}/connectors/{name}/restart",
        params={"includeTasks": "true", "onlyFailed": "true"},
    )
    if response.status_code == 404:
        raise ConnectorError(
            f"cannot restart connector {name!r}: it is not registered. Register it again "
            "with `streaming-ml connectors apply`."
        )
    if response.status_code != 202:
        # 409: the worker is rebalancing; the next attempt usually goes through.
        raise ConnectorError(
            f"restarting connector {name!r}: HTTP {response.status_code} {_message(response)}. "
            "Try again in a few seconds; see `streaming-ml stack logs connect`."
        )
    answer = response.json()
    parts = [answer.get("connector") or {}, *answer.get("tasks", [])]
    restarting = any(part.get("state") == "RESTARTING" for part in parts)
    if restarting:
        logger.info("connector restart requested", extra={"connector": name})
    return restarting


def trace_summary(trace: str | None) -> str:
    """The outer error and the last "Caused by" lines of a Connect stack trace."""
    if not trace:
        return "(no trace)"
    lines = [line.strip() for line in trace.splitlines() if line.strip()]
    # The first line is the outer error; "Caused by" lines name the real reason.
    causes = [line for line in lines if line.startswith("Caused by")]
    return "\n".join([lines[0], *causes[-3:]])


# What the Apicurio converter throws when the registry refuses a new schema by its
# compatibility rule (HTTP 409). The trace carries only this class name, not the field;
# the registry's own log has the diff.
_RULE_VIOLATION = "RuleViolationProblemDetails"


def registry_refused(trace: str | None) -> bool:
    """Whether a FAILED part's trace is the registry refusing a new schema: a restart
    cannot help, the task fails again on the same change event."""
    return bool(trace) and _RULE_VIOLATION in str(trace)


def failure_reason(trace: str | None, topic: str | None = None) -> str | None:
    """One plain line on why a part FAILED, for the causes we recognise (else None)."""
    if not registry_refused(trace):
        return None
    what = f"the new schema of {topic}" if topic else "a new schema"
    return (
        f"the registry refused {what} (incompatible with the previous version: a column "
        "changed type; `streaming-ml stack logs registry` names the field). Revert the "
        "column, then run `streaming-ml connectors recover-schema` (docs/schema-evolution.md)"
    )


def wait_until_running(connect_url: str, name: str, timeout: float = 60.0) -> dict[str, Any]:
    """Poll until the connector and all its tasks are RUNNING; raise ConnectorError if one
    FAILED (with the trace summary) or the deadline passes. Returns the last status."""

    def status_unless_failed() -> dict[str, Any] | None:
        status = connector_status(connect_url, name)
        failed = failed_parts(status) if status is not None else []
        if failed:
            raise ConnectorError(
                f"connector {name!r} FAILED: {trace_summary(failed[0][1].get('trace'))}\n"
                f"Fix the cause, then re-apply it; full trace: "
                f"GET {connect_url}/connectors/{name}/status"
            )
        return status

    def all_running(status: dict[str, Any] | None) -> bool:
        if status is None or not status.get("tasks"):
            return False
        states = [status["connector"]["state"]] + [t["state"] for t in status["tasks"]]
        return all(state == "RUNNING" for state in states)

    began = time.monotonic()
    with _console.status(f"[bold]{name}[/]: waiting for RUNNING (up to {timeout:.0f}s)") as spinner:

        def show(_: object, deadline: Deadline) -> None:
            waited = f"{deadline.elapsed():.0f}s of {timeout:.0f}s"
            spinner.update(f"[bold]{name}[/]: waiting for RUNNING ({waited})")

        try:
            status = wait_until(
                status_unless_failed, timeout=timeout, interval=0.5, done=all_running,
                on_wait=show, what=f"connector {name} RUNNING",
            )  # fmt: skip
        except WaitTimeoutError as error:
            raise ConnectorError(
                f"connector {name!r} not RUNNING after {timeout:.0f}s (last status: "
                f"{error.last}). See `streaming-ml stack logs connect`."
            ) from None
    assert status is not None  # all_running holds
    logger.info(
        "connector running",
        extra={"connector": name, "waited_s": round(time.monotonic() - began, 1)},
    )
    return status


def register_connector(settings: Settings, name: str, timeout: float = 90.0) -> dict[str, Any]:
    """Load ``debezium/<name>.json``, apply it and wait until it runs."""
    config = load_connector(name, settings)
    apply_connector(settings.connect_url, name, config, timeout=timeout)
    return wait_until_running(settings.connect_url, name, timeout=timeout)


def ensure_connectors(settings: Settings, timeout: float = 90.0) -> dict[str, dict[str, Any]]:
    """Apply the source and the sink connectors (idempotent) and wait until they all run.

    Returns each connector's status keyed by name.
    """
    names = settings.connector_names
    for name in names:
        apply_connector(settings.connect_url, name, load_connector(name, settings), timeout=timeout)
    return {name: wait_until_running(settings.connect_url, name, timeout=timeout) for name in names}
