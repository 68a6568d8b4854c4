"""docker-compose.yml and docker-compose-dev.yml, built and run for real.

The images are the ones docker/build-images.sh builds (``make compose-build``), named by
the shipped compose file; the stack runs under a project of its own, on free ports, with
passwords from ``streaming-ml compose init``. Needs a Docker daemon: one is started (and
stopped again) when none answers and this is root; otherwise every test here fails with
the reason.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from streaming_ml.config import REPO_ROOT, Settings
from streaming_ml.datasets.load import load_listings
from streaming_ml.stack.compose import init, read_env_file
from tests.fixtures.ports import free_port
from tests.integration.pipeline import (
    direct_prices,
    listings,
    query,
    wait_for_predictions,
    wait_until,
)

# The first test also pays for the image build (a no-op when warm) and `up --wait`.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(2700)]

COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
DEV_FILE = REPO_ROOT / "docker-compose-dev.yml"
BUILD_TIMEOUT_S = 1800
UP_TIMEOUT_S = 600
PRICED_WITHIN_S = 300.0
# Services that run for good (healthchecked) and one-shot steps (must exit 0).
LONG_RUNNING = {
    "postgres", "kafka", "registry", "connect", "adminer", "service", "connectors-watch",
    "bridge", "bridge-2", "evaluator", "learner", "dashboard",
}  # fmt: skip
ONE_SHOT = {"postgres-init", "connectors", "online-trainer"}
PORT_VARIABLES = (
    "SML_POSTGRES_PORT", "SML_KAFKA_PORT", "SML_KAFKA_CONTROLLER_PORT", "SML_REGISTRY_PORT",
    "SML_CONNECT_PORT", "SML_CONNECT_METRICS_PORT", "SML_ADMINER_PORT", "SML_SERVICE_PORT",
    "SML_DASHBOARD_PORT", "SML_BRIDGE_METRICS_PORT", "SML_BRIDGE_2_METRICS_PORT",
    "SML_EVALUATOR_METRICS_PORT", "SML_WATCHDOG_METRICS_PORT",
)  # fmt: skip


def run(argv: list[str], timeout: float, check: bool = True, **kwargs: Any) -> str:
    """Run a command; on failure, fail the test with its output."""
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kwargs)
    if check and result.returncode != 0:
        pytest.fail(
            f"`{' '.join(argv)}` exited {result.returncode}:\n"
            f"{(result.stdout + result.stderr)[-4000:]}"
        )
    return result.stdout


@pytest.fixture(scope="module")
def docker_daemon() -> Iterator[None]:
    """A Docker daemon and Compose v2; dockerd is started here (and stopped after) only
    when none answers."""
    if shutil.which("docker") is None:
        pytest.fail(
            "docker is not installed: run `make docker-install` (apt-get install docker.io)"
        )
    started = run([str(REPO_ROOT / "docker" / "dockerd.sh")], timeout=90, check=False)
    if subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode != 0:
        pytest.fail(f"no Docker daemon answers and none could be started: {started}")
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode != 0:
        pytest.fail("Docker Compose v2 is missing: run `make docker-install`")
    pid = int(started.strip()) if started.strip().isdigit() else None
    yield
    if pid is not None:
        os.kill(pid, 15)
        wait_until(lambda: not Path(f"/proc/{pid}").exists(), 60, "dockerd to stop")


@pytest.fixture(scope="module")
def compose_images(docker_daemon: None) -> None:
    """Every image, built by the one command users run (layer cache: a no-op when warm)."""
    run([str(REPO_ROOT / "docker" / "build-images.sh")], timeout=BUILD_TIMEOUT_S)


@dataclass
class Stack:
    project: str
    env_file: Path
    settings: Settings
    passwords: dict[str, str]

    def compose(self, *args: str, timeout: float = 120, check: bool = True, dev: bool = False):
        files = ["-f", str(DEV_FILE)] if dev else ["-f", str(COMPOSE_FILE)]
        project = f"{self.project}-dev" if dev else self.project
        argv = ["docker", "compose", "-p", project, "--env-file", str(self.env_file), *files]
        return run([*argv, *args], timeout=timeout, check=check, cwd=REPO_ROOT)

    @property
    def dsn(self) -> str:
        s = self.settings
        password = self.passwords["SML_PG_APP_PASSWORD"]
        return f"postgresql://cars_app:{password}@{s.host}:{s.postgres_port}/{s.database}"

    def containers(self) -> list[dict[str, Any]]:
        out = self.compose("ps", "--all", "--format", "json")
        lines = [line for line in out.splitlines() if line.strip()]
        if len(lines) == 1 and lines[0].startswith("["):
            return json.loads(lines[0])
        return [json.loads(line) for line in lines]


@pytest.fixture(scope="module")
def compose_stack(
    compose_images: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """`compose init` + `up --wait` under a project of its own, on free ports."""
    workdir = tmp_path_factory.mktemp("compose")
    env_file = workdir / ".env"
    init(env_file, workdir / "state")
    ports = {name: free_port() for name in PORT_VARIABLES}
    with env_file.open("a") as handle:
        handle.writelines(f"{name}={port}\n" for name, port in ports.items())
    values = read_env_file(env_file)
    settings = Settings(
        **{name[4:].lower(): port for name, port in ports.items() if "BRIDGE_2" not in name}
    ).model_copy(update={"state_dir": workdir / "state"})
    stack = Stack(f"sml-test-{uuid.uuid4().hex[:8]}", env_file, settings, values)
    try:
        stack.compose("up", "--detach", "--wait", "--wait-timeout", str(UP_TIMEOUT_S),
                      timeout=UP_TIMEOUT_S + 60)  # fmt: skip
        yield stack
    finally:
        logs = stack.compose("logs", "--no-color", "--tail", "40", check=False)
        print(logs[-20000:])
        stack.compose("down", "-v", "--remove-orphans", "--timeout", "20", timeout=180, check=False)


def load_in_background(
    dsn: str, rows: int, seed: int, rate: float
) -> tuple[threading.Thread, list]:
    result: list[Any] = []

    def target() -> None:
        try:
            result.append(load_listings(dsn, rows, seed=seed, rate=rate, batch=50))
        except BaseException as error:
            result.append(error)

    thread = threading.Thread(target=target, name="load", daemon=True)
    thread.start()
    return thread, result


def assert_priced_exactly_once(stack: Stack, ids: list[int]) -> None:
    """Every listing has one prediction row, equal to what the service says for it."""
    s = stack.settings
    try:
        found = wait_for_predictions(stack.dsn, s.predictions_table, ids, PRICED_WITHIN_S)
    except AssertionError as error:
        logs = stack.compose(
            "logs", "--no-color", "--tail", "25", "bridge", "bridge-2", "connect", "kafka",
            check=False,
        )  # fmt: skip
        raise AssertionError(f"{error}\nlast logs:\n{logs[-12000:]}") from None
    counts = query(
        stack.dsn,
        f"SELECT count(*) AS n, count(DISTINCT listing_id) AS d FROM public.{s.predictions_table} "
        "WHERE listing_id = ANY(%s)",
        (ids,),
    )[0]
    assert (counts["n"], counts["d"]) == (len(ids), len(ids))
    rows = listings(stack.dsn, s.listings_table, ids)
    ordered = sorted(ids)
    expected = []
    for start in range(0, len(ordered), 500):
        chunk = ordered[start : start + 500]
        expected += direct_prices(s.prediction_url, [rows[i] for i in chunk])
    got = [found[i]["predicted_price"] for i in ordered]
    assert got == expected


def test_every_service_is_up_and_healthy(compose_stack: Stack) -> None:
    by_service = {c["Service"]: c for c in compose_stack.containers()}
    assert set(by_service) == LONG_RUNNING | ONE_SHOT
    for name in LONG_RUNNING:
        assert (by_service[name]["State"], by_service[name]["Health"]) == ("running", "healthy"), (
            name
        )
    for name in ONE_SHOT:
        assert by_service[name]["State"] == "exited" and by_service[name]["ExitCode"] == 0, name


def test_no_container_runs_as_root(compose_stack: Stack) -> None:
    for name in sorted(LONG_RUNNING):
        uid = compose_stack.compose("exec", "-T", name, "id", "-u").strip()
        assert uid.isdigit() and int(uid) != 0, f"{name} runs as uid {uid}"


def test_ports_are_published_on_the_loopback_only(compose_stack: Stack) -> None:
    ids = compose_stack.compose("ps", "--all", "--quiet").split()
    inspected = json.loads(run(["docker", "inspect", *ids], timeout=60))
    published = []
    for container in inspected:
        for bindings in (container["NetworkSettings"]["Ports"] or {}).values():
            published += [(b["HostIp"], b["HostPort"]) for b in bindings or []]
        config = container["HostConfig"]
        assert config["CapDrop"] == ["ALL"], container["Name"]
        assert "no-new-privileges:true" in config["SecurityOpt"], container["Name"]
    assert len(published) == 8
    assert {ip for ip, _ in published} == {"127.0.0.1"}


def test_row_inserted_in_the_compose_adminer_gets_the_services_price(compose_stack: Stack) -> None:
    from tests.fixtures.adminer import KUGA, insert_through_adminer

    s = compose_stack.settings
    adminer = f"http://127.0.0.1:{s.adminer_port}/"
    server = f"127.0.0.1:{s.postgres_port}"  # as the Adminer container sees Postgres
    mileage = 31_337
    listing = {**KUGA, "mileage": str(mileage)}
    login = ("cars_app", compose_stack.passwords["SML_PG_APP_PASSWORD"])
    insert_through_adminer(adminer, server, login, s.database, s.listings_table, listing)
    found = wait_until(
        lambda: query(
            compose_stack.dsn,
            f"SELECT id FROM public.{s.listings_table} WHERE mileage = %s AND model = 'Kuga'",
            (mileage,),
        ),
        30,
        "the row inserted through Adminer",
    )
    assert len(found) == 1
    listing_id = int(found[0]["id"])
    prediction = wait_for_predictions(compose_stack.dsn, s.predictions_table, [listing_id])
    row = listings(compose_stack.dsn, s.listings_table, [listing_id])[listing_id]
    assert prediction[listing_id]["predicted_price"] == direct_prices(s.prediction_url, [row])[0]
    assert prediction[listing_id]["model_tag"] == service_tag(s)


def test_a_thousand_rows_from_streaming_ml_load_are_all_priced(compose_stack: Stack) -> None:
    """The host CLI against the compose Postgres (its passwords from `compose init`)."""
    s = compose_stack.settings
    env = {
        **os.environ,
        "SML_STATE_DIR": str(s.state_dir),
        "SML_POSTGRES_PORT": str(s.postgres_port),
    }
    cli = Path(sys.executable).with_name("streaming-ml")
    out = run([str(cli), "load", "--rows", "1000", "--seed", "1001"], timeout=300, env=env)
    first, last = map(int, re.search(r"ids (\d+)\.\.(\d+)", out).groups())
    ids = list(range(first, last + 1))
    assert len(ids) == 1000, out
    assert_priced_exactly_once(compose_stack, ids)


def test_killing_a_bridge_during_a_load_loses_and_duplicates_nothing(compose_stack: Stack) -> None:
    table = compose_stack.settings.predictions_table
    before = count_rows(compose_stack, table)
    thread, result = load_in_background(compose_stack.dsn, 3000, seed=3000, rate=250)
    wait_until(
        lambda: count_rows(compose_stack, table) >= before + 500, 120, "the load to get priced"
    )
    compose_stack.compose("kill", "bridge-2")
    thread.join(timeout=120)
    assert not thread.is_alive() and not isinstance(result[0], BaseException), result
    ids = list(result[0].ids)
    assert len(ids) == 3000
    assert_priced_exactly_once(compose_stack, ids)
    compose_stack.compose("up", "--detach", "--wait", "bridge-2", timeout=300)


def test_restarting_kafka_under_load_loses_and_duplicates_nothing(compose_stack: Stack) -> None:
    table = compose_stack.settings.listings_table
    before = count_rows(compose_stack, table)
    thread, result = load_in_background(compose_stack.dsn, 2000, seed=2000, rate=200)
    wait_until(lambda: count_rows(compose_stack, table) >= before + 300, 60, "the load to start")
    compose_stack.compose("restart", "kafka", timeout=180)
    thread.join(timeout=120)
    assert not thread.is_alive() and not isinstance(result[0], BaseException), result
    ids = list(result[0].ids)
    assert len(ids) == 2000
    assert_priced_exactly_once(compose_stack, ids)


def test_dev_compose_runs_notebook_03_against_the_compose_service(compose_stack: Stack) -> None:
    with compose_stack.env_file.open("a") as handle:
        handle.write(f"SML_COMPOSE_NETWORK={compose_stack.project}_default\n")
        handle.write(f"SML_DEV_JUPYTER_PORT={free_port()}\n")
    jupyter_port = read_env_file(compose_stack.env_file)["SML_DEV_JUPYTER_PORT"]
    try:
        compose_stack.compose("up", "--detach", "--wait", "--wait-timeout", "180", dev=True,
                              timeout=240)  # fmt: skip
        api = requests.get(f"http://127.0.0.1:{jupyter_port}/api", timeout=10)
        assert api.status_code == 200 and "version" in api.json()
        compose_stack.compose(
            "exec", "-T", "jupyter", "jupyter", "nbconvert", "--to", "notebook", "--execute",
            "notebooks/03_api_request.ipynb", "--output", "/tmp/03.ipynb",
            dev=True, timeout=300,
        )  # fmt: skip
        executed = json.loads(compose_stack.compose("exec", "-T", "jupyter", "cat", "/tmp/03.ipynb",
                                                    dev=True))  # fmt: skip
        text = "".join(
            "".join(output.get("text", ""))
            for cell in executed["cells"]
            for output in cell.get("outputs", [])
        )
        assert "C-MAX      listed   8,295 GBP  predicted" in text
        assert not [o for c in executed["cells"] for o in c.get("outputs", []) if
                    o.get("output_type") == "error"]  # fmt: skip
    finally:
        compose_stack.compose("down", "-v", "--timeout", "10", dev=True, timeout=120, check=False)


def test_down_v_leaves_no_container_network_or_volume(compose_stack: Stack) -> None:
    """Last in this module: the stack is gone afterwards (the fixture's own `down` then
    finds nothing)."""
    compose_stack.compose("down", "-v", "--remove-orphans", "--timeout", "20", timeout=180)
    label = f"label=com.docker.compose.project={compose_stack.project}"
    for kind in (["ps", "-a"], ["network", "ls"], ["volume", "ls"]):
        left = run(["docker", *kind, "--quiet", "--filter", label], timeout=30).split()
        assert left == [], f"docker {' '.join(kind)} still lists {left}"


def count_rows(stack: Stack, table: str) -> int:
    return int(query(stack.dsn, f"SELECT count(*) AS n FROM public.{table}")[0]["n"])


def service_tag(settings: Settings) -> str:
    """The model tag the Bento serves (its /model_info)."""
    response = requests.post(f"{settings.prediction_url}/model_info", json={}, timeout=10)
    response.raise_for_status()
    return response.json()["tag"]
