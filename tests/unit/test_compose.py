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

from streaming_ml.config import REPO_ROOT, Settings
from streaming_ml.connect import client
from streaming_ml.stack import connect_worker, kafka, postgres, secrets
from streaming_ml.stack.compose import ENV_OF_ROLE

MAIN = "docker-compose.yml"
DEV = "docker-compose-dev.yml"
COMPOSE_FILES = (MAIN, DEV)
POD_OWNER = "postgres"
POD_MODE = f"service:{POD_OWNER}"
ALLOWED_CONDITIONS = {"service_healthy", "service_completed_successfully"}
_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")
# What `streaming-ml compose init` writes into .env: the only variables without a default.
SECRETS = {variable: f"generated-{variable.lower()}" for variable in ENV_OF_ROLE.values()}


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


def builds() -> list[tuple[str, str, Path, Path]]:
    """(compose file, service, context dir, Dockerfile) of every service that builds.

    Read without interpolation: it parametrises tests at collection time, where a missing
    default must fail one test (test_every_variable_has_a_default), not the collection.
    """
    found = []
    for name in COMPOSE_FILES:
        raw = yaml.safe_load((REPO_ROOT / name).read_text())
        for service_name, service in raw["services"].items():
            build = service.get("build")
            if build is None:
                continue
            context = REPO_ROOT / (build if isinstance(build, str) else build.get("context", "."))
            dockerfile = (
                "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
            )
            found.append((name, service_name, context, context / dockerfile))
    return found


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


# Images whose releases are numbered major.minor; every other image needs major.minor.patch
# (a tag like python:3.11-slim or postgres:15 moves with each patch release).
TWO_PART_VERSIONS = {"postgres"}


def assert_pinned(image: str, where: str) -> None:
    tag = image_tag(image)
    assert tag, f"{where}: image {image!r} has no tag"
    repository = image.split("@", 1)[0].rsplit(":", 1)[0].rsplit("/", 1)[-1]
    parts = 2 if repository in TWO_PART_VERSIONS else 3
    exact = re.match(r"\d+" + r"\.\d+" * (parts - 1) + r"(?!\.?\d)", tag)
    assert exact, f"{where}: {image!r} is not pinned to an exact release"


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
def test_every_service_has_a_pinned_image_or_a_build(name: str) -> None:
    for service_name, service in services(name).items():
        assert "image" in service or "build" in service, f"{service_name}: no image, no build"
        if "build" not in service:
            assert_pinned(service["image"], f"{name}:{service_name}")


@pytest.mark.parametrize(("name", "service", "context", "dockerfile"), builds())
def test_build_contexts_and_their_base_images(
    name: str, service: str, context: Path, dockerfile: Path
) -> None:
    assert context.is_dir(), f"{name}:{service}: build context {context} does not exist"
    assert dockerfile.is_file(), f"{name}:{service}: {dockerfile} does not exist"
    images = base_images(dockerfile)
    assert images, f"{dockerfile} has no FROM"
    for image in images:
        assert_pinned(image, str(dockerfile.relative_to(REPO_ROOT)))


@pytest.mark.parametrize(("name", "service", "context", "dockerfile"), builds())
def test_dockerfile_copy_sources_exist(
    name: str, service: str, context: Path, dockerfile: Path
) -> None:
    for keyword, args in dockerfile_instructions(dockerfile):
        if keyword not in {"COPY", "ADD"} or "--from=" in args:
            continue
        sources = [w for w in args.split() if not w.startswith("--")][:-1]
        for source in sources:
            if any(ch in source for ch in "*?["):
                continue  # a glob may legitimately match nothing (README.md*)
            assert (context / source).exists(), (
                f"{dockerfile.name}: COPY source {source} is missing"
            )


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


def test_dockerfile_runs_as_a_user_and_never_trains() -> None:
    instructions = dockerfile_instructions(REPO_ROOT / "Dockerfile")
    users = [args for keyword, args in instructions if keyword == "USER"]
    assert users and all(user not in {"root", "0"} for user in users)
    first_from = next(i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM")
    first_user = next(i for i, (keyword, _) in enumerate(instructions) if keyword == "USER")
    first_run_after_user = [k for k, _ in instructions[first_user:] if k == "RUN"]
    assert first_from < first_user and first_run_after_user  # installs happen as the user
    for keyword, args in instructions:
        if keyword == "RUN":
            assert "streaming-ml train" not in args and "train_model" not in args
    assert base_images(REPO_ROOT / "Dockerfile")[0].startswith("python:3.11.")
    stages = [args.split()[-1] for keyword, args in instructions if keyword == "FROM"]
    assert stages[-1] == "runtime", "a plain `docker build .` must give the runtime image"


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
    pins = maven_properties()
    main = services(MAIN)
    assert image_tag(main["kafka"]["image"]) == pins["kafka.version"]
    assert main["kafka"]["image"].startswith("apache/kafka:")
    assert image_tag(main["registry"]["image"]) == pins["apicurio.version"]
    assert main["registry"]["image"].startswith("apicurio/apicurio-registry:")
    connect_dockerfile = REPO_ROOT / main["connect"]["build"]["dockerfile"]
    debezium = [
        i for i in base_images(connect_dockerfile) if i.startswith("quay.io/debezium/connect:")
    ]
    assert [image_tag(i) for i in debezium] == [pins["debezium.version"]]
    # The converter is built from the local stack's own module, not pinned a second time.
    text = connect_dockerfile.read_text()
    assert "-pl apicurio-converter" in text
    assert (REPO_ROOT / "stack" / "apicurio-converter" / "pom.xml").is_file()
    assert image_tag(main["postgres"]["image"]).split(".")[0] == postgres.BIN_DIR.parts[-2] == "15"


def test_postgres_runs_with_the_local_server_options() -> None:
    command = options(services(MAIN)["postgres"]["command"])
    assert command["wal_level"] == "logical"
    local = options(postgres.server_argv(pod_settings()))
    keys = ("wal_level", "max_wal_senders", "max_replication_slots", "max_slot_wal_keep_size",
            "shared_buffers", "password_encryption", "port")  # fmt: skip
    for key in keys:
        assert command[key] == local[key], key
    env = environment(services(MAIN)["postgres"])
    assert "--auth=scram-sha-256" in env["POSTGRES_INITDB_ARGS"]
    assert "POSTGRES_DB" not in env  # 01-roles.sql creates `cars` owned by cars_app


def test_init_sql_is_mounted_and_every_role_gets_its_password() -> None:
    main = services(MAIN)
    assert "./postgres:/docker-entrypoint-initdb.d:ro" in main["postgres"]["volumes"]
    init = main["postgres-init"]
    assert "./postgres:/sql:ro" in init["volumes"]
    script_mount = next(v for v in init["volumes"] if v.endswith(".sh:ro"))
    script = (REPO_ROOT / script_mount.split(":")[0]).read_text()
    referenced = set(re.findall(r"\$\{?([A-Z][A-Z0-9_]*)", script)) - {"PGHOST", "SQL_DIR"}
    missing = referenced - set(environment(init))
    assert not missing, f"postgres-init does not set {sorted(missing)}"
    for role in secrets.ROLES:
        if role != secrets.SUPERUSER:
            assert f"ALTER ROLE {role} PASSWORD" in script, role


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


@pytest.mark.parametrize("name", ["bridge", "evaluator"])
def test_kafka_only_containers_hold_no_database_secret(name: str) -> None:
    """The bridge and the evaluator never connect to Postgres: no password, no secrets."""
    container = services(MAIN)[name]
    assert "configs" not in container
    assert not [k for k in environment(container) if "PASSWORD" in k]
    assert "configs" not in compose(MAIN)


def test_app_containers_only_set_real_settings() -> None:
    fields = set(Settings.model_fields)
    for service_name in ("trainer", "service", "bridge", "evaluator"):
        for key in environment(services(MAIN)[service_name]):
            if key.startswith("SML_"):
                assert key[4:].lower() in fields, f"{service_name}: {key} is not a Settings field"


def test_pod_shares_one_network_and_publishes_every_server_port() -> None:
    main = services(MAIN)
    settings = pod_settings()
    owner = main[POD_OWNER]
    assert "network_mode" not in owner
    for service_name, service in main.items():
        if service_name in (POD_OWNER, "trainer"):
            continue
        assert service.get("network_mode") == POD_MODE, f"{service_name} is outside the pod"
        assert not service.get("ports"), f"{service_name}: only {POD_OWNER} can publish ports"
    assert main["trainer"].get("network_mode") == "none"
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
    assert environment(main["connect"])["BOOTSTRAP_SERVERS"] == pod_settings().kafka_bootstrap
    # Same broker settings as the local stack (single node: one replica everywhere).
    local = dict(
        line.split("=", 1) for line in kafka.server_properties(pod_settings()).splitlines()
    )
    from_env = {
        key[6:].lower().replace("_", "."): value
        for key, value in env.items()
        if key.startswith("KAFKA_")
    }
    for key in ("process.roles", "node.id", "controller.listener.names", "num.partitions",
                "auto.create.topics.enable", "offsets.topic.replication.factor",
                "offsets.topic.num.partitions", "transaction.state.log.replication.factor",
                "transaction.state.log.min.isr", "share.coordinator.state.topic.replication.factor",
                "share.coordinator.state.topic.min.isr", "default.replication.factor",
                "min.insync.replicas", "group.initial.rebalance.delay.ms",
                "log.retention.hours", "controller.quorum.voters"):  # fmt: skip
        assert from_env[key] == local[key], key


def test_connect_worker_matches_the_local_worker() -> None:
    env = environment(services(MAIN)["connect"])
    # The Debezium entrypoint's own variables, then CONNECT_* -> worker properties.
    worker = {
        "bootstrap.servers": env["BOOTSTRAP_SERVERS"],
        "group.id": env["GROUP_ID"],
        "config.storage.topic": env["CONFIG_STORAGE_TOPIC"],
        "offset.storage.topic": env["OFFSET_STORAGE_TOPIC"],
        "status.storage.topic": env["STATUS_STORAGE_TOPIC"],
        "offset.flush.interval.ms": env["OFFSET_FLUSH_INTERVAL_MS"],
        "rest.advertised.host.name": env["ADVERTISED_HOST_NAME"],
        "rest.advertised.port": env["ADVERTISED_PORT"],
    }
    worker |= {
        key[8:].lower().replace("_", "."): value
        for key, value in env.items()
        if key.startswith("CONNECT_")
    }
    local = dict(
        line.split("=", 1)
        for line in connect_worker.worker_properties(pod_settings(), Path("/dist")).splitlines()
    )
    # Image defaults: plugin.path=/kafka/connect, JsonConverter as the worker converters.
    skipped = {"plugin.path", "key.converter", "value.converter"}
    for key, value in local.items():
        if key == "listeners":  # the same port, on the pod's interfaces (published ports)
            assert worker[key] == value.replace(f"//{pod_settings().host}:", "//0.0.0.0:")
        elif key not in skipped:
            assert worker.get(key) == value, f"worker property {key}"
    # Removed in Kafka 3.0 (KAFKA-12482): setting them would silently do nothing.
    assert not {"REST_PORT", "REST_HOST_NAME"} & set(env)


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


def test_service_and_trainer_share_the_model_store() -> None:
    main = services(MAIN)
    store = "bentoml-home:/home/app/bentoml"
    assert store in main["trainer"]["volumes"] and store in main["service"]["volumes"]
    assert main["service"]["depends_on"]["trainer"]["condition"] == "service_completed_successfully"
    command = " ".join(argv(main["trainer"]["command"]))
    assert "streaming-ml train" in command and "bentoml models get" in command
    assert argv(main["service"]["command"])[:3] == ["bentoml", "serve", "service:PricePredictor"]
    assert argv(main["bridge"]["command"]) == ["streaming-ml", "bridge", "--apply-connectors"]


def test_dev_compose_serves_jupyter_on_the_loopback_with_the_repo_editable() -> None:
    dev = services(DEV)
    jupyter = dev["jupyter"]
    assert published(jupyter) == [("127.0.0.1", 8888, 8888)]
    assert jupyter["build"]["target"] == "dev"
    assert ".:/home/app/work" in jupyter["volumes"]
    command = " ".join(argv(jupyter["command"]))
    assert "pip install --no-deps --no-build-isolation --quiet -e ." in command
    assert "--port=8888" in command
    workdirs = [a for k, a in dockerfile_instructions(REPO_ROOT / "Dockerfile") if k == "WORKDIR"]
    assert "/home/app/work" in workdirs
    data_mounts = [
        v for v in dev["jupyter-data"]["volumes"] if isinstance(v, dict) and v.get("read_only")
    ]
    assert [m["target"] for m in data_mounts] == ["/home/app/data"]


def test_runtime_image_has_the_layout_the_code_expects() -> None:
    """The code locates files from REPO_ROOT; the image must keep the checkout's layout."""
    stages: dict[str, list[tuple[str, str]]] = {}
    parents: dict[str, str] = {}
    current = ""
    for keyword, args in dockerfile_instructions(REPO_ROOT / "Dockerfile"):
        if keyword == "FROM":
            words = args.split()
            current = words[-1]
            parents[current] = words[0]
            stages[current] = []
        stages[current].append((keyword, args))
    chain = ["runtime"]
    while parents[chain[-1]] in stages:
        chain.append(parents[chain[-1]])
    instructions = [item for stage in reversed(chain) for item in stages[stage]]
    copied = {
        word.rstrip("*")
        for keyword, args in instructions
        if keyword == "COPY" and "--from=" not in args
        for word in args.split()[:-1]
        if not word.startswith("--")
    }
    needed = {
        str(client.CONNECTORS_DIR.relative_to(REPO_ROOT)),  # debezium/, read by the bridge
        "service.py",
        "src",
        "pyproject.toml",
    }
    assert needed <= copied, f"missing in the runtime image: {sorted(needed - copied)}"
    workdirs = [args for keyword, args in instructions if keyword == "WORKDIR"]
    assert workdirs[-1] == "/app"
    # Editable, so that REPO_ROOT (two levels above the package) is /app.
    assert any(k == "RUN" and "pip install --no-deps -e ." in a for k, a in stages["runtime"])


def test_compose_init_writes_private_random_passwords_once(tmp_path: Path) -> None:
    from streaming_ml.stack.compose import init, read_env_file

    env_file, state_dir = tmp_path / ".env", tmp_path / "state"
    env_file.write_text("SML_PG_APP_PASSWORD=chosen-by-me\nSML_SERVICE_PORT=3001\n")
    added = init(env_file, state_dir)
    assert sorted(added) == sorted(set(ENV_OF_ROLE.values()) - {"SML_PG_APP_PASSWORD"})
    values = read_env_file(env_file)
    assert values["SML_PG_APP_PASSWORD"] == "chosen-by-me" and values["SML_SERVICE_PORT"] == "3001"
    generated = [values[v] for v in ENV_OF_ROLE.values() if v != "SML_PG_APP_PASSWORD"]
    assert len(set(generated)) == 4 and all(len(v) >= 32 for v in generated)
    assert env_file.stat().st_mode & 0o777 == 0o600
    # The host CLI reads the same values from the state dir.
    stored = secrets.load_passwords(state_dir)
    assert {stored[role] for role in ENV_OF_ROLE} == {values[v] for v in ENV_OF_ROLE.values()}
    assert secrets.secrets_path(state_dir).stat().st_mode & 0o777 == 0o600
    # Again: nothing changes.
    before = env_file.read_text()
    assert init(env_file, state_dir) == []
    assert env_file.read_text() == before


def test_connect_serves_its_jmx_metrics_as_the_local_worker_does() -> None:
    main = services(MAIN)
    opts = environment(main["connect"])["KAFKA_OPTS"]
    agent = re.fullmatch(r"-javaagent:(\S+\.jar)=0\.0\.0\.0:(\d+):(\S+\.yaml)", opts)
    assert agent, opts
    jar, port, config = agent.group(1), int(agent.group(2)), agent.group(3)
    # The port the bench and the docs read, published like every port of the pod.
    assert port == Settings().connect_metrics_port
    assert ("127.0.0.1", port, port) in published(main[POD_OWNER])
    # The image holds the agent where KAFKA_OPTS says, and the local stack's config file.
    dockerfile = (REPO_ROOT / main["connect"]["build"]["dockerfile"]).read_text()
    assert f"/out/agents/jmx_prometheus_javaagent.jar {Path(jar).parent}/" in dockerfile
    assert f"COPY --chown=kafka:kafka stack/jmx-exporter.yaml {Path(config).parent}/" in dockerfile
    assert REPO_ROOT / "stack" / Path(config).name == connect_worker.JMX_EXPORTER_CONFIG
    assert "dependency:copy@copy-agents" in dockerfile
