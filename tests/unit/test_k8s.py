"""deploy/k8s: every overlay builds with kustomize and passes ``kubeconform -strict``
against the schemas kept in the repo; the resources say what the code does (connector
configs, topics, images, replication, the bridge's stable ids, hardening)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from streaming_ml.cli import app
from streaming_ml.config import REPO_ROOT, Settings
from streaming_ml.connect.client import load_connector
from streaming_ml.connect.strimzi import (
    KUBERNETES_ENDPOINTS,
    kafka_connectors,
    yaml_documents,
)
from streaming_ml.kafka.topics import pipeline_topics

K8S_DIR = REPO_ROOT / "deploy" / "k8s"
SCHEMAS = K8S_DIR / "schemas"
OVERLAYS = sorted(path.name for path in (K8S_DIR / "overlays").iterdir() if path.is_dir())
# The images docker-compose.yml builds and runs (docker/build-images.sh). The compose
# stack that builds them lives on its own branch until it is merged; then this set is
# the one read from docker-compose.yml.
COMPOSE_IMAGES = {
    "streaming-ml-app:0.1.0",
    "streaming-ml-postgres:15",
    "streaming-ml-kafka:4.3.1",
    "streaming-ml-registry:3.0.9",
    "streaming-ml-connect:3.6.0.Final",
    "streaming-ml-adminer:bookworm",
    "streaming-ml-service:0.1.0",
}
# Endpoint settings the pods need that Settings does not have yet: the addresses a
# process dials, apart from SML_HOST, which it binds. Until they exist a pod ignores them.
# Settings the manifests name before the code has them (none now).
PENDING_SETTINGS: set[str] = set()


def tool(name: str) -> str:
    """A k8s tool from PATH or GOPATH/bin (where `make k8s-tools` puts it)."""
    found = shutil.which(name)
    if found:
        return found
    gopath = os.environ.get("GOPATH") or str(Path.home() / "go")
    candidate = Path(gopath) / "bin" / name
    if candidate.is_file():
        return str(candidate)
    pytest.fail(f"{name} is not installed: run `make k8s-tools` (Go module proxy)")


def kubeconform(manifests: str) -> subprocess.CompletedProcess[str]:
    location = f"{SCHEMAS}/{{{{ .ResourceKind }}}}{{{{ .KindSuffix }}}}.json"
    return subprocess.run(
        [tool("kubeconform"), "-strict", "-summary", "-schema-location", location, "-"],
        input=manifests,
        capture_output=True,
        text=True,
        timeout=120,
    )


@cache
def built(overlay: str) -> str:
    answer = subprocess.run(
        [tool("kustomize"), "build", str(K8S_DIR / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert answer.returncode == 0, answer.stderr
    return answer.stdout


@cache
def parsed(overlay: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(built(overlay)) if doc]


def resources(overlay: str, kind: str | None = None) -> list[dict[str, Any]]:
    return [doc for doc in parsed(overlay) if kind is None or doc["kind"] == kind]


def one(overlay: str, kind: str, name: str) -> dict[str, Any]:
    [found] = [r for r in resources(overlay, kind) if r["metadata"]["name"] == name]
    return found


def pod_specs(overlay: str) -> list[tuple[str, dict[str, Any]]]:
    kinds = ("Deployment", "StatefulSet")
    return [
        (r["metadata"]["name"], r["spec"]["template"]["spec"])
        for r in resources(overlay)
        if r["kind"] in kinds
    ]


def test_there_is_a_small_and_a_three_broker_overlay() -> None:
    assert OVERLAYS == ["small", "three-brokers"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_builds_and_passes_strict_validation(overlay: str) -> None:
    answer = kubeconform(built(overlay))
    assert answer.returncode == 0, answer.stdout + answer.stderr
    # Every resource was checked against a schema, none skipped for lack of one.
    count = len(resources(overlay))
    assert f"Valid: {count}, Invalid: 0, Errors: 0, Skipped: 0" in answer.stdout


@pytest.mark.parametrize(
    ("original", "misspelt"),
    [
        ("readOnlyRootFilesystem: true", "readOnlyRootFileSystem: true"),  # core kind
        ("tasksMax: 1", "taskMax: 1"),  # Strimzi
        ("maxReplicaCount: 3", "maxReplicas: 3"),  # KEDA
    ],
)
def test_strict_validation_refuses_a_misspelt_field(original: str, misspelt: str) -> None:
    manifests = built("small")
    assert original in manifests
    answer = kubeconform(manifests.replace(original, misspelt))
    assert answer.returncode != 0, answer.stdout
    assert "additional properties" in answer.stdout


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kafka_connectors_are_what_connectors_apply_sends(overlay: str) -> None:
    settings = Settings()
    connectors = {r["metadata"]["name"]: r for r in resources(overlay, "KafkaConnector")}
    assert sorted(connectors) == sorted(settings.connector_names)
    for name, resource in connectors.items():
        sent = load_connector(name, settings, KUBERNETES_ENDPOINTS)
        spec = resource["spec"]
        as_sent = {
            **spec["config"],
            "connector.class": spec["class"],
            "tasks.max": str(spec["tasksMax"]),
        }
        assert as_sent == sent, name
        assert spec["autoRestart"] == {"enabled": True}
        assert resource["metadata"]["labels"]["strimzi.io/cluster"] == "streaming-ml"
    # The endpoints are Services the overlay defines or Strimzi creates.
    assert one(overlay, "Service", "registry")
    assert KUBERNETES_ENDPOINTS["kafka_bootstrap"].startswith(
        one(overlay, "Kafka", "streaming-ml")["metadata"]["name"] + "-kafka-bootstrap:"
    )


def test_the_committed_connectors_are_the_rendered_ones() -> None:
    committed = (K8S_DIR / "base" / "kafka" / "connectors.yaml").read_text()
    rendered = yaml_documents(kafka_connectors(Settings(), KUBERNETES_ENDPOINTS))
    assert committed == rendered, (
        "regenerate with `streaming-ml connectors render --format strimzi --in-cluster "
        "> deploy/k8s/base/kafka/connectors.yaml`"
    )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_images_are_the_compose_images(overlay: str) -> None:
    images = {one(overlay, "KafkaConnect", "streaming-ml")["spec"]["image"]}
    for _, spec in pod_specs(overlay):
        images |= {c["image"] for c in spec.get("initContainers", []) + spec["containers"]}
    assert images <= COMPOSE_IMAGES, images - COMPOSE_IMAGES


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_topics_are_the_pipelines_with_its_partition_count(overlay: str) -> None:
    settings = Settings()
    topics = {r["spec"]["topicName"]: r["spec"] for r in resources(overlay, "KafkaTopic")}
    keyed = [*pipeline_topics(settings), settings.evaluator_state_topic]
    registry = [settings.models_topic, settings.model_events_topic]
    assert sorted(topics) == sorted(keyed + registry)
    assert {topics[t]["partitions"] for t in keyed} == {settings.partitions}
    assert {topics[t]["partitions"] for t in registry} == {1}
    # KEDA adds bridges up to the change topic's partition count, never beyond.
    scaled = one(overlay, "ScaledObject", "bridge")["spec"]
    trigger = scaled["triggers"][0]["metadata"]
    assert trigger["topic"] == settings.listings_topic
    assert trigger["consumerGroup"] == settings.consumer_group
    assert scaled["maxReplicaCount"] == topics[settings.listings_topic]["partitions"]
    assert scaled["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "name": "bridge",
    }


@pytest.mark.parametrize(
    ("overlay", "nodes", "replication", "min_insync"),
    [("small", 1, 1, 1), ("three-brokers", 3, 3, 2)],
)
def test_replication_follows_the_broker_count(
    overlay: str, nodes: int, replication: int, min_insync: int
) -> None:
    pool = one(overlay, "KafkaNodePool", "combined")["spec"]
    assert pool["replicas"] == nodes
    assert sorted(pool["roles"]) == ["broker", "controller"]
    config = one(overlay, "Kafka", "streaming-ml")["spec"]["kafka"]["config"]
    assert config["auto.create.topics.enable"] is False
    for key in (
        "default.replication.factor",
        "offsets.topic.replication.factor",
        "transaction.state.log.replication.factor",
    ):
        assert config[key] == replication, key
    assert config["min.insync.replicas"] == min_insync
    assert config["transaction.state.log.min.isr"] == min_insync
    # Connect's internal topics take the brokers' default.
    connect = one(overlay, "KafkaConnect", "streaming-ml")["spec"]["config"]
    assert {connect[f"{t}.storage.replication.factor"] for t in ("config", "offset", "status")} == {
        -1
    }


def test_each_bridge_replica_has_a_stable_instance_id() -> None:
    bridge = one("small", "StatefulSet", "bridge")
    [container] = bridge["spec"]["template"]["spec"]["containers"]
    [instance] = [e for e in container["env"] if e["name"] == "SML_BRIDGE_INSTANCE_ID"]
    assert instance["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pod_is_hardened_and_takes_secrets_by_reference(overlay: str) -> None:
    assert not resources(overlay, "Secret")
    for name, spec in pod_specs(overlay):
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        for container in spec.get("initContainers", []) + spec["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, (name, container["name"])
            assert context["allowPrivilegeEscalation"] is False, (name, container["name"])
            assert context["capabilities"] == {"drop": ["ALL"]}, (name, container["name"])
            for variable in container.get("env", []):
                if "PASSWORD" in variable["name"]:
                    assert "value" not in variable, (name, variable["name"])
                    assert "secretKeyRef" in variable["valueFrom"], (name, variable["name"])
    connect = one(overlay, "KafkaConnect", "streaming-ml")["spec"]["template"]
    assert connect["connectContainer"]["securityContext"]["readOnlyRootFilesystem"] is True
    for variable in connect["connectContainer"]["env"]:
        assert "secretKeyRef" in variable["valueFrom"], variable["name"]
    assert "PASSWORD" not in str(one(overlay, "ConfigMap", "streaming-ml-settings")["data"])


def test_rendered_yaml_keeps_every_value_as_it_was() -> None:
    resource = {
        "kind": "KafkaConnector",
        "spec": {
            "tasksMax": 1,
            "autoRestart": {"enabled": True},
            "config": {"a.b": "-1", "c": "true", "d": "${env:X}", "e: f": "it's # not"},
        },
    }
    assert list(yaml.safe_load_all(yaml_documents([resource, resource]))) == [resource] * 2


def test_connectors_render_prints_both_formats() -> None:
    runner = CliRunner()
    as_json = runner.invoke(app, ["connectors", "render", "--format", "json"])
    assert as_json.exit_code == 0, as_json.output
    settings = Settings()
    assert json.loads(as_json.stdout) == {
        name: load_connector(name, settings) for name in settings.connector_names
    }
    strimzi = runner.invoke(app, ["connectors", "render", "--format", "strimzi", "--in-cluster"])
    assert strimzi.exit_code == 0, strimzi.output
    assert strimzi.stdout == (K8S_DIR / "base" / "kafka" / "connectors.yaml").read_text()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_settings_configmap_names_settings(overlay: str) -> None:
    data = one(overlay, "ConfigMap", "streaming-ml-settings")["data"]
    fields = {f"SML_{name.upper()}" for name in Settings.model_fields}
    assert not PENDING_SETTINGS & fields, "now a setting: drop it from PENDING_SETTINGS"
    assert set(data) - PENDING_SETTINGS <= fields, set(data) - PENDING_SETTINGS - fields
    # Each value is one the setting accepts (validation errors would stop every pod).
    known = {k.removeprefix("SML_").lower(): v for k, v in data.items() if k in fields}
    settings = Settings(**known)
    topics = {r["spec"]["topicName"]: r["spec"] for r in resources(overlay, "KafkaTopic")}
    assert topics[settings.listings_topic]["partitions"] == settings.partitions


def schema_script() -> Any:
    spec = importlib.util.spec_from_file_location(
        "k8s_schemas", REPO_ROOT / "scripts" / "k8s_schemas.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_repo_keeps_a_schema_for_each_kind_used_and_no_other() -> None:
    script = schema_script()
    used = {
        script.schema_file_name(r["apiVersion"], r["kind"])
        for overlay in OVERLAYS
        for r in resources(overlay)
    }
    kept = {path.name for path in SCHEMAS.glob("*.json")}
    assert kept == used


def test_schemas_refuse_unknown_fields_except_where_kubernetes_keeps_them() -> None:
    tightened = schema_script().tightened
    schema = {
        "type": "object",
        "description": "dropped",
        "properties": {
            "port": {"format": "int-or-string", "type": "string"},
            "config": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            "env": {
                "type": "object",
                "properties": {"value": {"type": "string"}, "valueFrom": {"type": "object"}},
                "oneOf": [
                    {"properties": {"value": {}}, "required": ["value"]},
                    {"properties": {"valueFrom": {}}, "required": ["valueFrom"]},
                ],
            },
        },
    }
    strict = tightened(schema)
    assert strict["additionalProperties"] is False
    assert "description" not in strict
    assert strict["properties"]["port"] == {"oneOf": [{"type": "string"}, {"type": "integer"}]}
    assert "additionalProperties" not in strict["properties"]["config"]
    assert strict["properties"]["labels"]["additionalProperties"] == {"type": "string"}
    env = strict["properties"]["env"]
    assert env["additionalProperties"] is False
    # A oneOf branch constrains the object that holds it; it does not list all its fields.
    assert all("additionalProperties" not in branch for branch in env["oneOf"])
