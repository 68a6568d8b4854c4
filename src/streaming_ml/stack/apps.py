"""The application's processes that ``streaming-ml run`` starts: the service, the bridges,
the evaluator, the dashboard, the connector watchdog and the learner.

Each is a ``streaming-ml`` command run detached like a stack component, with a pid file
and a log under the state dir, so ``stack status`` and ``stack logs`` show them beside the
stack. Settings reach them through the environment (never argv: it is world-readable in
/proc), and only the processes a ``run`` started are ever stopped by it.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import requests

from streaming_ml.config import Settings, settings_env
from streaming_ml.errors import StackError
from streaming_ml.stack import detached

# Application processes have these names; stack components never do.
APP_NAME = re.compile(r"^(service|bridge-[0-9]+|evaluator|dashboard|watchdog|learner)$")
STOP_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class AppProcess:
    name: str
    command: tuple[str, ...]  # a streaming-ml command and its options
    env: Mapping[str, str] = field(default_factory=dict)  # SML_* on top of the settings
    ready_url: str | None = None  # answers 200 once the process serves
    timeout_s: float = 120.0


def cli_argv(command: Sequence[str]) -> list[str]:
    return [sys.executable, "-m", "streaming_ml.cli", *command]


def recorded(state_dir: Path) -> list[str]:
    """Application processes with a pid file, running or not (a dead one is "down")."""
    run_dir = state_dir / "run"
    if not run_dir.is_dir():
        return []
    return sorted(p.stem for p in run_dir.glob("*.pid") if APP_NAME.match(p.stem))


def already_running(state_dir: Path, names: Sequence[str]) -> dict[str, int]:
    found = {name: detached.running_pid(state_dir, name) for name in names}
    return {name: pid for name, pid in found.items() if pid is not None}


def start(settings: Settings, process: AppProcess) -> int:
    """Start ``process`` detached with the settings in its environment; returns its pid."""
    if not APP_NAME.match(process.name):
        raise StackError(f"{process.name!r} is not an application process name")
    env = {**settings_env(settings), **process.env}
    return detached.start(
        process.name, cli_argv(process.command), state_dir=settings.state_dir, env=env
    )


def wait_ready(settings: Settings, process: AppProcess, pid: int) -> float:
    """Until ``process.ready_url`` answers 200 (at once without one), failing early with
    the log's tail if the process dies. Returns the seconds waited."""
    url = process.ready_url
    if url is None:
        return 0.0
    return detached.wait_until(
        process.name, url, lambda: requests.get(url, timeout=2).status_code == 200,
        timeout=process.timeout_s, pid=pid,
        log=detached.log_path(settings.state_dir, process.name),
    )  # fmt: skip


def stop(state_dir: Path, name: str) -> bool:
    """SIGTERM its process group (SIGKILL after a while); True if it was running."""
    return detached.stop(state_dir, name, timeout=STOP_TIMEOUT_S)


def status(state_dir: Path) -> dict[str, dict[str, object]]:
    """Each recorded application process: running or stopped, pid, log."""
    result: dict[str, dict[str, object]] = {}
    for name in recorded(state_dir):
        pid = detached.running_pid(state_dir, name)
        result[name] = {
            "state": "running" if pid else "stopped",
            "pid": pid,
            "log": str(detached.log_path(state_dir, name)),
        }
    return result
