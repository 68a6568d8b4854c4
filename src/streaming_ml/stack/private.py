"""Settings for a stack of one's own beside any other: every listener on a free port and a
fresh state dir (the bench's broker comparison, the tests' throwaway stacks)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from streaming_ml.config import Settings
from streaming_ml.system.processes import free_port_run, free_ports

# The stack's listeners and the application processes' ports a second stack would clash on.
STACK_PORTS = (
    "postgres_port",
    "kafka_port",
    "kafka_controller_port",
    "registry_port",
    "connect_port",
    "connect_metrics_port",
    "adminer_port",
)
APP_PORTS = (
    "service_port",
    "bridge_metrics_port",
    "evaluator_metrics_port",
    "watchdog_metrics_port",
    "dashboard_port",
)
# Someone else's infrastructure: a stack of one's own talks to none of it.
EXTERNAL_ENDPOINTS = (
    "service_url", "kafka_bootstrap_servers", "kafka_client_properties_file",
    "kafka_sasl_password", "kafka_sasl_password_file", "schema_registry_url",
    "schema_registry_user", "schema_registry_password", "schema_registry_password_file",
    "kafka_connect_url", "postgres_dsn", "postgres_host", "postgres_user",
    "postgres_password", "postgres_password_file",
)  # fmt: skip


def private_settings(
    base: Settings,
    prefix: str = "sml-stack-",
    kafka_nodes: int = 1,
    moved: tuple[str, ...] = STACK_PORTS + APP_PORTS,
) -> Settings:
    """``base`` with the port fields ``moved`` on free loopback ports, a new state dir the
    ``postgres`` OS user can traverse (mkdtemp makes it 0700) and every address derived
    from them: no external endpoint of ``base`` is kept. Several Kafka nodes get a run of
    free ports, client and controller pairs side by side."""
    state_dir = Path(tempfile.mkdtemp(prefix=prefix))
    state_dir.chmod(0o711)
    ports = dict(zip(moved, free_ports(base.host, len(moved)), strict=True))
    if kafka_nodes > 1:
        first = free_port_run(base.host, 2 * kafka_nodes)
        ports |= {"kafka_port": first, "kafka_controller_port": first + 1}
    # model_copy, not Settings(...): a new Settings would read SML_* from the environment
    # again and could pick up the very endpoints left out here.
    external = dict.fromkeys(EXTERNAL_ENDPOINTS)
    return base.model_copy(
        update={**external, **ports, "state_dir": state_dir, "kafka_nodes": kafka_nodes}
    )
