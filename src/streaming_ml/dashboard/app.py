"""The dashboard's web side: one page, its static files, the state as JSON and as a
server-sent event stream, and the listing lookup. Read-only: every route is a GET.

It answers only requests addressed to its own host names (a web page that rebinds its
DNS name to 127.0.0.1 gets a 400, not the listing lookup), holds a bounded number of event
streams open, and never shows a database's error text.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import psycopg2
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from streaming_ml.dashboard.collector import Collector
from streaming_ml.errors import StreamingMLError

logger = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
# A listing id is a Postgres bigint.
MAX_LISTING_ID = 2**63 - 1
# How often an open event stream looks for a new round (a round is 1 s or less).
STREAM_POLL_S = 0.1
# The page may load only what this server serves: a stray CDN link fails loudly in the
# browser's console instead of quietly breaking the offline promise.
CONTENT_POLICY = (
    "default-src 'self'; connect-src 'self'; img-src 'self' data:; style-src 'self'; "
    "script-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)


def finite(value: Any) -> Any:
    """``value`` with NaN and infinities as None: JSON has no such numbers."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def to_json(value: Any) -> str:
    return json.dumps(finite(value), separators=(",", ":"), default=str)


def _json_response(value: Any, status_code: int = 200) -> Response:
    return Response(to_json(value), status_code=status_code, media_type="application/json")


def create_app(
    collector: Collector,
    lookup: Callable[[int], dict[str, Any]],
    allowed_hosts: Sequence[str] = ("localhost", "127.0.0.1"),
    max_streams: int = 8,
) -> Starlette:
    """The ASGI app over a running ``collector``; ``lookup(listing_id)`` gives a journey.
    Requests whose ``Host`` is not one of ``allowed_hosts`` get a 400; at most
    ``max_streams`` event streams are open at once (503 above)."""

    async def index(_request: Request) -> Response:
        return FileResponse(
            STATIC / "index.html",
            headers={"Content-Security-Policy": CONTENT_POLICY, "Cache-Control": "no-cache"},
        )

    async def state(_request: Request) -> Response:
        return _json_response(collector.snapshot())

    def listing(request: Request) -> Response:
        # A plain function: Starlette runs it in a worker thread, off the event loop.
        text = request.path_params["listing_id"]
        if not (text.isascii() and text.isdigit()) or not 0 < int(text) <= MAX_LISTING_ID:
            answer = {"found": False, "error": "a listing id is a positive whole number"}
            return _json_response(answer, 400)
        listing_id = int(text)
        try:
            return _json_response(lookup(listing_id))
        except StreamingMLError as error:
            # Our own message (the stack is down, the table is missing): what to do.
            answer = {"found": False, "listing_id": listing_id, "error": str(error).strip()}
            return _json_response(answer, 503)
        except psycopg2.Error as error:
            # The database's own text (names, SQL) stays in the log.
            logger.error(
                "listing lookup failed",
                extra={"listing_id": listing_id, "error": str(error).strip()},
            )
            answer = {
                "found": False,
                "listing_id": listing_id,
                "error": "the database could not answer; the dashboard's log says why",
            }
            return _json_response(answer, 503)

    return Starlette(
        routes=[
            Route("/", index),
            Route("/api/state", state),
            Route("/api/events", EventStreams(collector, max_streams), methods=["GET"]),
            Route("/api/listing/{listing_id}", listing),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
        ],
        middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts))],
    )


class EventStreams:
    """The event stream's ASGI app: each open page holds a connection and a coroutine, so
    their number is capped; a page over the cap gets a 503 and retries."""

    def __init__(self, collector: Collector, max_streams: int) -> None:
        self.collector = collector
        self.max_streams = max_streams
        self.open = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if self.open >= self.max_streams:
            answer = {"error": f"{self.open} event streams open, the limit is {self.max_streams}"}
            refused = Response(
                to_json(answer), status_code=503, media_type="application/json",
                headers={"Retry-After": "5"},
            )  # fmt: skip
            await refused(scope, receive, send)
            return
        self.open += 1
        try:
            response = StreamingResponse(
                _stream(self.collector),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
            # Returns when the stream ends or the page goes away (Starlette listens for
            # the disconnect), so the count never keeps a closed page.
            await response(scope, receive, send)
        finally:
            self.open -= 1


async def _stream(collector: Collector) -> AsyncIterator[str]:
    """A snapshot, then one event per collection round, until the dashboard stops (so a
    shutdown never waits for an open page)."""
    seen = collector.seq
    # A round may end between the line above and the snapshot: the page drops a point it
    # already has (same time), so sending one twice is harmless, missing one is not.
    yield _event("snapshot", collector.snapshot())
    while not collector.stopped:
        if collector.seq != seen:
            seen, payload = collector.tick(seen)
            yield _event("tick", payload)
        else:
            await asyncio.sleep(STREAM_POLL_S)


def _event(name: str, data: Any) -> str:
    return f"event: {name}\ndata: {to_json(data)}\n\n"
