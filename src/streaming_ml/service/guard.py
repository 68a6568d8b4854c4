"""An ASGI guard in front of the service: refuses oversized or mistyped requests before parsing."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from starlette.responses import JSONResponse


class RequestGuard:
    """ASGI middleware: what a POST must be before any of it is read or parsed.

    - a body is JSON (``Content-Type: application/json``), else 415: a web page cannot
      send a "simple" cross-origin POST (text/plain, form) that the APIs would parse;
    - its length is declared and at most ``max_body_bytes``, else 411 / 413: one huge
      body must not grow the worker or stall ``/readyz`` for everyone;
    - at most ``max_concurrency`` POSTs are in flight, else 429 with ``Retry-After``.
    Rows per request are checked by the APIs (``max_rows``), after parsing.
    """

    def __init__(self, app: Any, max_body_bytes: int, max_concurrency: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_concurrency = max_concurrency
        self.in_flight = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        refusal = self._refusal(first_headers(scope["headers"]))
        if refusal is not None:
            status, message, extra = refusal
            await _refuse(status, message, extra)(scope, receive, send)
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1

    def _refusal(self, headers: Mapping[bytes, bytes]) -> tuple[int, str, dict[str, str]] | None:
        length = headers.get(b"content-length")
        chunked = b"chunked" in headers.get(b"transfer-encoding", b"").lower()
        if chunked or (length is None and headers.get(b"transfer-encoding")):
            return 411, "send the body with a Content-Length (chunked bodies are refused)", {}
        try:
            size = int(length) if length is not None else 0
        except ValueError:
            return 400, "Content-Length is not a number", {}
        if size > self.max_body_bytes:
            return (
                413,
                (
                    f"body of {size} bytes is over the limit of {self.max_body_bytes} "
                    "(SML_SERVICE_MAX_BODY_BYTES); send fewer rows per request"
                ),
                {},
            )
        content_type = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        if size > 0 and content_type != b"application/json":
            return 415, "this API takes a JSON body: send Content-Type: application/json", {}
        if self.in_flight >= self.max_concurrency:
            return (
                429,
                (
                    f"{self.in_flight} requests in flight, the limit is {self.max_concurrency} "
                    "(SML_SERVICE_MAX_CONCURRENCY); retry shortly"
                ),
                {"Retry-After": "1"},
            )
        return None


def first_headers(raw: Iterable[tuple[bytes, bytes]]) -> dict[bytes, bytes]:
    """Each header's first value, the one Starlette's ``Headers.get`` (and so BentoML)
    reads: a request that repeats ``Content-Type`` must not be checked as one type and
    parsed as another."""
    headers: dict[bytes, bytes] = {}
    for name, value in raw:
        headers.setdefault(name.lower(), value)
    return headers


def _refuse(status: int, message: str, headers: Mapping[str, str]) -> Any:

    body = {"error": message, "detail": [{"loc": ["body"], "msg": message, "type": str(status)}]}
    return JSONResponse(body, status_code=status, headers=dict(headers))
