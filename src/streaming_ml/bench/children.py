"""Child processes the bench runs: the bridge (in its own consumer group) and the
load generator's summary line, with the settings passed on as ``SML_*`` variables."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from rich.console import Console

from streaming_ml.bench.kafka import _consumer, group_ready, high_watermarks
from streaming_ml.bench.progress import Waiting
from streaming_ml.config import Settings
from streaming_ml.errors import BenchError
from streaming_ml.kafka import clients
from streaming_ml.system import processes

logger = logging.getLogger(__name__)


_LOAD_LINE = re.compile(
    r"inserted (?P<n>\d+) listings \(ids (?P<first>\d+)\.\.(?P<last>\d+)\) "
    r"in (?P<seconds>[\d.]+) s"
)


@dataclass(frozen=True)
class LoadReport:
    inserted: int
    first_id: int
    last_id: int
    seconds: float

    @property
    def rows_per_s(self) -> float:
        return self.inserted / self.seconds if self.seconds > 0 else float("inf")


def parse_load_output(text: str) -> LoadReport:
    """Read ``streaming-ml load``'s summary line."""
    match = _LOAD_LINE.search(text)
    if match is None:
        raise BenchError(
            f"cannot read the load generator's summary from its output {text.strip()[-300:]!r}; "
            "run `streaming-ml load --rows 10` by hand to see what it prints"
        )
    return LoadReport(
        inserted=int(match["n"]),
        first_id=int(match["first"]),
        last_id=int(match["last"]),
        seconds=float(match["seconds"]),
    )


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "streaming_ml.cli", *args]


class BridgeProcess:
    """``streaming-ml bridge`` as a child process in the consumer group ``group``;
    ``name`` (default: the group) names its log files, so replicas of one group
    each get their own; ``max_events`` makes it exit after that many events."""

    def __init__(
        self, settings: Settings, env: Mapping[str, str], group: str, log_dir: Path,
        once: bool = False, name: str | None = None, max_events: int | None = None,
    ) -> None:  # fmt: skip
        self.settings = settings
        self.env = dict(env)
        self.group = group
        self.once = once
        self.max_events = max_events
        self.log_path = log_dir / f"bench-bridge-{name or group}.log"
        self.out_path = log_dir / f"bench-bridge-{name or group}.out"
        self.metrics_port = processes.free_port(settings.host)
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        args = ["bridge", "--group", self.group, "--json"]
        args += ["--metrics-port", str(self.metrics_port)]
        if self.once:
            args.append("--once")
        if self.max_events is not None:
            args += ["--max-events", str(self.max_events)]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log, self.out_path.open("wb") as out:
            self._process = subprocess.Popen(
                _cli(*args), env=self.env, stdin=subprocess.DEVNULL, stdout=out, stderr=log,
                start_new_session=True,
            )  # fmt: skip
        logger.info("bench bridge started", extra={"group": self.group, "log": str(self.log_path)})

    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def failure(self, what: str) -> BenchError:
        code = self._process.poll() if self._process else None
        tail = self.log_path.read_text(errors="replace").splitlines()[-15:]
        return BenchError(
            f"the bench's bridge {what} (exit code {code}); last lines of {self.log_path}:\n"
            + "\n".join(tail)
        )

    def wait_ready(self, console: Console, timeout_s: float = 120.0) -> float:
        """Until the bridge serves metrics (set up) and, when the change topic exists,
        its consumer group is stable (partitions assigned). Before the first captured
        row there is no topic and so no assignment to wait for."""
        s = self.settings
        admin = clients.admin(s, {"log_level": 3})
        metrics = f"http://{s.host}:{self.metrics_port}/metrics"
        with Waiting(console, f"bridge joining consumer group {self.group}", timeout_s) as wait:
            while True:
                if not self.alive():
                    raise self.failure("exited while starting")
                if _http_ok(metrics, 1.0):
                    if group_ready(admin, self.group):
                        break
                    consumer = _consumer(s)
                    try:
                        topic_missing = high_watermarks(consumer, s.listings_topic) is None
                    finally:
                        consumer.close()
                    if topic_missing:
                        break
                    wait.update("set up; waiting for its partitions to be assigned")
                else:
                    wait.update("waiting for the bridge to set up")
                if wait.expired():
                    raise self.failure(f"did not join its consumer group in {timeout_s:.0f}s")
                wait.sleep(0.25)
            return wait.elapsed

    def exit_code(self) -> int | None:
        """The exit code, or None while it runs."""
        assert self._process is not None
        return self._process.poll()

    def summary(self) -> dict[str, Any]:
        """The summary line an exited ``--once`` bridge printed."""
        text = self.out_path.read_text().strip().splitlines()
        self.out_path.unlink(missing_ok=True)
        try:
            return dict(json.loads(text[-1])) if text else {}
        except json.JSONDecodeError:
            return {"output": text[-1]}

    def stop(self, timeout_s: float = 30.0) -> None:
        process, self._process = self._process, None
        if not self.once:
            self.out_path.unlink(missing_ok=True)  # a long-running bridge prints only at exit
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            logger.warning("bench bridge ignored SIGTERM; killing it", extra={"pid": process.pid})
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def wait_all_exit(
    bridges: Sequence[BridgeProcess], console: Console, timeout_s: float, what: str
) -> list[dict[str, Any]]:
    """Wait for every ``--once`` bridge of ``bridges`` (started) to drain and exit; return
    their summary lines in order. The first one that fails fails the wait."""
    with Waiting(console, what, timeout_s) as wait:
        while True:
            running = []
            for bridge in bridges:
                code = bridge.exit_code()
                if code is None:
                    running.append(bridge)
                elif code != 0:
                    raise bridge.failure("failed")
            if not running:
                break
            if wait.expired():
                raise running[0].failure(f"did not finish draining in {timeout_s:.0f}s")
            if len(bridges) == 1:
                wait.update("bridge draining the topic")
            else:
                wait.update(f"{len(running)} of {len(bridges)} bridges still draining the topic")
            wait.sleep(0.25)
    return [bridge.summary() for bridge in bridges]


def _http_ok(url: str, timeout_s: float = 2.0) -> bool:
    try:
        return requests.get(url, timeout=timeout_s).status_code == 200
    except requests.RequestException:
        return False
