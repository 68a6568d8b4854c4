"""The pipeline's connectors as Strimzi ``KafkaConnector`` resources (deploy/k8s).

One source of truth: each resource is rendered from the same ``debezium/<name>.json``
template and placeholder values that ``connectors apply`` sends to the Connect REST API
(``client.load_connector``); only the endpoints differ, and on Kubernetes they are the
in-cluster Services of deploy/k8s. Strimzi takes the connector class and the task count
from the resource's spec, not from its config, and its auto-restart does on Kubernetes
what ``connectors watch`` does for the local stack.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

from streaming_ml.config import Settings
from streaming_ml.connect.client import load_connector

STRIMZI_API_VERSION = "kafka.strimzi.io/v1"
# The name of the Strimzi Kafka and KafkaConnect resources in deploy/k8s; Strimzi finds
# a connector's Connect cluster by the strimzi.io/cluster label.
KUBERNETES_CLUSTER = "streaming-ml"
# Placeholder values that point the connector templates at the Services of deploy/k8s:
# Strimzi's bootstrap Service of the Kafka cluster, our registry Service and the
# `postgres` Service the user points at their database (docs/kubernetes.md).
KUBERNETES_ENDPOINTS: dict[str, str] = {
    "postgres_host": "postgres",
    "postgres_port": "5432",
    "kafka_bootstrap": f"{KUBERNETES_CLUSTER}-kafka-bootstrap:9092",
    "registry_api_url": "http://registry:8081/apis/registry/v3",
}
# Connect config keys that Strimzi takes from the spec (and refuses in spec.config).
_CLASS_KEY = "connector.class"
_TASKS_KEY = "tasks.max"


def rendered_connectors(
    settings: Settings, endpoints: Mapping[str, str] | None = None
) -> dict[str, dict[str, str]]:
    """Every connector's config as ``connectors apply`` would send it, by name;
    ``endpoints`` replace placeholder values (e.g. ``KUBERNETES_ENDPOINTS``)."""
    return {name: load_connector(name, settings, endpoints) for name in settings.connector_names}


def kafka_connector(name: str, config: Mapping[str, str], cluster: str) -> dict[str, Any]:
    """One ``KafkaConnector`` resource for connector ``name`` of Connect cluster ``cluster``."""
    return {
        "apiVersion": STRIMZI_API_VERSION,
        "kind": "KafkaConnector",
        "metadata": {"name": name, "labels": {"strimzi.io/cluster": cluster}},
        "spec": {
            "class": config[_CLASS_KEY],
            "tasksMax": int(config[_TASKS_KEY]),
            "autoRestart": {"enabled": True},
            "config": {
                key: value
                for key, value in sorted(config.items())
                if key not in (_CLASS_KEY, _TASKS_KEY)
            },
        },
    }


def kafka_connectors(
    settings: Settings,
    endpoints: Mapping[str, str] | None = None,
    cluster: str = KUBERNETES_CLUSTER,
) -> list[dict[str, Any]]:
    """The pipeline's connectors (the source and the sinks) as ``KafkaConnector``
    resources, in ``settings.connector_names`` order."""
    configs = rendered_connectors(settings, endpoints)
    return [kafka_connector(name, config, cluster) for name, config in configs.items()]


def yaml_documents(resources: Iterable[Mapping[str, Any]]) -> str:
    """Resources as one multi-document YAML stream (kubectl and kustomize read it).

    Block mappings with every string value JSON-quoted (a JSON string is a YAML
    double-quoted scalar), so a value such as ``${env:...}``, ``-1`` or ``true`` stays
    the string Connect expects.
    """
    return "".join("---\n" + "".join(_yaml_lines(resource, 0)) for resource in resources)


_PLAIN_KEY = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-/]*$")


def _yaml_lines(mapping: Mapping[str, Any], indent: int) -> list[str]:
    pad = " " * indent
    lines = []
    for key, value in mapping.items():
        name = key if _PLAIN_KEY.match(key) else json.dumps(key)
        if isinstance(value, Mapping):
            lines.append(f"{pad}{name}:\n")
            lines += _yaml_lines(value, indent + 2)
        else:
            lines.append(f"{pad}{name}: {json.dumps(value)}\n")
    return lines
