"""A scriptable stand-in for the prediction service, for fault tests of the bridge.

It speaks the service's HTTP contract (``POST /predict_batch``, ``GET /readyz``) and
prices with a fixed formula, so a test knows every expected price exactly. Faults are
switched on by the test: a phase of one status for every call, answers that come too
late or have the wrong length, and records that always fail.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MODEL_TAG = "stub_price:1"


def stub_price(record: Mapping[str, Any]) -> float:
    """The stub's deterministic price for one record."""
    return round(1000.0 + 500.0 * (record["year"] - 2000) - record["mileage"] / 20.0, 2)


@dataclass
class Faults:
    """What the stub does wrong; the test changes these fields while it runs."""

    status: int | None = None  # every /predict_batch call answers this status
    burst_429_every: int = 0  # every Nth call answers 429 (0: never)
    slow_calls: int = 0  # the next N calls answer only after `slow_s`
    slow_s: float = 0.0
    short_answers: int = 0  # the next N answers miss their last item
    poison_model: str | None = None  # any batch holding this model name answers 500
    calls: int = 0
    answered: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Handler(BaseHTTPRequestHandler):
    faults: Faults

    def log_message(self, *_args: Any) -> None:  # keep the test output clean
        pass

    def _answer(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._answer(200 if self.path == "/readyz" else 404, {"ready": True})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        records = json.loads(self.rfile.read(length))["records"]
        f = self.faults
        with f.lock:
            f.calls += 1
            call = f.calls
            status = f.status
            slow = f.slow_calls > 0
            f.slow_calls -= int(slow)
            short = f.short_answers > 0 and len(records) > 1
            f.short_answers -= int(short)
        if self.path != "/predict_batch":
            return self._answer(404, {"error": "not found"})
        if status is not None:
            return self._answer(status, {"error": f"scripted {status}"})
        if f.burst_429_every and call % f.burst_429_every == 0:
            return self._answer(429, {"error": "too many requests"})
        if f.poison_model is not None and any(r["model"] == f.poison_model for r in records):
            return self._answer(500, {"error": "internal error"})
        if slow:
            time.sleep(f.slow_s)
        answer = [{"predicted_price": stub_price(r), "model_tag": MODEL_TAG} for r in records]
        if short:
            answer = answer[:-1]
        with f.lock:
            f.answered += 1
        return self._answer(200, answer)


@contextmanager
def stub_service(host: str = "127.0.0.1") -> Iterator[tuple[str, Faults]]:
    """(base URL, faults) of a stub service on a free port, stopped on exit."""
    faults = Faults()
    handler = type("StubHandler", (_Handler,), {"faults": faults})
    server = ThreadingHTTPServer((host, 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="stub-service", daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{server.server_address[1]}", faults
    finally:
        server.shutdown()
        server.server_close()
