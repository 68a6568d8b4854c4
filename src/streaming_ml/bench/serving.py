"""The serving run: ``/predict`` latency and requests/s, through a keep-alive HTTP client."""

from __future__ import annotations

import contextlib
import http.client
import json
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlparse

from rich.console import Console

from streaming_ml.bench.options import BenchOptions
from streaming_ml.bench.progress import Waiting
from streaming_ml.bench.stats import summarize
from streaming_ml.config import Settings
from streaming_ml.datasets.synthetic import generate_listing_records, generate_listings
from streaming_ml.errors import BenchError
from streaming_ml.schema.listing import FEATURES
from streaming_ml.system.waits import Deadline


def serving_run(
    settings: Settings, options: BenchOptions, console: Console, next_seed: Callable[[], int]
) -> dict[str, Any]:
    """/predict latency for 1 and 1,000 rows, /predict_batch for 500 records (and, with
    ``run_explain``, the same 500 records with explanations), and requests/s with
    concurrent clients; ``next_seed`` gives each body its rows' seed."""
    o = options
    console.rule("[bold]serving run: /predict")
    url = settings.prediction_url.rstrip("/")
    one = _body(_columns(1, next_seed()), 1)
    thousand = _body(_columns(1_000, next_seed()), 1_000)
    records = _records(500, next_seed())
    batch = _body({"records": records}, 500)
    result: dict[str, Any] = {
        "url": url,
        "client": "http.client keep-alive, bodies pre-encoded (measures the service, "
        "not a client library)",
    }
    with contextlib.closing(HttpClient(url)) as client:
        for body in (one, thousand, batch):  # warm up the connection and the model
            for _ in range(3):
                client.post("/predict_batch" if body is batch else "/predict", *body)
        result["predict_one_row_ms"] = _timed_requests(
            console, client, "/predict", one, o.one_row_requests, "/predict, 1 row"
        )
        result["predict_1000_rows_ms"] = _timed_requests(
            console, client, "/predict", thousand, o.thousand_row_requests, "/predict, 1000 rows"
        )
        result["predict_batch_500_records_ms"] = _timed_requests(
            console, client, "/predict_batch", batch, o.thousand_row_requests,
            "/predict_batch, 500 records",
        )  # fmt: skip
        if o.run_explain:
            explained = _body({"records": records, "explain": True}, 500)
            client.post("/predict_batch", *explained)  # warm-up: its first DMatrix, threads
            result["predict_batch_500_records_explained_ms"] = _timed_requests(
                console, client, "/predict_batch", explained, o.explained_requests,
                "/predict_batch, 500 records, explained",
            )  # fmt: skip
    result["concurrent_one_row"] = _concurrent(console, o, url, one)
    return result


def _timed_requests(
    console: Console, client: HttpClient, path: str, body: tuple[bytes, int], count: int, what: str
) -> dict[str, Any]:
    times = []
    with Waiting(console, f"{count} requests {what}", 300.0) as wait:
        for i in range(count):
            began = time.perf_counter()
            client.post(path, *body)
            times.append((time.perf_counter() - began) * 1000)
            if i % 10 == 0:
                wait.update(f"{i}/{count}")
            if wait.expired():
                break
    return summarize(times)


def _concurrent(
    console: Console, options: BenchOptions, url: str, body: tuple[bytes, int]
) -> dict[str, Any]:
    o = options
    lock = threading.Lock()
    issued = 0
    times: list[float] = []
    errors: list[str] = []
    limit = Deadline.after(o.concurrent_max_s)

    def worker() -> None:
        nonlocal issued
        with contextlib.closing(HttpClient(url)) as client:
            while not limit.expired():
                with lock:
                    if issued >= o.concurrent_requests:
                        return
                    issued += 1
                began = time.perf_counter()
                try:
                    client.post("/predict", *body)
                except BenchError as error:
                    errors.append(str(error))
                    continue
                elapsed = (time.perf_counter() - began) * 1000
                with lock:
                    times.append(elapsed)

    what = f"{o.concurrency} threads, up to {o.concurrent_requests} requests"
    with Waiting(console, f"/predict 1 row, {what}", o.concurrent_max_s + 30):
        began = time.monotonic()
        with ThreadPoolExecutor(o.concurrency) as pool:
            for future in [pool.submit(worker) for _ in range(o.concurrency)]:
                future.result()
        wall = time.monotonic() - began
    return {
        "threads": o.concurrency,
        "requests": len(times),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "seconds": round(wall, 3),
        "requests_per_s": round(len(times) / wall, 1) if wall > 0 else None,
        "latency_ms": summarize(times),
    }


class HttpClient:
    """One keep-alive HTTP/1.1 connection. python-requests added 1-5 ms per call on
    this box, which would be measured as service latency."""

    def __init__(self, base_url: str, timeout_s: float = 30.0) -> None:
        parsed = urlparse(base_url)
        self.base_url = base_url
        self._connection = http.client.HTTPConnection(
            parsed.hostname or "127.0.0.1", parsed.port or 80, timeout=timeout_s
        )

    def post(self, path: str, body: bytes, rows: int) -> None:
        """POST a JSON body; raise BenchError unless the answer is a list of ``rows``."""
        url = self.base_url + path
        try:
            self._connection.request(
                "POST", path, body=body, headers={"Content-Type": "application/json"}
            )
            response = self._connection.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException) as error:
            self._connection.close()  # reconnects on the next request
            raise BenchError(f"POST {url} failed: {error}; is the service up?") from error
        if response.status != 200:
            raise BenchError(f"POST {url} answered {response.status}: {data[:300]!r}")
        answer = json.loads(data)
        if not isinstance(answer, list) or len(answer) != rows:
            raise BenchError(f"POST {url} answered {str(answer)[:200]} for {rows} rows")

    def close(self) -> None:
        self._connection.close()


def _body(payload: Any, rows: int) -> tuple[bytes, int]:
    return json.dumps(payload).encode(), rows


def _columns(rows: int, seed: int) -> dict[str, list[Any]]:

    frame = generate_listings(rows, seed)
    return {name: frame[name].tolist() for name in FEATURES}


def _records(rows: int, seed: int) -> list[dict[str, Any]]:

    return [{n: r[n] for n in FEATURES} for r in generate_listing_records(rows, seed)]
