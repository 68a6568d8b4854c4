"""Where the machine's CPU went during a run, by pipeline component.

A thread samples every process's CPU time (psutil) while a run inserts and drains; each
process is put in a component by its command line (Postgres, Kafka, Connect, the
registry, the service, bridges, the load generator, the bench itself). A process seen
first during the run counts from zero, one gone before the end counts up to its last
sample, so a short-lived load generator is counted too (to within one interval).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping
from typing import Any

import psutil

COMPONENTS = (
    "postgres", "kafka", "connect", "registry", "service", "bridge", "load_generator",
    "bench", "other",
)  # fmt: skip


def component_of(process: psutil.Process, bench_pid: int) -> str:
    """The pipeline component a process belongs to, from its name and command line."""
    if process.pid == bench_pid:
        return "bench"
    try:
        name = process.name()
        command = " ".join(process.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return "other"
    if name.startswith("postgres") or "bin/postgres" in command:
        return "postgres"
    if "java" in name:
        if "ConnectDistributed" in command:
            return "connect"
        if "kafka.Kafka" in command:
            return "kafka"
        if "apicurio" in command:
            return "registry"
        return "other"
    if "bentoml" in command or "_bentoml_impl" in command:
        return "service"
    if "streaming_ml" in command or "streaming-ml" in command:
        if " bridge" in command:
            return "bridge"
        if " load" in command:
            return "load_generator"
    return "other"


class CpuSampler:
    """A context manager: CPU seconds per component between enter and exit."""

    def __init__(self, interval_s: float = 0.5) -> None:
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-cpu", daemon=True)
        self._first: dict[int, float] = {}
        self._last: dict[int, float] = {}
        self._component: dict[int, str] = {}
        self._bench_pid = os.getpid()
        self._began = 0.0
        self._ended = 0.0
        self._machine_first: Any = None
        self._machine_last: Any = None

    def __enter__(self) -> CpuSampler:
        self._began = time.monotonic()
        self._machine_first = psutil.cpu_times()
        self._sample(first=True)
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._sample()
        self._machine_last = psutil.cpu_times()
        self._ended = time.monotonic()

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            self._sample()

    def _sample(self, first: bool = False) -> None:
        for process in psutil.process_iter():
            try:
                times = process.cpu_times()
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            used = times.user + times.system
            pid = process.pid
            if pid not in self._component:
                self._component[pid] = component_of(process, self._bench_pid)
                # Seen at the start: count from here; started during the run: from zero.
                self._first[pid] = used if first else 0.0
            self._last[pid] = used

    def summary(self) -> dict[str, Any]:
        """Cores used on average per component (1.0 = one core busy all the time), the
        machine's busy share of all its cores, and the wall time covered."""
        wall = max(self._ended - self._began, 1e-9)
        seconds = dict.fromkeys(COMPONENTS, 0.0)
        for pid, component in self._component.items():
            seconds[component] += max(0.0, self._last[pid] - self._first[pid])
        busy = None
        if self._machine_first is not None and self._machine_last is not None:
            total = sum(self._machine_last) - sum(self._machine_first)
            idle = (self._machine_last.idle + getattr(self._machine_last, "iowait", 0.0)) - (
                self._machine_first.idle + getattr(self._machine_first, "iowait", 0.0)
            )
            busy = round(1 - idle / total, 3) if total > 0 else None
        return {
            "wall_s": round(wall, 2),
            "cores": psutil.cpu_count(),
            "machine_busy_share": busy,
            "cores_by_component": {
                name: round(value / wall, 2) for name, value in seconds.items() if value > 0
            },
        }


def cpu_note(summary: Mapping[str, Any]) -> str:
    """One line: how busy the machine was and the components that used the most."""
    by = sorted(summary["cores_by_component"].items(), key=lambda item: -item[1])
    top = ", ".join(f"{name} {cores:.2f}" for name, cores in by[:4])
    busy = summary.get("machine_busy_share")
    share = f"{busy:.0%} of {summary['cores']} cores busy" if busy is not None else "CPU"
    return f"{share}; cores used: {top}"
