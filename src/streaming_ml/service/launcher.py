"""Starting, finding and stopping the BentoML service as a child process group."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

from streaming_ml.config import REPO_ROOT, Settings, settings_env
from streaming_ml.errors import (
    ModelNotFoundError,
    RegistryError,
    ServiceUnavailableError,
    WaitTimeoutError,
)
from streaming_ml.models.registry import read_aliases
from streaming_ml.models.store import check_servable, get_bento_model
from streaming_ml.system.processes import descendants, port_free, stop_group
from streaming_ml.system.waits import Deadline, wait_until

logger = logging.getLogger(__name__)


SERVICE_TARGET = "service:PricePredictor"


class ServiceProcess:
    """``bentoml serve service:PricePredictor`` as a child process on one port.

    Use as a context manager: entering starts the service and waits until
    ``/readyz`` answers; leaving stops the server and its workers (SIGTERM,
    then SIGKILL), so no BentoML process outlives it. ``model_tag`` names the model
    (``name:version``): pinned without ``settings``; with them, the service follows the
    registry of that stack and ``model_tag`` is its fallback and first champion (see
    ``streaming_ml.lineup``). ``bentoml_home`` selects the model store; ``log_path``
    receives the service's output (None: inherit this terminal). If the
    starting process dies without stopping it, the service gets SIGTERM too
    (Linux), so start it from a thread that lives as long as it should.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 3000,
        model_tag: str = "ford_price:latest",
        bentoml_home: Path | None = None,
        log_path: Path | None = None,
        startup_timeout_s: float = 120.0,
        repo_root: Path = REPO_ROOT,
        settings: Settings | None = None,
    ) -> None:
        self.settings = settings
        self.host = host
        self.port = port
        self.model_tag = model_tag
        self.bentoml_home = bentoml_home
        self.log_path = log_path
        self.startup_timeout_s = startup_timeout_s
        self.repo_root = repo_root
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        """Process id of the running service (also its process group id)."""
        return self._process.pid if self._process is not None else None

    def _environment(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.settings is not None:
            # Same stack, same registry: the service follows the champion (SML_MODEL_FOLLOW).
            env.update(settings_env(self.settings))
        else:
            env["SML_MODEL_FOLLOW"] = "false"
        name, _, version = self.model_tag.partition(":")
        env.update(SML_MODEL_NAME=name, SML_MODEL_VERSION=version or "latest")
        env.setdefault("BENTOML_DO_NOT_TRACK", "true")
        if self.bentoml_home is not None:
            env["BENTOML_HOME"] = str(self.bentoml_home)
        return env

    def start(self) -> str:
        """Start the service and wait until it is ready; return its base URL."""
        if self._process is not None:
            return self.url
        if not port_free(self.host, self.port):
            raise ServiceUnavailableError(
                f"port {self.port} on {self.host} is already in use; stop whatever listens "
                "there (an earlier `streaming-ml serve`?) or choose another port"
            )
        command = [sys.executable, "-m", "bentoml", "serve", SERVICE_TARGET]
        command += ["--host", self.host, "--port", str(self.port)]
        output = None
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            output = self.log_path.open("ab")
        logger.info(
            "starting prediction service",
            extra={"url": self.url, "model": self.model_tag, "log": str(self.log_path)},
        )
        try:
            # A new session makes the service and its workers one process group.
            self._process = subprocess.Popen(
                command,
                cwd=self.repo_root,
                env=self._environment(),
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT if output else None,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        finally:
            if output is not None:
                output.close()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self.url

    def wait_ready(self) -> None:
        """Poll ``/readyz`` until it answers 200, the process dies, or the deadline."""
        assert self._process is not None, "start() first"
        process = self._process
        ready_url = f"{self.url}/readyz"
        next_report = 5.0

        def log_progress(_: bool, deadline: Deadline) -> None:
            nonlocal next_report
            if (elapsed := deadline.elapsed()) >= next_report:
                logger.info(
                    "waiting for prediction service",
                    extra={
                        "url": ready_url,
                        "elapsed_s": round(elapsed, 1),
                        "timeout_s": self.startup_timeout_s,
                    },
                )
                next_report = elapsed + 5.0

        with requests.Session() as session:

            def ready() -> bool:
                code = process.poll()
                if code is not None:
                    raise self._startup_failure(code)
                try:
                    # BentoML's arbiter listens before the worker accepts: a request
                    # sent then waits in the backlog, so a longer read timeout
                    # answers as soon as the worker is up instead of retrying blind.
                    return session.get(ready_url, timeout=(1.0, 3.0)).status_code == 200
                except requests.RequestException:
                    return False  # not listening yet

            started = time.monotonic()
            try:
                wait_until(
                    ready, timeout=self.startup_timeout_s, interval=0.2, on_wait=log_progress,
                    what=f"prediction service at {self.url} ready",
                )  # fmt: skip
            except WaitTimeoutError:
                raise ServiceUnavailableError(
                    f"prediction service at {self.url} not ready after "
                    f"{self.startup_timeout_s:.0f}s; check its log.{self._log_excerpt()}"
                ) from None
        logger.info(
            "prediction service ready",
            extra={"url": self.url, "elapsed_s": round(time.monotonic() - started, 1)},
        )

    def _startup_failure(self, code: int) -> ServiceUnavailableError:
        hint = "see its log"
        if re.search(r"not (be )?found", self.log_tail(200), re.IGNORECASE):
            hint = "the model is not in the store: run `streaming-ml train` or pass a stored tag"
        return ServiceUnavailableError(
            f"prediction service exited with code {code} while starting model "
            f"{self.model_tag}; {hint}.{self._log_excerpt()}"
        )

    def log_tail(self, lines: int = 30) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def _log_excerpt(self) -> str:
        tail = self.log_tail()
        if tail:
            return f"\nlast lines of {self.log_path}:\n{tail}"
        return " Its output is above." if self.log_path is None else ""

    def wait(self) -> int:
        """Block until the service exits; return its exit code."""
        assert self._process is not None, "start() first"
        return self._process.wait()

    def processes(self) -> list[int]:
        """Pids of the service: the BentoML arbiter first, then its workers."""
        if self._process is None:
            return []
        return [self._process.pid, *descendants(self._process.pid)]

    def stop(self, timeout_s: float = 15.0) -> None:
        """SIGTERM the service, SIGKILL whatever of it is left after ``timeout_s``."""
        if self._process is None:
            return
        # BentoML's workers run in sessions of their own, out of reach of a group
        # signal: remember them now, while they are still the arbiter's children.
        workers = descendants(self._process.pid)
        process, self._process = self._process, None
        # The session leader's pid is also the group id.
        if not stop_group(process.pid, timeout=timeout_s, stragglers=workers):
            logger.warning(
                "prediction service ignored SIGTERM; killed it", extra={"pid": process.pid}
            )
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=5.0)  # collect the exit status, if not reaped already
        logger.info("prediction service stopped", extra={"url": self.url})

    def __enter__(self) -> ServiceProcess:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM if the parent dies without stopping us.

    The service runs in its own session (so it can be stopped as a group), which
    also shields it from the parent's Ctrl-C; this keeps a crashed or SIGKILLed
    parent from leaving an orphaned service on its port. Linux only.
    """
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def serve_forever(
    host: str,
    port: int,
    model_tag: str,
    bentoml_home: Path | None = None,
    settings: Settings | None = None,
) -> int:
    """Run the service in the foreground until it exits, Ctrl-C or SIGTERM; return its code."""

    def _terminate(signum: int, frame: object) -> None:
        raise SystemExit(0)  # unwinds through ``with service``, which stops the workers

    if bentoml_home is None:
        # Same model store as the child: fail now with the `streaming-ml train` hint
        # rather than after BentoML's traceback scrolls past. A following service may
        # start with an empty store when the registry has a champion to import.

        try:
            check_servable(get_bento_model(model_tag))
        except ModelNotFoundError:
            if settings is None or not settings.model_follow:
                raise

            try:
                champion = read_aliases(settings, timeout_s=10).champion
            except RegistryError:
                champion = None
            if champion is None:
                raise
    service = ServiceProcess(
        host=host, port=port, model_tag=model_tag, bentoml_home=bentoml_home, settings=settings
    )
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        with service:
            logger.info("serving until Ctrl-C", extra={"url": service.url, "model": model_tag})
            return service.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)
