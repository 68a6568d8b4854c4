"""The Kafka Connect distributed worker (REST on the loopback) with our plugins.

``plugin.path`` holds the Debezium Postgres source, the Debezium JDBC sink and the
Apicurio AvroConverter. Connector secrets reach the worker as environment
variables and connector configs refer to them via Kafka's EnvVarConfigProvider
(``${env:NAME}``), so no password is ever sent over the REST API.
"""

from __future__ import annotations

from pathlib import Path

import requests

from streaming_ml.config import REPO_ROOT, Settings
from streaming_ml.stack import detached
from streaming_ml.stack.jars import java_binary, jmx_exporter_jar, kafka_classpath, plugin_dir
from streaming_ml.stack.kafka import jvm_options, log4j_config
from streaming_ml.stack.secrets import (
    SINK_PASSWORD_ENV,
    SINK_ROLE,
    SOURCE_PASSWORD_ENV,
    SOURCE_ROLE,
    Passwords,
)

NAME = "connect"
HEAP = "-Xmx768m"
SOURCE_CONNECTOR_CLASS = "io.debezium.connector.postgresql.PostgresConnector"
SINK_CONNECTOR_CLASS = "io.debezium.connector.jdbc.JdbcSinkConnector"
CONVERTER_CLASS = "io.apicurio.registry.utils.converter.AvroConverter"
PROVIDERS = "org.apache.kafka.common.config.provider"
# The variables ${env:...} may read: the passwords of the source and sink roles.
ENV_ALLOWLIST = f"^({SOURCE_PASSWORD_ENV}|{SINK_PASSWORD_ENV})$"
REQUIRED_PLUGINS = (SOURCE_CONNECTOR_CLASS, SINK_CONNECTOR_CLASS, CONVERTER_CLASS)


def home(state_dir: Path) -> Path:
    return state_dir / "connect"


def worker_properties(settings: Settings, dist_dir: Path) -> str:
    props = {
        "bootstrap.servers": settings.local_kafka_bootstrap,
        "group.id": "streaming-ml-connect",
        "listeners": f"http://{settings.host}:{settings.connect_port}",
        "rest.advertised.host.name": settings.host,
        "rest.advertised.port": str(settings.connect_port),
        "plugin.path": str(plugin_dir(dist_dir)),
        # Every plugin we ship has ServiceLoader manifests; skipping the reflective
        # class scan of ~100 jars saves most of the worker's start-up time.
        "plugin.discovery": "service_load",
        # Worker-level default converters; our connectors set their own Avro converters.
        "key.converter": "org.apache.kafka.connect.json.JsonConverter",
        "value.converter": "org.apache.kafka.connect.json.JsonConverter",
        # Internal topics, as replicated as ours (one replica on a single broker); their
        # min.insync.replicas is the brokers' default, which matches.
        "config.storage.topic": "_connect-configs",
        "offset.storage.topic": "_connect-offsets",
        "status.storage.topic": "_connect-status",
        "config.storage.replication.factor": str(settings.kafka_replication_factor),
        "offset.storage.replication.factor": str(settings.kafka_replication_factor),
        "status.storage.replication.factor": str(settings.kafka_replication_factor),
        "offset.storage.partitions": "5",
        "status.storage.partitions": "1",
        # Offsets are committed every second, so a clean `down` loses nothing and a
        # restart never replays already-delivered changes.
        "offset.flush.interval.ms": "1000",
        # Kafka 4 producers wait linger.ms=5 by default to fill batches; Debezium hands
        # Connect whole batches already, so the wait only added ~5 ms to every change
        # (record-queue-time-avg 5.5 ms, measured by the bench: docs/performance.md).
        "producer.linger.ms": "0",
        # One worker: never hold back a connector's tasks waiting for a departed member.
        "scheduled.rebalance.max.delay.ms": "0",
        # The bridge publishes in transactions: sinks read only committed records, so a
        # fenced or killed bridge's aborted output never reaches the table.
        "consumer.isolation.level": "read_committed",
        # The REST API has no authentication: whoever reaches it could create a connector
        # whose config reads ${env:...} or ${file:...}. Only the env provider, and only for
        # the two passwords the connectors reference; no file provider at all.
        "config.providers": "env",
        "config.providers.env.class": f"{PROVIDERS}.EnvVarConfigProvider",
        "config.providers.env.param.allowlist.pattern": ENV_ALLOWLIST,
        # No connector overrides its Kafka clients (producer./consumer.override.*): refuse
        # such configs, e.g. one pointing a sink at another cluster.
        "connector.client.config.override.policy": "None",
    }
    return "".join(f"{key}={value}\n" for key, value in props.items())


# Which MBeans the exporter serves: one file for the local stack and the compose image.
JMX_EXPORTER_CONFIG = REPO_ROOT / "stack" / "jmx-exporter.yaml"


def worker_env(passwords: Passwords) -> dict[str, str]:
    return {
        SOURCE_PASSWORD_ENV: passwords[SOURCE_ROLE],
        SINK_PASSWORD_ENV: passwords[SINK_ROLE],
    }


def start(
    settings: Settings, dist_dir: Path, passwords: Passwords, run_as: detached.RunAs | None = None
) -> int:
    base = home(settings.state_dir)
    base.mkdir(parents=True, exist_ok=True)
    props = base / "connect-distributed.properties"
    props.write_text(worker_properties(settings, dist_dir))
    log4j = base / "log4j2.xml"
    log4j.write_text(log4j_config(settings.state_dir / "logs" / "connect-worker.log"))
    agent = f"{jmx_exporter_jar(dist_dir)}={settings.host}:{settings.connect_metrics_port}"
    argv = [
        str(java_binary()),
        *jvm_options(HEAP, log4j, settings.state_dir / "logs", settings.connect_full_jit),
        f"-javaagent:{agent}:{JMX_EXPORTER_CONFIG}",
        "-cp", kafka_classpath(dist_dir), "org.apache.kafka.connect.cli.ConnectDistributed",
        str(props),
    ]  # fmt: skip
    return detached.start(
        NAME, argv, state_dir=settings.state_dir, env=worker_env(passwords), run_as=run_as
    )


def ready(settings: Settings) -> bool:
    """REST answers and every plugin we need was loaded."""
    if requests.get(settings.connect_url + "/", timeout=2).status_code != 200:
        return False
    # /connectors answers only once the worker has joined its group and read its configs.
    if requests.get(settings.connect_url + "/connectors", timeout=5).status_code != 200:
        return False
    return not missing_plugins(settings)


def missing_plugins(settings: Settings) -> list[str]:
    response = requests.get(
        settings.connect_url + "/connector-plugins",
        params={"connectorsOnly": "false"},
        timeout=5,
    )
    response.raise_for_status()
    loaded = {plugin["class"] for plugin in response.json()}
    return [name for name in REQUIRED_PLUGINS if name not in loaded]
