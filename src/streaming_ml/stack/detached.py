"""Detached component processes: start, find again from a pid file, stop.

Each component runs in its own session (so a Ctrl-C in the terminal that ran
``stack up`` does not reach it and ``down`` can signal the whole process group),
writes stdout/stderr to ``<state>/logs/<name>.log`` and is tracked by
``<state>/run/<name>.pid``. The pid file also stores the process start time so a
recycled pid is never mistaken for our process.
"""

from __future__ import annotations

import logging
import os
import pwd
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from streaming_ml.errors import StackError, WaitTimeoutError
from streaming_ml.system import waits
from streaming_ml.system.processes import port_free, reap, start_ticks, stop_group
from streaming_ml.system.waits import Deadline

logger = logging.getLogger(__name__)

# Progress goes to stderr so stdout stays clean for command output (status --json).
console = Console(stderr=True, highlight=False)


@dataclass(frozen=True)
class RunAs:
    """An unprivileged OS user to run a component as (Postgres refuses to run as root;
    the JVMs and Adminer must not run as root either)."""

    uid: int
    gid: int
    name: str = ""


# The OS user Kafka, Connect, the registry and Adminer run as when the stack is started
# by root: a system user of their own, not `postgres` (which owns the database files).
COMPONENT_USER = "streaming-ml"


def component_user() -> RunAs | None:
    """Whom Kafka, Connect, the registry and Adminer run as: COMPONENT_USER (created on
    first use, without a login shell or home) when we are root, else ourselves (None)."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(COMPONENT_USER)
    except KeyError:
        result = subprocess.run(
            [
                "useradd", "--system", "--user-group", "--no-create-home",
                "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", COMPONENT_USER,
            ],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if result.returncode != 0:
            raise StackError(
                f"running as root, but the `{COMPONENT_USER}` OS user to run Kafka, Connect, "
                f"the registry and Adminer as could not be created: {result.stderr.strip()}. "
                f"Create it (`useradd --system --user-group {COMPONENT_USER}`) and rerun."
            ) from None
        entry = pwd.getpwnam(COMPONENT_USER)
    return RunAs(entry.pw_uid, entry.pw_gid, COMPONENT_USER)


def check_traversable(path: Path, run_as: RunAs, component: str) -> None:
    """``run_as`` must be able to reach ``path`` through every parent."""
    for parent in [path, *path.parents]:
        st = parent.stat()
        if st.st_uid == run_as.uid:
            continue
        allowed = st.st_mode & 0o001 or (st.st_gid == run_as.gid and st.st_mode & 0o010)
        if not allowed:
            raise StackError(
                f"{component}: the `{run_as.name}` OS user cannot enter {parent} (mode "
                f"{oct(st.st_mode & 0o777)}). Run `chmod o+x {parent}` or use a state dir "
                "(SML_STATE_DIR) under a world-traversable directory."
            )


def own_tree(path: Path, run_as: RunAs) -> None:
    """Give ``path`` (created if missing) and everything under it to ``run_as``: symlinks
    themselves, not their targets. Also repairs a state dir written by an older version
    that ran everything as root."""
    path.mkdir(parents=True, exist_ok=True)
    os.chown(path, run_as.uid, run_as.gid)
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            os.chown(os.path.join(root, name), run_as.uid, run_as.gid, follow_symlinks=False)


def log_path(state_dir: Path, name: str) -> Path:
    return state_dir / "logs" / f"{name}.log"


def pid_path(state_dir: Path, name: str) -> Path:
    return state_dir / "run" / f"{name}.pid"


def running_pid(state_dir: Path, name: str) -> int | None:
    """Pid of the component when its recorded process is still alive, else None."""
    path = pid_path(state_dir, name)
    try:
        pid_text, ticks = path.read_text().split()
        pid = int(pid_text)
    except (OSError, ValueError):
        return None
    reap(pid)
    if start_ticks(pid) != ticks:
        return None
    return pid


def start(
    name: str,
    argv: Sequence[str],
    *,
    state_dir: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    run_as: RunAs | None = None,
) -> int:
    """Start ``argv`` detached, record its pid, return it."""
    log = log_path(state_dir, name)
    log.parent.mkdir(parents=True, exist_ok=True)
    pid_path(state_dir, name).parent.mkdir(parents=True, exist_ok=True)
    full_env = {**os.environ, **(env or {})}
    with log.open("ab") as out:
        out.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting {name}\n".encode())
        out.flush()
        try:
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env=full_env,
                start_new_session=True,
                user=run_as.uid if run_as else None,
                group=run_as.gid if run_as else None,
                extra_groups=[] if run_as else None,
                close_fds=True,
            )
        except OSError as error:
            raise StackError(
                f"{name}: cannot run {argv[0]}: {error}. Run `streaming-ml stack install`."
            ) from error
    ticks = start_ticks(proc.pid) or "0"
    pid_path(state_dir, name).write_text(f"{proc.pid} {ticks}\n")
    logger.debug("started", extra={"component": name, "pid": proc.pid, "log": str(log)})
    return proc.pid


def stop(state_dir: Path, name: str, *, timeout: float = 20.0, sig: int = signal.SIGTERM) -> bool:
    """Stop the component's process group: ``sig``, wait up to ``timeout``, then SIGKILL.

    Returns True when something was running.
    """
    pid = running_pid(state_dir, name)
    if pid is None:
        pid_path(state_dir, name).unlink(missing_ok=True)
        return False
    # The component is a session leader, so its pid is also its process group id.
    if not stop_group(pid, timeout=timeout, sig=signal.Signals(sig)):
        logger.warning("did not stop in time, killed", extra={"component": name, "pid": pid})
    reap(pid)
    pid_path(state_dir, name).unlink(missing_ok=True)
    logger.debug("stopped", extra={"component": name, "pid": pid})
    return True


def require_free_port(component: str, host: str, port: int, setting: str) -> None:
    if not port_free(host, port):
        raise StackError(
            f"{component}: port {host}:{port} is already in use by another program. "
            f"Stop that program or choose another port with {setting}=<port>."
        )


def wait_until(
    component: str,
    what: str,
    check: Callable[[], bool],
    *,
    timeout: float,
    pid: int | None = None,
    log: Path | None = None,
    interval: float = 0.25,
) -> float:
    """Poll ``check`` until it returns True; raise StackError after ``timeout`` seconds
    or as soon as the component's process has exited. Returns the seconds waited."""
    started = time.monotonic()
    message = f"[bold]{component}[/]: waiting for {what} (up to {timeout:.0f}s)"
    # A spinner is invisible in CI logs; there, print a line now and every 10 s instead.
    plain = not console.is_terminal
    if plain:
        console.print(message)
    next_note = 10.0

    def probe() -> bool:
        try:
            if check():
                return True
        except Exception as error:  # a health probe failing is the normal "not yet"
            logger.debug("probe failed", extra={"component": component, "error": str(error)})
        if pid is not None:
            reap(pid)
            if start_ticks(pid) is None:
                raise StackError(
                    f"{component} exited while starting ({what} never became ready). "
                    f"{_log_hint(log)}"
                )
        return False

    with console.status(message) as status:

        def show(_: bool, deadline: Deadline) -> None:
            nonlocal next_note
            waited = deadline.elapsed()
            progress = f"[bold]{component}[/]: waiting for {what} ({waited:.0f}s of {timeout:.0f}s)"
            status.update(progress)
            if plain and waited >= next_note:
                console.print(progress)
                next_note = waited + 10

        try:
            waits.wait_until(
                probe, timeout=timeout, interval=interval, on_wait=show,
                what=f"{component}: {what}",
            )  # fmt: skip
        except WaitTimeoutError:
            raise StackError(
                f"{component}: {what} not ready after {timeout:.0f}s. {_log_hint(log)}"
            ) from None
    return time.monotonic() - started


def _log_hint(log: Path | None) -> str:
    if log is None:
        return ""
    tail = tail_lines(log, 8)
    hint = f"See {log} (`streaming-ml stack logs`)."
    return f"{hint}\nLast log lines:\n{tail}" if tail else hint


def tail_lines(path: Path, lines: int) -> str:
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 64 * 1024))
            data = handle.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-lines:])
