"""The dashboard's web side: one page, its static files, the state as JSON and as a
server-sent event stream, and the listing lookup. Read-only: every route is a GET.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import psycopg2
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from streaming_ml.dashboard.collector import Collector
from streaming_ml.errors import StreamingMLError

STATIC = Path(__file__).parent / "static"
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


def create_app(collector: Collector, lookup: Callable[[int], dict[str, Any]]) -> Starlette:
    """The ASGI app over a running ``collector``; ``lookup(listing_id)`` gives a journey."""

    async def index(_request: Request) -> Response:
        return FileResponse(
            STATIC / "index.html",
            headers={"Content-Security-Policy": CONTENT_POLICY, "Cache-Control": "no-cache"},
        )

    async def state(_request: Request) -> Response:
        return _json_response(collector.snapshot())

    async def events(_request: Request) -> Response:
        return StreamingResponse(
            _stream(collector),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    def listing(request: Request) -> Response:
        # A plain function: Starlette runs it in a worker thread, off the event loop.
        listing_id = int(request.path_params["listing_id"])
        try:
            return _json_response(lookup(listing_id))
        except (StreamingMLError, psycopg2.Error) as error:
            # The database is away or refuses: say so in the page, as any lookup answer.
            answer = {"found": False, "listing_id": listing_id, "error": str(error).strip()}
            return _json_response(answer, 503)

    return Starlette(
        routes=[
            Route("/", index),
            Route("/api/state", state),
            Route("/api/events", events),
            Route("/api/listing/{listing_id:int}", listing),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
        ]
    )


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
