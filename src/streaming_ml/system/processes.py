"""Operating-system process and port checks shared by every launcher (psutil).

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
from collections.abc import Callable, Sequence

import psutil

from streaming_ml.errors import WaitTimeoutError
from streaming_ml.system.waits import wait_until

logger = logging.getLogger(__name__)

_GONE = frozenset({psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD})
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def start_ticks(pid: int) -> str | None:
    """Kernel start time of ``pid`` in clock ticks since boot, None when gone or a zombie.

    Stored next to a pid, it tells our process from a later one that reused the pid.
    Ticks since boot, not psutil's epoch ``create_time``: that one moves when the wall
    clock is set, and the pid files written before must still match.
    """
    try:
        process = psutil.Process(pid)
        with process.oneshot():
            if process.status() in _GONE:
                return None
            created = process.create_time()
    except psutil.Error:
        return None
    return str(round((created - psutil.boot_time()) * _CLOCK_TICKS))


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
    for process in psutil.process_iter(["status"]):
        try:
            if os.getpgid(process.pid) != pgid:
                continue
        except OSError:
            continue  # exited while we looked
        if process.info["status"] in _GONE:
            reap(process.pid)
        else:
            running = True
    return running


def signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def descendants(root: int) -> list[int]:
    """Every live process below ``root``, children before grandchildren."""
    children: dict[int, list[int]] = {}
    for process in psutil.process_iter(["ppid"]):
        children.setdefault(process.info["ppid"], []).append(process.pid)
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


def free_port(host: str) -> int:
    """A port nothing listens on now (the kernel's pick), for a listener started next."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def free_ports(host: str, count: int) -> list[int]:
    """``count`` different ports nothing listens on now."""
    ports: list[int] = []
    while len(ports) < count:
        port = free_port(host)
        if port not in ports:
            ports.append(port)
    return ports


def free_port_run(host: str, count: int, attempts: int = 200) -> int:
    """The first of ``count`` consecutive free ports (Kafka node k listens two ports above
    node k-1)."""
    for _ in range(attempts):
        first = free_port(host)
        if first + count <= 65536 and all(port_free(host, first + i) for i in range(count)):
            return first
    raise OSError(f"no {count} consecutive free ports on {host} found in {attempts} tries")


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

    def all_ended() -> bool:
        return not anything_running()

    signal_group(pgid, sig)
    with contextlib.suppress(WaitTimeoutError):
        wait_until(all_ended, timeout=timeout, interval=0.1, what=f"process group {pgid} ending")
        return True
    signal_group(pgid, signal.SIGKILL)
    for pid in stragglers:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(WaitTimeoutError):
        wait_until(all_ended, timeout=5.0, interval=0.05, what=f"process group {pgid} killed")
    return False


def stop_on_signals(stop: Callable[[], None], doing: str) -> None:
    """SIGTERM and SIGINT call ``stop`` (a loop's graceful stop) instead of killing the
    process; ``doing`` says what the process finishes first, for the log."""

    def handle(signum: int, _frame: object) -> None:
        logger.info("signal received: %s", doing, extra={"signal": signum})
        stop()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
