"""Operating-system process and port checks shared by every launcher (Linux, /proc).

The stack's components and the prediction service both run as process groups of
their own; stopping them cleanly needs the same few facts: is a process (or any
member of a group) still running rather than a zombie, which processes hang below
a pid, and is a port free.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import socket
import time
from collections.abc import Callable, Sequence
from pathlib import Path

logger = logging.getLogger(__name__)

_PROC = Path("/proc")


def _stat_fields(stat: str) -> list[str]:
    # The command name (field 2) may contain spaces and parentheses; what follows
    # the last ")" is plain: state, ppid, pgrp, ... (field 3 onwards).
    return stat[stat.rindex(")") + 2 :].split()


def _all_stats() -> list[tuple[int, list[str]]]:
    found = []
    for entry in _PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            found.append((int(entry.name), _stat_fields((entry / "stat").read_text())))
        except OSError:
            continue  # exited while we looked
    return found


def start_ticks(pid: int) -> str | None:
    """Kernel start time of ``pid`` (field 22 of its stat), None when gone or a zombie.

    Stored next to a pid, it tells our process from a later one that reused the pid.
    """
    try:
        fields = _stat_fields((_PROC / str(pid) / "stat").read_text())
    except OSError:
        return None
    if fields[0] in ("Z", "X"):
        return None
    return fields[19]


def reap(pid: int) -> None:
    """Collect the exit status when ``pid`` is our own child, so it does not linger as
    a zombie (tests start components in-process)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def is_running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    return start_ticks(pid) is not None


def group_running(pgid: int) -> bool:
    """True while any member of process group ``pgid`` runs (zombies of ours are reaped)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # killpg(0) also succeeds while only zombies are left; look at each member.
    running = False
    for pid, fields in _all_stats():
        if int(fields[2]) != pgid:
            continue
        if fields[0] in ("Z", "X"):
            reap(pid)
        else:
            running = True
    return running


def signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def descendants(root: int) -> list[int]:
    """Every live process below ``root``, children before grandchildren."""
    children: dict[int, list[int]] = {}
    for pid, fields in _all_stats():
        children.setdefault(int(fields[1]), []).append(pid)
    found: list[int] = []
    pending = [root]
    while pending:
        for child in children.get(pending.pop(0), []):
            found.append(child)
            pending.append(child)
    return found


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def port_free(host: str, port: int) -> bool:
    """True when we could listen on host:port right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as error:
            if error.errno in (errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL):
                return False
            raise
    return True


def stop_group(
    pgid: int,
    *,
    timeout: float,
    stragglers: Sequence[int] = (),
    sig: signal.Signals = signal.SIGTERM,
) -> bool:
    """Send ``sig`` to process group ``pgid`` and wait up to ``timeout`` for it (and the
    ``stragglers``, processes that left the group) to end; then SIGKILL what is left.

    Returns True when everything ended within ``timeout``, False when it had to be killed.
    """

    def anything_running() -> bool:
        reap(pgid)  # the group leader may be our own child
        return group_running(pgid) or any(is_running(pid) for pid in stragglers)

    signal_group(pgid, sig)
    deadline = time.monotonic() + timeout
    while anything_running():
        if time.monotonic() >= deadline:
            break
        time.sleep(0.1)
    else:
        return True
    signal_group(pgid, signal.SIGKILL)
    for pid in stragglers:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    kill_deadline = time.monotonic() + 5.0
    while anything_running() and time.monotonic() < kill_deadline:
        time.sleep(0.05)
    return False


def stop_on_signals(stop: Callable[[], None], doing: str) -> None:
    """SIGTERM and SIGINT call ``stop`` (a loop's graceful stop) instead of killing the
    process; ``doing`` says what the process finishes first, for the log."""

    def handle(signum: int, _frame: object) -> None:
        logger.info("signal received: %s", doing, extra={"signal": signum})
        stop()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
