"""docker-compose.yml, docker-compose-dev.yml and their Dockerfiles, checked without Docker.

Structure (pinned images, healthchecks, dependency conditions, loopback-only ports,
volumes, paths that exist) and agreement with the local stack: the versions pinned in
stack/**/pom.xml, the Postgres/Kafka/Connect/registry settings of streaming_ml.stack, and
the connector configs in debezium/ rendered by the very code the bridge runs in the pod.
"""

from __future__ import annotations

import functools
import re
import shlex
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
import yaml

from streaming_ml import stack
from streaming_ml.config import REPO_ROOT, Settings
from streaming_ml.connect import client
from streaming_ml.stack import connect_worker, jars, kafka, postgres, secrets
from streaming_ml.stack.compose import ENV_OF_ROLE, SIGNING_KEY_ENV

MAIN = "docker-compose.yml"
DEV = "docker-compose-dev.yml"
COMPOSE_FILES = (MAIN, DEV)
POD_OWNER = "postgres"
POD_MODE = f"service:{POD_OWNER}"
ALLOWED_CONDITIONS = {"service_healthy", "service_completed_successfully"}
_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")
# What `streaming-ml compose init` writes into .env: the only variables without a default.
SECRETS = {
    variable: f"generated-{variable.lower()}"
    for variable in [*ENV_OF_ROLE.values(), SIGNING_KEY_ENV]
}


# --- Reading the files ------------------------------------------------------------------


def interpolate(text: str) -> str:
    """Compose interpolation with only the .env of `streaming-ml compose init`, i.e. the
    documented defaults plus the generated passwords.

    ``$$`` is a literal ``$`` (left for the container's shell). A password must be
    required (``${NAME:?hint}``): no default is shipped. Any other variable must have a
    default, because `docker compose up` must work with nothing but that .env.
    """
    parts = text.split("$$")

    def substitute(match: re.Match[str]) -> str:
        name, operator, default = match.groups()
        if name in SECRETS:
            if operator != ":?" or "compose init" not in default:
                raise AssertionError(f"${{{name}}} must be required: ${{{name}:?run ... init}}")
            return SECRETS[name]
        if operator != ":-":
            raise AssertionError(f"${{{name}}} has no default (use ${{{name}:-value}})")
        return default

    return "$".join(_VARIABLE.sub(substitute, part) for part in parts)


def _interpolate_tree(node: Any) -> Any:
    if isinstance(node, str):
        return interpolate(node)
    if isinstance(node, list):
        return [_interpolate_tree(item) for item in node]
    if isinstance(node, dict):
        return {key: _interpolate_tree(value) for key, value in node.items()}
    return node


@functools.cache
def compose(name: str) -> dict[str, Any]:
    raw = yaml.safe_load((REPO_ROOT / name).read_text())
    return _interpolate_tree(raw)


def services(name: str) -> dict[str, dict[str, Any]]:
    return compose(name)["services"]


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: str(value) for key, value in env.items()}


def argv(command: Any) -> list[str]:
    return [str(part) for part in command] if isinstance(command, list) else shlex.split(command)


def options(command: Any) -> dict[str, str]:
    """``-c key=value`` pairs of a postgres command line."""
    args = argv(command)
    pairs = [args[i + 1] for i, arg in enumerate(args[:-1]) if arg == "-c"]
    return dict(pair.split("=", 1) for pair in pairs)


def one_shot(service: dict[str, Any]) -> bool:
    return str(service.get("restart", "no")) == "no"


def pod_settings() -> Settings:
    """The Settings the bridge builds inside the pod from its SML_* environment."""
    env = environment(services(MAIN)["bridge"])
    fields = {key[4:].lower(): value for key, value in env.items() if key.startswith("SML_")}
    return Settings(**fields)


def published(service: dict[str, Any]) -> list[tuple[str, int, int]]:
    """(host ip, host port, container port) of every published port."""
    result = []
    for entry in service.get("ports", []):
        if isinstance(entry, dict):
            result.append((entry.get("host_ip", ""), int(entry["published"]), int(entry["target"])))
            continue
        fields = str(entry).split(":")
        assert len(fields) == 3, f"port {entry!r} must name the host ip, e.g. 127.0.0.1:5432:5432"
        result.append((fields[0], int(fields[1]), int(fields[2].split("/")[0])))
    return result


# --- Dockerfiles ---------------------------------------------------------------------


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = pending + stripped
        pending = ""
        keyword, _, rest = full.partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
    return instructions


def base_images(dockerfile: Path) -> list[str]:
    """External images of FROM lines (earlier stages referenced by name are skipped)."""
    stages: set[str] = set()
    images = []
    for keyword, args in dockerfile_instructions(dockerfile):
        if keyword != "FROM":
            continue
        words = [w for w in args.split() if not w.startswith("--")]
        if len(words) >= 3 and words[1].upper() == "AS":
            stages.add(words[2])
        if words[0] not in stages:
            images.append(words[0])
    return images


def image_tag(image: str) -> str | None:
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    return last.split(":", 1)[1] if ":" in last else None


# --- docker/build-images.sh: what it builds, from which Dockerfile -------------------

BUILD_SCRIPT = REPO_ROOT / "docker" / "build-images.sh"
BASE_IMAGE = "streaming-ml-base:bookworm"
SERVICE_IMAGE = "streaming-ml-service:0.1.0"


@functools.cache
def built_images() -> dict[str, Path]:
    """Image tag -> Dockerfile, for every `build <tag> "$(stage <name> docker/<dir>/Dockerfile"
    line of the build script, with its version variables resolved from the POMs."""
    text = BUILD_SCRIPT.read_text().replace("\\\n", " ")
    variables = {
        "$KAFKA_VERSION": maven_properties()["kafka.version"],
        "$DEBEZIUM_VERSION": maven_properties()["debezium.version"],
        "$APICURIO_VERSION": maven_properties()["apicurio.version"],
        "$VERSION": project_version(),
    }
    found = {}
    for tag, dockerfile in re.findall(
        r'^\s*build "?([^\s"]+)"? "\$\(stage \S+ ([^\s)"]+)', text, re.M
    ):
        for name, value in variables.items():
            tag = tag.replace(name, value)
        found[tag] = REPO_ROOT / dockerfile
    return found


def project_version() -> str:
    return re.search(r'^version = "([^"]+)"', (REPO_ROOT / "pyproject.toml").read_text(), re.M)[1]


# --- Maven pins of the local stack ---------------------------------------------------


@functools.cache
def maven_properties() -> dict[str, str]:
    properties: dict[str, str] = {}
    for pom in sorted((REPO_ROOT / "stack").rglob("pom.xml")):
        root = ET.parse(pom).getroot()
        for node in root.iter():
            if node.tag.endswith("}properties"):
                for prop in node:
                    properties.setdefault(prop.tag.split("}", 1)[1], (prop.text or "").strip())
    return properties


# --- Generic structure ---------------------------------------------------------------


@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_every_variable_has_a_default(name: str) -> None:
    text = (REPO_ROOT / name).read_text()
    assert "${" in text  # the files are parametrised; this makes the check meaningful
    interpolate(text)


@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_every_service_runs_an_image_built_here_and_never_pulls(name: str) -> None:
    """The images a user gets from the shipped file are the ones docker/build-images.sh
    builds (and the tests run): no registry, no `build:` that could differ."""
    images = {*built_images(), SERVICE_IMAGE}
    for service_name, service in services(name).items():
        assert "build" not in service, f"{name}:{service_name} builds outside the build script"
        assert service["image"] in images, f"{name}:{service_name}: {service['image']}"
        assert service.get("pull_policy") == "never", f"{name}:{service_name} may pull"


def test_every_image_builds_on_the_base_or_an_image_built_before_it() -> None:
    built: list[str] = []
    for tag, dockerfile in built_images().items():
        assert dockerfile.is_file(), f"{tag}: {dockerfile} is missing"
        for image in base_images(dockerfile):
            assert image == BASE_IMAGE or image in built, f"{dockerfile}: FROM {image}"
        built.append(tag)
    bentofile = yaml.safe_load((REPO_ROOT / "bentofile.yaml").read_text())
    assert bentofile["docker"]["base_image"] in built
    assert (REPO_ROOT / bentofile["docker"]["dockerfile_template"]).is_file()
    assert '--image-tag "streaming-ml-service:$VERSION"' in BUILD_SCRIPT.read_text()


def test_every_image_runs_as_a_user() -> None:
    """The last USER of each image's Dockerfile chain is not root (the Bento's is BentoML's
    `bentoml` user; the Python base is only a base)."""
    user_of: dict[str, str | None] = {BASE_IMAGE: None}
    for tag, dockerfile in built_images().items():
        instructions = dockerfile_instructions(dockerfile)
        parent = base_images(dockerfile)[-1]
        users = [args for keyword, args in instructions if keyword == "USER"]
        user_of[tag] = users[-1] if users else user_of[parent]
        for keyword, args in instructions:
            assert not (keyword == "RUN" and "streaming-ml train" in args), tag
    running = {s["image"] for name in COMPOSE_FILES for s in services(name).values()}
    for tag in running - {SERVICE_IMAGE}:
        assert user_of[tag] not in {None, "root", "0"}, f"{tag} runs as root"


@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_containers_are_locked_down(name: str) -> None:
    for service_name, service in services(name).items():
        assert service.get("cap_drop") == ["ALL"], service_name
        assert "no-new-privileges:true" in service.get("security_opt", []), service_name
        if name == MAIN and service_name != "service":
            assert service.get("read_only") is True, f"{service_name}: read-only root filesystem"


@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_long_running_services_have_healthchecks(name: str) -> None:
    for service_name, service in services(name).items():
        if one_shot(service):
            assert not service.get("ports"), f"{service_name}: a one-shot step publishes no port"
            continue
        test = (service.get("healthcheck") or {}).get("test")
        assert test and test != ["NONE"], f"{name}:{service_name} has no healthcheck"
        assert not (service.get("healthcheck") or {}).get("disable")


@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_depends_on_waits_for_health_or_completion(name: str) -> None:
    all_services = services(name)
    awaited_one_shots = set()
    for service_name, service in all_services.items():
        depends = service.get("depends_on", {})
        assert isinstance(depends, dict), f"{service_name}: depends_on must name conditions"
        for target, spec in depends.items():
            assert target in all_services, f"{service_name} depends on unknown service {target}"
            condition = spec.get("condition")
            assert condition in ALLOWED_CONDITIONS, f"{service_name} -> {target}: {condition}"
            if condition == "service_healthy":
                assert all_services[target].get("healthcheck"), f"{target} has no healthcheck"
            else:
                assert one_shot(all_services[target]), f"{target} is not a one-shot step"
                awaited_one_shots.add(target)
    one_shots = {n for n, s in all_services.items() if one_shot(s)}
    assert one_shots == awaited_one_shots, "every one-shot step must be awaited by a service"


@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_ports_are_published_on_the_loopback_only(name: str) -> None:
    ports = [p for s in services(name).values() for p in published(s)]
    assert ports, f"{name} publishes nothing"
    for host_ip, _host_port, _container_port in ports:
        assert host_ip == "127.0.0.1", (
            f"{name}: a port is published on {host_ip or 'every interface'}"
        )


@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_named_volumes_are_declared_and_used(name: str) -> None:
    declared = set((compose(name).get("volumes") or {}).keys())
    used = set()
    for service in services(name).values():
        for volume in service.get("volumes", []):
            source = volume.get("source", "") if isinstance(volume, dict) else volume.split(":")[0]
            if source and not source.startswith((".", "/", "~")):
                used.add(source)
    assert used == declared, f"declared {sorted(declared)} but used {sorted(used)}"


@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_bind_mounts_exist_and_data_outside_the_repo_is_opt_in(name: str) -> None:
    for service_name, service in services(name).items():
        for volume in service.get("volumes", []):
            if isinstance(volume, dict):
                source, bind = volume.get("source", ""), volume.get("bind", {})
            else:
                source, bind = volume.split(":")[0], {}
            if not source.startswith((".", "/")):
                continue
            path = (REPO_ROOT / source).resolve()
            if path.is_relative_to(REPO_ROOT):
                assert path.exists(), f"{service_name}: bind mount source {source} is missing"
            else:
                # Outside the repository (shared data): never created, always read-only,
                # never part of a default service.
                assert bind.get("create_host_path") is False, f"{service_name}: {source}"
                assert volume.get("read_only") is True, f"{service_name}: {source} must be :ro"
                assert service.get("profiles"), f"{service_name} mounts {source} by default"


def test_dockerignore_keeps_state_and_data_out_of_images() -> None:
    patterns = {
        line.strip()
        for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    for required in (".venv", ".stack", "**/*.csv", "notebooks", ".pytest_cache", ".env"):
        assert required in patterns, f".dockerignore must exclude {required}"


# --- Agreement with the local stack --------------------------------------------------


def test_image_versions_match_the_maven_pins_of_the_local_stack() -> None:
    """One set of versions: the images carry the jars the local stack runs (stack/pom.xml,
    staged from SML_DIST_DIR), tagged with their POM versions; Connect is the Kafka image
    plus the plugins, so its Kafka is the broker's and the local worker's."""
    pins = maven_properties()
    main = services(MAIN)
    assert main["kafka"]["image"] == f"streaming-ml-kafka:{pins['kafka.version']}"
    assert main["connect"]["image"] == f"streaming-ml-connect:{pins['debezium.version']}"
    assert main["registry"]["image"] == f"streaming-ml-registry:{pins['apicurio.version']}"
    connect_dockerfile = built_images()[main["connect"]["image"]]
    assert base_images(connect_dockerfile) == [main["kafka"]["image"]]
    script = BUILD_SCRIPT.read_text()
    for staged in ('"$DIST/kafka=kafka"', '"$DIST/plugins=plugins"', '"$DIST/agents=agents"',
                   '"$DIST/apicurio=apicurio"'):  # fmt: skip
        assert staged in script, staged
    registry = (REPO_ROOT / "docker" / "registry" / "Dockerfile").read_text()
    assert jars.REGISTRY_JAR in registry
    # Postgres 15 and Java 17 from the Debian packages the local stack installs.
    assert image_tag(main["postgres"]["image"]) == postgres.BIN_DIR.parts[-2] == "15"
    apt = {name for name, _ in stack.APT_PACKAGES}
    assert "postgresql-15" in apt and "openjdk-17-jre-headless" in apt
    assert "postgresql-15" in (REPO_ROOT / "docker" / "postgres" / "Dockerfile").read_text()
    assert "openjdk-17-jre-headless" in (REPO_ROOT / "docker" / "jre" / "Dockerfile").read_text()
    assert (
        "adminer php-cli php-pgsql" in (REPO_ROOT / "docker" / "adminer" / "Dockerfile").read_text()
    )


def test_postgres_runs_with_the_local_server_options() -> None:
    command = options(services(MAIN)["postgres"]["command"])
    local = options(postgres.server_argv(pod_settings()))
    # The pod's interfaces (published ports), its own socket dir, and our pg_hba.conf.
    assert command.pop("listen_addresses") == "*" and local.pop("listen_addresses")
    assert command.pop("unix_socket_directories") == "/tmp" and local.pop("unix_socket_directories")
    assert command.pop("hba_file") == "/etc/postgresql/pg_hba.conf"
    assert command == local
    entrypoint = (REPO_ROOT / "docker" / "postgres" / "postgres-entrypoint.sh").read_text()
    assert "--auth=scram-sha-256" in entrypoint and "--pwfile" in entrypoint


def test_init_step_is_the_local_stacks_code_and_gets_every_password() -> None:
    """The one-shot step runs the code `stack up` runs (init SQL, SCRAM verifiers) from the
    app image, which holds postgres/; compose gives it every role's password."""
    init = services(MAIN)["postgres-init"]
    assert init["image"] == services(MAIN)["bridge"]["image"]
    assert init["command"] == ["streaming-ml", "compose", "postgres-init"]
    assert set(ENV_OF_ROLE.values()) <= set(environment(init))
    dockerfile = (REPO_ROOT / "docker" / "app" / "Dockerfile").read_text()
    assert "COPY postgres/ /app/postgres/" in dockerfile and "postgresql-client-15" in dockerfile


@pytest.mark.parametrize("name", ["dashboard", "connectors-watch"])
def test_readers_hold_only_the_reader_password(name: str) -> None:
    held = {k for k in environment(services(MAIN)[name]) if "PASSWORD" in k}
    assert held == {ENV_OF_ROLE[secrets.READER_ROLE]}


def test_one_password_per_role_everywhere() -> None:
    """postgres-init, the registry and the Connect worker use the same value for each
    role (defaults, i.e. without a .env)."""
    main = compose(MAIN)
    init = environment(main["services"]["postgres-init"])
    registry_env = environment(main["services"]["registry"])
    assert registry_env["APICURIO_DATASOURCE_USERNAME"] == secrets.REGISTRY_ROLE
    assert registry_env["APICURIO_DATASOURCE_PASSWORD"] == init["SML_PG_REGISTRY_PASSWORD"]
    connect_env = environment(main["services"]["connect"])
    assert connect_env[secrets.SOURCE_PASSWORD_ENV] == init[secrets.SOURCE_PASSWORD_ENV]
    assert connect_env[secrets.SINK_PASSWORD_ENV] == init[secrets.SINK_PASSWORD_ENV]
    environment_of_postgres = environment(main["services"]["postgres"])
    assert environment_of_postgres["POSTGRES_PASSWORD"] == init["POSTGRES_PASSWORD"]


@pytest.mark.parametrize("name", ["bridge", "bridge-2", "evaluator", "learner"])
def test_kafka_only_containers_hold_no_database_secret(name: str) -> None:
    """The bridges, the evaluator and the learner never connect to Postgres."""
    container = services(MAIN)[name]
    assert "configs" not in container
    assert not [k for k in environment(container) if "PASSWORD" in k]
    assert "configs" not in compose(MAIN)


def test_app_containers_only_set_real_settings() -> None:
    fields = set(Settings.model_fields)
    passwords = set(ENV_OF_ROLE.values())
    for service_name, service in services(MAIN).items():
        if service["image"] not in {"streaming-ml-app:0.1.0", SERVICE_IMAGE}:
            continue
        for key in environment(service):
            if key.startswith("SML_") and key not in passwords:
                assert key[4:].lower() in fields, f"{service_name}: {key} is not a Settings field"


# Ports only the stack's servers listen on: no application process reads them.
SERVER_ONLY_PORTS = {"kafka_controller_port", "adminer_port"}


def test_app_containers_get_every_port_and_the_partition_count_the_cli_uses() -> None:
    """A port or partition count moved for the host CLI (the same variables) must move in
    the containers too, or they listen and connect where the CLI does not."""
    shared = [
        field
        for field in Settings.model_fields
        if field.endswith("_port") and field not in SERVER_ONLY_PORTS
    ] + ["partitions"]
    for service_name, service in services(MAIN).items():
        if service["image"] not in {"streaming-ml-app:0.1.0", SERVICE_IMAGE}:
            continue
        env = environment(service)
        missing = [f"SML_{field.upper()}" for field in shared if f"SML_{field.upper()}" not in env]
        assert missing == [], service_name


def test_pod_shares_one_network_and_publishes_every_server_port() -> None:
    main = services(MAIN)
    settings = pod_settings()
    owner = main[POD_OWNER]
    assert "network_mode" not in owner
    for service_name, service in main.items():
        if service_name in (POD_OWNER, "online-trainer"):
            continue
        assert service.get("network_mode") == POD_MODE, f"{service_name} is outside the pod"
        assert not service.get("ports"), f"{service_name}: only {POD_OWNER} can publish ports"
    assert main["online-trainer"].get("network_mode") == "none"
    # Where each server of the pod listens, read from its own configuration.
    kafka_listeners = environment(main["kafka"])["KAFKA_LISTENERS"]
    listens = {
        "postgres": int(options(main["postgres"]["command"])["port"]),
        "kafka": int(re.search(r"PLAINTEXT://0\.0\.0\.0:(\d+)", kafka_listeners).group(1)),
        "registry": int(environment(main["registry"])["QUARKUS_HTTP_PORT"]),
        "connect": int(environment(main["connect"])["CONNECT_LISTENERS"].rsplit(":", 1)[1]),
        "adminer": int(argv(main["adminer"]["command"])[2].rsplit(":", 1)[1]),
        "service": int(argv(main["service"]["command"])[-1]),
    }
    assert argv(main["adminer"]["command"])[2].startswith("0.0.0.0:")
    assert environment(main["connect"])["CONNECT_LISTENERS"].startswith("http://0.0.0.0:")
    assert environment(main["registry"])["QUARKUS_HTTP_HOST"] == "0.0.0.0"
    ports = {(host_port, container_port) for _, host_port, container_port in published(owner)}
    for component, port in listens.items():
        assert (port, port) in ports, f"{component} port {port} must be published as {port}:{port}"
    # ... and the bridge's Settings point at exactly those ports.
    assert listens["postgres"] == settings.postgres_port
    assert listens["kafka"] == settings.kafka_port
    assert listens["registry"] == settings.registry_port
    assert listens["connect"] == settings.connect_port
    assert listens["service"] == settings.service_port
    assert settings.host == "127.0.0.1"


def test_kafka_advertises_the_address_both_sides_reach() -> None:
    main = services(MAIN)
    env = environment(main["kafka"])
    advertised = env["KAFKA_ADVERTISED_LISTENERS"].split(",")
    assert advertised == [f"PLAINTEXT://127.0.0.1:{pod_settings().kafka_port}"]
    host_ports = {(h, c) for _, h, c in published(main[POD_OWNER])}
    assert (pod_settings().kafka_port, pod_settings().kafka_port) in host_ports
    assert environment(main["connect"])["CONNECT_BOOTSTRAP_SERVERS"] == (
        pod_settings().kafka_bootstrap
    )


def test_kafka_runs_with_the_local_server_properties() -> None:
    """Every property of the local broker, key for key (KAFKA_<NAME> -> <name>, as
    docker/kafka/kafka-entrypoint.sh writes them), but where it listens and logs."""
    env = environment(services(MAIN)["kafka"])
    local = dict(
        line.split("=", 1) for line in kafka.server_properties(pod_settings()).splitlines()
    )
    from_env = {
        key[6:].lower().replace("_", "."): value
        for key, value in env.items()
        if key.startswith("KAFKA_")
    }
    assert from_env.pop("listeners") == local.pop("listeners").replace(
        f"PLAINTEXT://{pod_settings().host}:", "PLAINTEXT://0.0.0.0:"
    )
    assert from_env.pop("log.dirs") == "/var/lib/kafka/data" and local.pop("log.dirs")
    assert from_env == local
    jvm = kafka.jvm_options(kafka.HEAP, Path("/x"), Path("/y"))
    assert env["JAVA_OPTS"].split() == [o for o in jvm if not o.startswith(("-Dlog4j2", "-Dkafka"))]


def test_connect_worker_matches_the_local_worker() -> None:
    """Every worker property of the local stack, key for key (CONNECT_<NAME> -> <name>),
    but for the listener on the pod's interfaces and the image's plugin path."""
    env = environment(services(MAIN)["connect"])
    worker = {
        key[8:].lower().replace("_", "."): value
        for key, value in env.items()
        if key.startswith("CONNECT_")
    }
    local = dict(
        line.split("=", 1)
        for line in connect_worker.worker_properties(pod_settings(), Path("/dist")).splitlines()
    )
    assert worker.pop("listeners") == local.pop("listeners").replace(
        f"//{pod_settings().host}:", "//0.0.0.0:"
    )
    assert worker.pop("plugin.path") == "/opt/kafka/plugins" and local.pop("plugin.path")
    assert worker == local
    jvm = kafka.jvm_options(connect_worker.HEAP, Path("/x"), Path("/y"), full_jit=True)
    expected = [o for o in jvm if not o.startswith(("-Dlog4j2", "-Dkafka"))]
    assert [o for o in env["JAVA_OPTS"].split() if not o.startswith("-javaagent")] == expected
    assert pod_settings().connect_full_jit


@pytest.mark.parametrize("name", [Settings().source_connector, Settings().sink_connector])
def test_connector_configs_work_unchanged_in_the_pod(name: str) -> None:
    """Rendered with the bridge's Settings (as `streaming-ml bridge` does in the pod), every
    address is one the Connect container reaches and every secret is in its environment."""
    main = services(MAIN)
    settings = pod_settings()
    config = client.load_connector(name, settings)
    worker_env = environment(main["connect"])
    for value in config.values():
        for provider, key in re.findall(r"\$\{(\w+):([^}]*)\}", value):
            assert provider in worker_env["CONNECT_CONFIG_PROVIDERS"].split(","), provider
            if provider == "env":
                assert key in worker_env, f"{name}: ${{env:{key}}} is not set on connect"
    postgres_port = options(main["postgres"]["command"])["port"]
    registry_port = environment(main["registry"])["QUARKUS_HTTP_PORT"]
    if "database.hostname" in config:
        assert (config["database.hostname"], config["database.port"]) == (
            "127.0.0.1",
            postgres_port,
        )
    else:
        assert config["connection.url"].startswith(f"jdbc:postgresql://127.0.0.1:{postgres_port}/")
    urls = {v for k, v in config.items() if k.endswith("apicurio.registry.url")}
    assert urls == {f"http://127.0.0.1:{registry_port}/apis/registry/v3"}


def test_connector_names_topics_and_tables_follow_the_settings() -> None:
    defaults = Settings()
    source = client.load_connector(defaults.source_connector, pod_settings())
    sink = client.load_connector(defaults.sink_connector, pod_settings())
    assert source["topic.prefix"] == defaults.topic_prefix
    assert source["table.include.list"] == f"public.{defaults.listings_table}"
    assert source["database.dbname"] == defaults.database
    assert sink["topics"] == defaults.predictions_topic
    assert sink["collection.name.format"] == f"public.{defaults.predictions_table}"
    assert sink["connection.url"].endswith(f"/{defaults.database}")


def test_the_service_is_the_bento_and_the_online_model_is_shared() -> None:
    main = services(MAIN)
    assert main["service"]["image"] == SERVICE_IMAGE
    assert argv(main["service"]["command"])[:3] == ["serve", "--host", "0.0.0.0"]
    bentofile = yaml.safe_load((REPO_ROOT / "bentofile.yaml").read_text())
    assert any(p.startswith("river==") for p in bentofile["python"]["packages"])
    store = "bentoml-home:/home/app/bentoml"
    for name in ("online-trainer", "learner", "evaluator"):
        assert store in main[name]["volumes"], name
    assert main["learner"]["depends_on"]["online-trainer"]["condition"] == (
        "service_completed_successfully"
    )
    assert "streaming-ml train --online" in " ".join(argv(main["online-trainer"]["command"]))
    assert "streaming-ml connectors apply && exit 0" in " ".join(
        argv(main["connectors"]["command"])
    )
    assert argv(main["connectors-watch"]["command"]) == ["streaming-ml", "connectors", "watch"]
    assert argv(main["bridge"]["command"]) == argv(main["bridge-2"]["command"])
    ports = {environment(main[b])["SML_BRIDGE_METRICS_PORT"] for b in ("bridge", "bridge-2")}
    assert len(ports) == 2, "the bridges share the pod's loopback: one metrics port each"


def test_dev_compose_serves_jupyter_on_the_loopback_next_to_the_pipeline() -> None:
    dev = services(DEV)
    jupyter = dev["jupyter"]
    assert published(jupyter) == [("127.0.0.1", 8888, 8888)]
    assert jupyter["image"] == f"streaming-ml-jupyter:{project_version()}"
    assert ".:/home/app/work" in jupyter["volumes"]
    assert environment(jupyter)["SML_SERVICE_URL"] == f"http://{POD_OWNER}:3000"
    network = compose(DEV)["networks"]["pipeline"]
    assert network["external"] is True
    assert network["name"] == f"{compose(MAIN)['name']}_default"
    dockerfile = (REPO_ROOT / "docker" / "jupyter" / "Dockerfile").read_text()
    assert "--require-hashes" in dockerfile and "PYTHONPATH=/home/app/work/src" in dockerfile
    data_mounts = [
        v for v in dev["jupyter-data"]["volumes"] if isinstance(v, dict) and v.get("read_only")
    ]
    assert [m["target"] for m in data_mounts] == ["/home/app/data"]


def test_app_image_has_the_layout_the_code_expects() -> None:
    """The code locates files from REPO_ROOT; the app image keeps the checkout's layout."""
    instructions = dockerfile_instructions(REPO_ROOT / "docker" / "app" / "Dockerfile")
    copied = {
        word.rstrip("/")
        for keyword, args in instructions
        if keyword == "COPY"
        for word in args.split()[:-1]
        if not word.startswith("--")
    }
    needed = {
        str(client.CONNECTORS_DIR.relative_to(REPO_ROOT)),  # debezium/, read by the bridge
        "service.py",
        "src",
        "pyproject.toml",
    }
    assert needed <= copied, f"missing in the app image: {sorted(needed - copied)}"
    assert [a for k, a in instructions if k == "WORKDIR"][-1] == "/app"
    assert any(k == "ENV" and "PYTHONPATH=/app/src" in a for k, a in instructions)
    python = (REPO_ROOT / "docker" / "python" / "Dockerfile").read_text()
    assert "for m in ('pytest', 'ruff', 'playwright', 'nbclient')" in python


def test_compose_init_writes_private_random_passwords_once(tmp_path: Path) -> None:
    from streaming_ml.stack.compose import init, read_env_file

    env_file, state_dir = tmp_path / ".env", tmp_path / "state"
    env_file.write_text("SML_PG_APP_PASSWORD=chosen-by-me\nSML_SERVICE_PORT=3001\n")
    added = init(env_file, state_dir)
    assert sorted(added) == sorted(
        set(ENV_OF_ROLE.values()) - {"SML_PG_APP_PASSWORD"} | {SIGNING_KEY_ENV}
    )
    values = read_env_file(env_file)
    assert values["SML_PG_APP_PASSWORD"] == "chosen-by-me" and values["SML_SERVICE_PORT"] == "3001"
    generated = [values[v] for v in ENV_OF_ROLE.values() if v != "SML_PG_APP_PASSWORD"]
    assert len(set(generated)) == len(ENV_OF_ROLE) - 1 and all(len(v) >= 32 for v in generated)
    assert env_file.stat().st_mode & 0o777 == 0o600
    # The host CLI reads the same values from the state dir.
    stored = secrets.load_passwords(state_dir)
    assert {stored[role] for role in ENV_OF_ROLE} == {values[v] for v in ENV_OF_ROLE.values()}
    assert secrets.secrets_path(state_dir).stat().st_mode & 0o777 == 0o600
    # And the registry's signing key, the same on both sides.
    key = values[SIGNING_KEY_ENV]
    assert len(key) == 64
    assert secrets.signing_key_path(state_dir).read_text().strip() == key
    assert secrets.signing_key_path(state_dir).stat().st_mode & 0o777 == 0o600
    # Again: nothing changes.
    before = env_file.read_text()
    assert init(env_file, state_dir) == []
    assert env_file.read_text() == before


def test_connect_serves_its_jmx_metrics_as_the_local_worker_does() -> None:
    main = services(MAIN)
    opts = environment(main["connect"])["JAVA_OPTS"].split()
    agents = [o for o in opts if o.startswith("-javaagent:")]
    assert len(agents) == 1
    agent = re.fullmatch(r"-javaagent:(\S+\.jar)=0\.0\.0\.0:(\d+):(\S+\.yaml)", agents[0])
    assert agent, agents
    jar, port, config = agent.group(1), int(agent.group(2)), agent.group(3)
    assert port == Settings().connect_metrics_port
    assert ("127.0.0.1", port, port) in published(main[POD_OWNER])
    dockerfile = (REPO_ROOT / "docker" / "connect" / "Dockerfile").read_text()
    assert f"COPY agents/{Path(jar).name} {Path(config).name} {Path(jar).parent}/" in dockerfile
    assert Path(config).name == connect_worker.JMX_EXPORTER_CONFIG.name
    assert "stack/jmx-exporter.yaml" in BUILD_SCRIPT.read_text()


def test_app_containers_find_their_passwords_where_the_cli_looks(tmp_path: Path) -> None:
    """docker/app/docker-entrypoint.sh: the passwords compose passes, and only those, in
    SML_STATE_DIR/secrets/passwords.json (0600); a container given none gets no file."""
    from streaming_ml.stack.compose import write_state_from_env

    state = tmp_path / "state"
    environ = {"SML_STATE_DIR": str(state), "SML_PG_APP_PASSWORD": "app-secret"}
    assert write_state_from_env(environ) == [secrets.APP_ROLE]
    assert secrets.load_passwords(state)[secrets.APP_ROLE] == "app-secret"
    assert set(secrets.load_passwords(state).by_role) == {secrets.APP_ROLE}
    assert secrets.secrets_path(state).stat().st_mode & 0o777 == 0o600
    empty = tmp_path / "empty"
    assert write_state_from_env({"SML_STATE_DIR": str(empty)}) == []
    assert not empty.exists()
    entrypoint = (REPO_ROOT / "docker" / "app" / "docker-entrypoint.sh").read_text()
    assert "write_state_from_env()" in entrypoint
