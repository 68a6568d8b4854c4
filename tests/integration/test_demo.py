"""`streaming-ml demo --no-wait` (what `make demo` runs, minus the wait) on a private stack:
it starts everything, applies the connectors, prices the valid listings, dead-letters the
invalid one, reports the accuracy on their labels and stops what it started."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from streaming_ml.config import Settings
from streaming_ml.system import processes
from tests.fixtures.ports import free_port
from tests.fixtures.stack import PORT_FIELDS, private_stack_settings
from tests.integration.pipeline import settings_env

pytestmark = pytest.mark.integration

# The demo's own listeners, beside the stack's: each on a free port.
DEMO_PORTS = (
    "service_port", "bridge_metrics_port", "evaluator_metrics_port", "dashboard_port",
    "watchdog_metrics_port",
)  # fmt: skip


def demo_settings(prefix: str) -> Settings:
    return private_stack_settings(prefix).model_copy(
        update={field: free_port() for field in DEMO_PORTS}
    )


def test_demo_prices_the_valid_listings_and_stops_everything(trained_model_tag: str) -> None:
    from streaming_ml.stack import down

    settings = demo_settings("sml-demo-")
    cli = Path(sys.executable).parent / "streaming-ml"
    try:
        result = subprocess.run(
            [str(cli), "demo", "--no-wait", "--rows", "4"],
            env=settings_env(settings), capture_output=True, text=True, timeout=600, check=False,
        )  # fmt: skip
        output = result.stdout + result.stderr
        assert result.returncode == 0, output[-4000:]
        assert re.search(r"\b3/3 valid listings priced", output), output[-4000:]
        # The evaluator judged them: their price came with the insert.
        accuracy = r"accuracy of \S+ \(champion\)[\s\S]*?over 3\s+listings"  # may wrap
        assert re.search(accuracy, output), output[-4000:]
        assert f"dashboard: http://{settings.host}:{settings.dashboard_port}" in output
        for field in (*PORT_FIELDS, "service_port", "evaluator_metrics_port", "dashboard_port"):
            port = getattr(settings, field)
            assert not processes.port_open(settings.host, port), f"{field} {port} still open"
    finally:
        down(settings, purge=True)


def test_demo_leaves_a_stack_it_found_running(trained_model_tag: str) -> None:
    from streaming_ml.stack import down, status, up

    settings = demo_settings("sml-demo-found-")
    cli = Path(sys.executable).parent / "streaming-ml"
    try:
        up(settings)
        result = subprocess.run(
            [str(cli), "demo", "--no-wait", "--rows", "2"],
            env=settings_env(settings), capture_output=True, text=True, timeout=600, check=False,
        )  # fmt: skip
        output = result.stdout + result.stderr
        assert result.returncode == 0, output[-4000:]
        assert "the stack was already running: it stays up" in output
        assert "stopping the stack" not in output
        assert {name: info["state"] for name, info in status(settings).items()} == {
            name: "running" for name in status(settings)
        }
        # What the demo itself started is gone.
        for field in ("service_port", "bridge_metrics_port", "evaluator_metrics_port"):
            port = getattr(settings, field)
            assert not processes.port_open(settings.host, port), f"{field} {port} still open"
        assert not processes.port_open(settings.host, settings.dashboard_port)
    finally:
        down(settings, purge=True)
