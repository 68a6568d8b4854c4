"""Regenerate deploy/k8s/schemas/: strict, standalone JSON schemas for kubeconform.

    .venv/bin/python scripts/k8s_schemas.py        # or: make k8s-schemas

Only the kinds deploy/k8s uses, from sources the Go module proxy and Maven Central serve:

- Kubernetes: api/openapi-spec/swagger.json of the k8s.io/kubernetes module
  (``go mod download``);
- KEDA: config/crd/bases/keda.sh_scaledobjects.yaml of the github.com/kedacore/keda/v2
  module (``go mod download``);
- Strimzi: the CRDs that Strimzi's own crd-generator (io.strimzi:crd-generator) writes
  for the classes of io.strimzi:api, both from Maven Central (``mvn``); the generator needs
  Java 21 or newer (``--java``).

Each schema is the kind's definition with every ``$ref`` inlined (kubeconform reads one
file per kind), ``additionalProperties: false`` wherever properties are listed and the
API server would not keep unknown fields (so a misspelt field fails, as
``kubeconform -strict`` means), int-or-string and quantities as the API server takes them,
and descriptions dropped (size). Custom resources get Kubernetes' ObjectMeta as their
``metadata``. Files are named ``<kind>-<group's first label>-<version>.json``, the
``{{ .ResourceKind }}{{ .KindSuffix }}`` of kubeconform's schema-location template.

Only for maintainers bumping a version: the tests use the committed schemas, offline.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
SCHEMAS_DIR = REPO_ROOT / "deploy" / "k8s" / "schemas"

KUBERNETES_MODULE = "k8s.io/kubernetes@v1.34.2"
KEDA_MODULE = "github.com/kedacore/keda/v2@v2.18.3"
STRIMZI_VERSION = "1.2.0"

# (group, version, kind) of the built-in kinds deploy/k8s uses ("" is the core group).
KUBERNETES_KINDS = [
    ("", "v1", "ConfigMap"),
    ("", "v1", "Service"),
    ("apps", "v1", "Deployment"),
    ("apps", "v1", "StatefulSet"),
    ("autoscaling", "v2", "HorizontalPodAutoscaler"),
    ("networking.k8s.io", "v1", "NetworkPolicy"),
    ("policy", "v1", "PodDisruptionBudget"),
]
STRIMZI_CLASSES = {
    "Kafka": "io.strimzi.api.kafka.model.kafka.Kafka",
    "KafkaNodePool": "io.strimzi.api.kafka.model.nodepool.KafkaNodePool",
    "KafkaTopic": "io.strimzi.api.kafka.model.topic.KafkaTopic",
    "KafkaConnect": "io.strimzi.api.kafka.model.connect.KafkaConnect",
    "KafkaConnector": "io.strimzi.api.kafka.model.connector.KafkaConnector",
}
STRIMZI_API_VERSION = "v1"
KEDA_CRDS = {"ScaledObject": "config/crd/bases/keda.sh_scaledobjects.yaml"}
KEDA_API_VERSION = "v1alpha1"

_INT_OR_STRING = {"oneOf": [{"type": "string"}, {"type": "integer"}]}
_QUANTITY = {"oneOf": [{"type": "string"}, {"type": "number"}]}
_QUANTITY_REF = "io.k8s.apimachinery.pkg.api.resource.Quantity"
_OBJECT_META_REF = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
_COMBINATORS = ("oneOf", "anyOf", "allOf")


def schema_file_name(api_version: str, kind: str) -> str:
    """kubeconform's ``{{ .ResourceKind }}{{ .KindSuffix }}.json`` for a resource."""
    group, _, version = api_version.rpartition("/")
    suffix = f"-{group.split('.')[0]}-{version}" if group else f"-{version}"
    return f"{kind.lower()}{suffix}.json".lower()


def inline_refs(node: Any, definitions: dict[str, Any], seen: tuple[str, ...] = ()) -> Any:
    """``node`` with every ``#/definitions/...`` reference replaced by its definition.

    A definition that refers back to itself is cut off as "any value": none of the kinds
    here nests one, and kubeconform reads no references across files.
    """
    if isinstance(node, list):
        return [inline_refs(item, definitions, seen) for item in node]
    if not isinstance(node, dict):
        return node
    ref = node.get("$ref")
    if isinstance(ref, str):
        name = ref.removeprefix("#/definitions/")
        if name == _QUANTITY_REF:
            return dict(_QUANTITY)
        if name in seen:
            return {}
        return inline_refs(definitions[name], definitions, (*seen, name))
    return {key: inline_refs(value, definitions, seen) for key, value in node.items()}


def tightened(node: Any, branch: bool = False) -> Any:
    """Descriptions dropped, int-or-string spelt out, unknown properties refused.

    A ``branch`` (an item of oneOf/anyOf/allOf) only adds constraints to the object
    that holds it: its ``properties`` are not the whole list, so it refuses nothing.
    """
    if isinstance(node, list):
        return [tightened(item, branch) for item in node]
    if not isinstance(node, dict):
        return node
    if node.get("format") == "int-or-string" or node.get("x-kubernetes-int-or-string"):
        return dict(_INT_OR_STRING)
    result = {
        key: tightened(value, key in _COMBINATORS)
        for key, value in node.items()
        if key != "description"
    }
    keeps_unknown = node.get("x-kubernetes-preserve-unknown-fields") is True
    closed = "properties" in node and "additionalProperties" not in node
    if closed and not keeps_unknown and not branch:
        result["additionalProperties"] = False
    return result


def kubernetes_schemas(swagger: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The strict standalone schema of each of ``KUBERNETES_KINDS`` by file name."""
    definitions = swagger["definitions"]
    by_kind: dict[tuple[str, str, str], str] = {}
    for name, definition in definitions.items():
        for gvk in definition.get("x-kubernetes-group-version-kind", []):
            by_kind[(gvk["group"], gvk["version"], gvk["kind"])] = name
    schemas = {}
    for group, version, kind in KUBERNETES_KINDS:
        name = by_kind[(group, version, kind)]
        api_version = f"{group}/{version}" if group else version
        schema = tightened(inline_refs(definitions[name], definitions, (name,)))
        schemas[schema_file_name(api_version, kind)] = schema
    return schemas


def object_meta(swagger: dict[str, Any]) -> dict[str, Any]:
    definitions = swagger["definitions"]
    return tightened(inline_refs(definitions[_OBJECT_META_REF], definitions))


def crd_schemas(
    crds: Iterable[dict[str, Any]], version: str, metadata: dict[str, Any]
) -> dict[str, dict[str, Any]]:
    """The strict schema of ``version`` of each CustomResourceDefinition by file name."""
    schemas = {}
    for crd in crds:
        spec = crd["spec"]
        served = {v["name"]: v for v in spec["versions"]}
        schema = tightened(served[version]["schema"]["openAPIV3Schema"])
        schema["properties"]["metadata"] = metadata
        api_version = f"{spec['group']}/{version}"
        schemas[schema_file_name(api_version, spec["names"]["kind"])] = schema
    return schemas


def go_module_dir(module: str) -> Path:
    """Download ``module`` (path@version) through GOPROXY; its directory in the cache."""
    answer = subprocess.run(
        ["go", "mod", "download", "-json", module], check=True, capture_output=True, text=True
    )
    return Path(json.loads(answer.stdout)["Dir"])


def strimzi_crds(java: str, work: Path) -> list[dict[str, Any]]:
    """The Strimzi CRDs of ``STRIMZI_CLASSES``, written by Strimzi's crd-generator."""
    pom = f"""<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local</groupId><artifactId>strimzi-crds</artifactId><version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>io.strimzi</groupId><artifactId>api</artifactId>
      <version>{STRIMZI_VERSION}</version></dependency>
    <dependency><groupId>io.strimzi</groupId><artifactId>crd-generator</artifactId>
      <version>{STRIMZI_VERSION}</version></dependency>
  </dependencies>
</project>
"""
    (work / "pom.xml").write_text(pom)
    lib = work / "lib"
    subprocess.run(
        ["mvn", "-q", "-f", str(work / "pom.xml"), "dependency:copy-dependencies",
         f"-DoutputDirectory={lib}"],
        check=True,
    )  # fmt: skip
    outputs = {kind: work / f"{kind.lower()}.yaml" for kind in STRIMZI_CLASSES}
    subprocess.run(
        [java, "-cp", f"{lib}/*", "io.strimzi.crdgenerator.CrdGenerator", "--yaml",
         "--crd-api-version", "v1", "--api-versions", STRIMZI_API_VERSION,
         "--storage-version", STRIMZI_API_VERSION,
         *(f"{STRIMZI_CLASSES[kind]}={path}" for kind, path in outputs.items())],
        check=True,
    )  # fmt: skip
    return [yaml.safe_load(path.read_text()) for path in outputs.values()]


def write_schemas(schemas: dict[str, dict[str, Any]], directory: Path) -> None:
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    for name, schema in sorted(schemas.items()):
        text = json.dumps(schema, sort_keys=True, separators=(",", ":"))
        (directory / name).write_text(text + "\n")
    sources = (
        f"Kubernetes: {KUBERNETES_MODULE} api/openapi-spec/swagger.json\n"
        f"KEDA: {KEDA_MODULE} {', '.join(KEDA_CRDS.values())}\n"
        f"Strimzi: io.strimzi:api:{STRIMZI_VERSION} through io.strimzi:crd-generator:"
        f"{STRIMZI_VERSION} ({STRIMZI_API_VERSION})\n"
        "Written by scripts/k8s_schemas.py; do not edit by hand.\n"
    )
    (directory / "SOURCES").write_text(sources)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--java",
        default=os.environ.get("JAVA", "java"),
        help="A Java 21+ runtime for Strimzi's crd-generator (default: $JAVA or java)",
    )
    parser.add_argument("--out", type=Path, default=SCHEMAS_DIR)
    args = parser.parse_args()
    swagger_path = go_module_dir(KUBERNETES_MODULE) / "api" / "openapi-spec" / "swagger.json"
    swagger = json.loads(swagger_path.read_text())
    keda_dir = go_module_dir(KEDA_MODULE)
    keda = [yaml.safe_load((keda_dir / path).read_text()) for path in KEDA_CRDS.values()]
    metadata = object_meta(swagger)
    with tempfile.TemporaryDirectory() as work:
        strimzi = strimzi_crds(args.java, Path(work))
    schemas = {
        **kubernetes_schemas(swagger),
        **crd_schemas(strimzi, STRIMZI_API_VERSION, metadata),
        **crd_schemas(keda, KEDA_API_VERSION, metadata),
    }
    write_schemas(schemas, args.out)
    print(f"{len(schemas)} schemas in {args.out}")


if __name__ == "__main__":
    main()
