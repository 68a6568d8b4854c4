"""Process facts the launchers rely on: a pid's identity, zombies as gone, the tree below
a pid, and a group's members."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from streaming_ml.system import processes
from streaming_ml.system.waits import wait_until

SLEEP = [sys.executable, "-c", "import time; time.sleep(60)"]


def _stat_ticks(pid: int) -> str:
    # Field 22 of /proc/<pid>/stat, read by hand: what the pid files recorded before.
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2 :].split()[19]


def test_start_ticks_are_the_kernels_and_tell_processes_apart() -> None:
    child = subprocess.Popen(SLEEP)
    try:
        ticks = processes.start_ticks(child.pid)
        assert ticks == _stat_ticks(child.pid)
        assert processes.start_ticks(child.pid) == ticks  # stable over calls
        assert processes.start_ticks(os.getpid()) == _stat_ticks(os.getpid())
        assert processes.is_running(child.pid)
    finally:
        child.kill()
        child.wait()
    assert processes.start_ticks(child.pid) is None
    assert not processes.is_running(child.pid)


def test_a_zombie_is_not_running_and_its_group_ends_once_reaped() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"], start_new_session=True)
    # Not waited for: it stays a zombie of ours until reaped.
    wait_until(lambda: processes.start_ticks(child.pid) is None, timeout=10, interval=0.05,
               what="the child exiting")  # fmt: skip
    assert Path(f"/proc/{child.pid}").exists()  # still in the table, as a zombie
    assert not processes.group_running(child.pid)  # and reaped on the way
    assert not Path(f"/proc/{child.pid}").exists()
    child.returncode = 0  # reaped above; Popen would not find it


def test_descendants_lists_children_before_grandchildren() -> None:
    script = (
        "import subprocess, sys, time\n"
        f"child = subprocess.Popen({SLEEP!r})\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, start_new_session=True
    )
    try:
        assert parent.stdout is not None
        grandchild = int(parent.stdout.readline())
        assert processes.group_running(parent.pid)
        below = processes.descendants(os.getpid())
        assert below.index(parent.pid) < below.index(grandchild)
        assert processes.descendants(parent.pid) == [grandchild]
    finally:
        assert processes.stop_group(parent.pid, timeout=10)
        parent.wait()
    assert not processes.group_running(parent.pid)
    assert not processes.is_running(grandchild)
