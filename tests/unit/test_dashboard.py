"""The dashboard's pure parts and its web layer, with nothing running behind them."""

from __future__ import annotations

import json
import math
import random
import re
import socket
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import requests
from pydantic import ValidationError
from starlette.testclient import TestClient
from typer.testing import CliRunner

from streaming_ml.cli import app as cli
from streaming_ml.config import REPO_ROOT, Settings
from streaming_ml.dashboard import journey, scrape, server
from streaming_ml.dashboard.app import STATIC, create_app, finite
from streaming_ml.dashboard.latency import LatencySampler, reservoir
from streaming_ml.dashboard.series import History, OffsetRate, Rate
from streaming_ml.errors import ServiceUnavailableError, StackError
from streaming_ml.schema.listing import FEATURES
from tests.fixtures.explain import arm_explanation as fake_arm_explanation

METRICS = """\
# HELP sml_bridge_events_total Change events consumed
# TYPE sml_bridge_events_total counter
sml_bridge_events_total{op="c"} 7.0
sml_bridge_events_total{op="u"} 3.0
# TYPE sml_bridge_dlq_total counter
sml_bridge_dlq_total{stage="validation"} 2.0
sml_bridge_dlq_total{stage="model"} 1.0
# TYPE sml_bridge_paused gauge
sml_bridge_paused 1.0
"""


def test_scraped_samples_add_up_by_name_and_by_label() -> None:
    samples = scrape.parse(METRICS)
    assert scrape.total(samples, "sml_bridge_events_total") == 10.0
    assert scrape.total(samples, "sml_bridge_events_total", op="u") == 3.0
    assert scrape.total(samples, "sml_bridge_paused") == 1.0
    assert scrape.total(samples, "sml_bridge_missing_total") is None
    assert scrape.by_label(samples, "sml_bridge_dlq_total", "stage") == {
        "validation": 2.0,
        "model": 1.0,
    }


def test_a_rate_needs_two_readings_and_a_counter_that_went_down_is_a_restart() -> None:
    rate = Rate()
    assert rate.update(10.0, 100.0) is None
    assert rate.update(12.0, 160.0) == 30.0
    assert rate.update(13.0, 5.0) is None  # the process behind the counter restarted
    assert rate.update(14.0, 25.0) == 20.0
    assert rate.update(15.0, None) is None
    assert rate.update(16.0, 30.0) is None  # unknown in between: start again


def test_offset_rate_counts_only_partitions_seen_before() -> None:
    rate = OffsetRate()
    assert rate.update(0.0, {0: 100}) is None
    # Partition 1 appears with 5,000 committed: a group's first commit, not traffic.
    assert rate.update(2.0, {0: 140, 1: 5_000}) == 20.0
    assert rate.update(3.0, {0: 150, 1: 5_010}) == 20.0
    assert rate.update(4.0, None) is None


def test_history_keeps_the_last_points_numbered_from_one() -> None:
    history = History(3)
    for t in range(5):
        history.append({"t": t})
    assert [p["t"] for p in history.points()] == [2, 3, 4]
    assert history.count == 5
    assert history.since(3) == (5, [{"t": 3}, {"t": 4}])
    assert history.since(5) == (5, [])
    # A page behind by more than the history gets what is left.
    assert history.since(0) == (5, [{"t": 2}, {"t": 3}, {"t": 4}])


def test_reservoir_keeps_everything_below_k_and_k_items_above() -> None:
    rng = random.Random(1)
    assert reservoir(range(5), 10, rng) == ([0, 1, 2, 3, 4], 5)
    chosen, count = reservoir(range(10_000), 100, rng)
    assert count == 10_000 and len(chosen) == len(set(chosen)) == 100
    # Uniform: about as many from the second half as from the first.
    assert 30 < sum(1 for c in chosen if c >= 5_000) < 70


class FakeMessage:
    def __init__(self, value: dict[str, Any] | None, topic_ts: int) -> None:
        self._value = value
        self._ts = topic_ts

    def value(self) -> dict[str, Any] | None:
        return self._value

    def timestamp(self) -> tuple[int, int]:
        return (1, self._ts)


class FakeConnection:
    """Answers the sampler's one query with the rows it is given."""

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows
        self.asked: list[Any] = []

    @contextmanager
    def cursor(self, cursor_factory: Any = None) -> Iterator[Any]:
        yield SimpleNamespace(
            execute=lambda _query, params: self.asked.append(params),
            fetchall=lambda: self.rows,
        )


def prediction(listing_id: int, source: int, predicted: int) -> dict[str, Any]:
    return {
        "listing_id": listing_id,
        "source_ts_ms": source,
        "kafka_ts_ms": source + 10,
        "bridge_received_ts_ms": source + 15,
        "predicted_ts_ms": predicted,
        "model_latency_ms": 4.0,
    }


def test_latency_sampler_measures_each_stage_of_rows_written_and_waits_for_the_others() -> None:
    sampler = LatencySampler(decode=lambda value: value, table="car_price_predictions")
    messages = [
        FakeMessage(prediction(1, 1_000, 1_030), topic_ts=1_032),
        FakeMessage(prediction(2, 2_000, 2_050), topic_ts=2_055),
        FakeMessage(None, topic_ts=2_060),  # a tombstone is not a price
    ]
    assert sampler.observe(messages, now=100.0) == 2
    # Listing 1 is written; listing 2's row is still the price of an older change.
    conn = FakeConnection(
        [
            {"listing_id": 1, "predicted_ts_ms": 1_030, "written_ms": 1_100.0},
            {"listing_id": 2, "predicted_ts_ms": 1_999, "written_ms": 2_001.0},
        ]
    )
    sampler.resolve(conn, now=101.0)
    assert conn.asked == [([1, 2],)]
    assert [s.listing_id for s in sampler.pending] == [2]
    assert sampler.point(101.0) == {
        "latency_p50": 100.0,
        "latency_p95": 100.0,
        "latency_p99": 100.0,
    }
    stages = {s["stage"]: s for s in sampler.stages(101.0)}
    assert stages["commit_to_kafka"]["p50"] == 10.0
    assert stages["bridge_batching"]["p50"] == 1_030 - 4 - 1_015
    assert stages["bridge_to_topic"]["p50"] == 2.0
    assert stages["topic_to_table"]["p50"] == 68.0
    assert stages["end_to_end"]["count"] == 1
    # Samples older than the point window leave the points, then the stage window.
    assert sampler.point(110.0) == {}
    sampler.resolve(FakeConnection([]), now=200.0)
    assert sampler.given_up == 1 and not sampler.pending and not sampler.written
    assert sampler.stages(200.0)[0]["count"] == 0


def test_journey_stages_give_each_time_and_the_step_from_the_one_before() -> None:
    row = {
        "source_ts_ms": 1_000, "kafka_ts_ms": 1_020, "bridge_received_ts_ms": 1_025,
        "predicted_ts_ms": 1_040, "model_latency_ms": 6.0, "written_ms": 1_100,
    }  # fmt: skip
    stages = journey.stages(row)
    assert [s["stage"] for s in stages] == [name for name, _ in journey.STAGE_FIELDS]
    assert [s["ts_ms"] for s in stages] == [1_000, 1_020, 1_025, 1_034, 1_040, 1_100]
    assert [s["delta_ms"] for s in stages] == [None, 20, 5, 9, 6, 60]
    # A row from before a stage was recorded: unknown, and the next step spans the gap.
    partial = journey.stages({**row, "kafka_ts_ms": None})
    assert partial[1]["ts_ms"] is None and partial[2]["delta_ms"] == 25


def test_journey_error_comes_from_the_evaluator_when_it_judged_this_model() -> None:
    written = {"model_tag": "ford_price:a", "predicted_price": 10_500.0}
    outcome = {
        "arm": "champion", "model_tag": "ford_price:a", "actual_price": 10_000.0,
        "error": 500.0, "evaluated_ts_ms": 5,
    }  # fmt: skip
    judged = journey._price("champion", written, 12_000, [outcome])
    assert (judged["label"], judged["error"], judged["error_from"]) == (
        10_000.0,
        500.0,
        "evaluator",
    )
    assert judged["abs_pct_error"] == pytest.approx(0.05)
    other_model = journey._price("champion", written, 12_000, [{**outcome, "model_tag": "x"}])
    assert (other_model["error"], other_model["error_from"]) == (-1_500.0, "listing")
    unlabelled = journey._price("champion", written, None, [])
    assert unlabelled["error"] is None and unlabelled["abs_pct_error"] is None


LISTING = {
    "id": 7, "model": "Focus", "year": 2018, "price": 12_495, "transmission": "Manual",
    "mileage": 20_000, "fuelType": "Petrol", "tax": 145, "mpg": 55.4, "engineSize": 1.0,
}  # fmt: skip


def arm_explanation(arm: str, tag: str, base: float, amounts: dict[str, float]) -> dict[str, Any]:
    return fake_arm_explanation(arm, tag, base, amounts, LISTING)


# Fractions chosen so that rounding each amount on its own shows a total two pounds short.
ANSWER = {
    "listing": {name: LISTING[name] for name in FEATURES},
    "listing_id": 7,
    "explanations": [
        arm_explanation("champion", "ford_price:new", 11_460.4,
                        {"year": 1_555.3, "mileage": -85.6, "mpg": 58.4, "tax": -6.6}),
        arm_explanation("shadow", "ford_price:s", 11_000.0, {"year": 900.25, "model": -20.5}),
    ],
}  # fmt: skip


def half_up(amount: float) -> int:
    """How the page rounds a price (JavaScript's Math.round)."""
    return math.floor(amount + 0.5)


def test_journey_explains_each_arm_in_whole_pounds_that_add_up_to_the_price_shown() -> None:
    asked: list[tuple[int, dict[str, Any]]] = []

    def explain(listing_id: int, listing: Any) -> dict[str, Any]:
        asked.append((listing_id, dict(listing)))
        return ANSWER

    written = {"champion": {"model_tag": "ford_price:old", "predicted_price": 12_000.0}}
    why = journey.explanation(7, LISTING, {}, written, explain)

    assert asked == [(7, LISTING)]
    assert why["reason"] is None
    champion, shadow = why["arms"]
    for arm, given in zip(why["arms"], ANSWER["explanations"], strict=True):
        shown = [arm["shown_base"], *(c["shown"] for c in arm["contributions"])]
        assert sum(shown) == arm["shown_price"] == half_up(given["predicted_price"])
        # The exact amounts go along for the bars, in the service's order.
        assert [(c["feature"], c["amount"]) for c in arm["contributions"]] == [
            (c["feature"], c["amount"]) for c in given["contributions"]
        ]
    rounded_alone = half_up(11_460.4) + sum(half_up(c["amount"]) for c in champion["contributions"])
    assert rounded_alone == champion["shown_price"] - 2
    # The champion's row came from another model than the one explaining now.
    assert (champion["model_tag"], champion["written_tag"]) == ("ford_price:new", "ford_price:old")
    assert shadow["written_tag"] is None


def test_a_dead_lettered_listing_is_not_sent_to_the_service_and_says_why() -> None:
    def explain(_listing_id: int, _listing: Any) -> dict[str, Any]:
        raise AssertionError("a listing that cannot be priced is not explained")

    why = journey.explanation(7, LISTING, {"mileage": "is negative"}, {}, explain)

    assert why["arms"] == [] and "dead-lettered" in why["reason"]


class FakeResponse:
    def __init__(self, status_code: int, body: dict[str, Any]) -> None:
        self.status_code = status_code
        self._body = body
        self.text = json.dumps(body)

    def json(self) -> dict[str, Any]:
        return self._body


def test_journey_asks_the_settings_service_and_says_why_when_it_cannot(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Through the CLI's client (streaming_ml.explain), with made-up HTTP answers."""
    posted: list[tuple[str, Any, float]] = []
    answers: list[FakeResponse | Exception] = [
        FakeResponse(200, ANSWER),
        FakeResponse(400, {"error": "listing.mileage: must be at least 0"}),
        requests.ConnectionError("connection refused"),
    ]

    def post(url: str, json: Any, timeout: float) -> FakeResponse:
        posted.append((url, json, timeout))
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    monkeypatch.setattr("streaming_ml.service.explain.requests.post", post)
    explain = server.service_explainer(
        Settings(service_url="http://127.0.0.1:3999/", request_timeout_s=2.5)
    )

    answered = journey.explanation(7, LISTING, {}, {}, explain)
    refused = journey.explanation(7, LISTING, {}, {}, explain)
    down = journey.explanation(7, LISTING, {}, {}, explain)

    assert posted[0] == (
        "http://127.0.0.1:3999/explain",
        {"listing": {name: LISTING[name] for name in FEATURES}, "listing_id": 7},
        2.5,
    )
    assert [a["arm"] for a in answered["arms"]] == ["champion", "shadow"]
    assert refused["arms"] == [] and "cannot be priced" in refused["reason"]
    assert "listing.mileage" in refused["reason"]
    assert down["arms"] == [] and "not answering" in down["reason"]
    assert "SML_SERVICE_URL" in down["reason"]


def test_any_service_error_leaves_the_rest_of_the_journey() -> None:
    def explain(_listing_id: int, _listing: Any) -> dict[str, Any]:
        raise ServiceUnavailableError("http://x/explain answered HTTP 503: busy")

    why = journey.explanation(7, LISTING, {}, {}, explain)

    assert why == {"arms": [], "reason": "http://x/explain answered HTTP 503: busy"}


def test_json_has_no_nan() -> None:
    value = {"a": float("nan"), "b": [1.0, float("inf")], "c": {"d": 2}}
    assert finite(value) == {"a": None, "b": [1.0, None], "c": {"d": 2}}


class FakeCollector:
    """One snapshot, then one tick, then stopped."""

    def __init__(self) -> None:
        self.seq = 1
        self.stopped = False

    def snapshot(self) -> dict[str, Any]:
        self.seq = 2  # a round ends while the page connects
        return {"state": {"x": float("nan")}, "history": [{"t": 1.0}], "markers": []}

    def tick(self, seen: int) -> tuple[int, dict[str, Any]]:
        assert seen == 1
        self.stopped = True
        return 2, {"state": {}, "points": [{"t": 2.0}], "markers": []}


def client(lookup: Any = None, **options: Any) -> TestClient:
    app = create_app(FakeCollector(), lookup or (lambda i: {"found": True}), **options)  # type: ignore[arg-type]
    return TestClient(app, base_url="http://127.0.0.1:8090")


def test_the_page_may_load_only_what_this_server_serves() -> None:
    answer = client().get("/")
    assert answer.status_code == 200 and "uPlot.iife.min.js" in answer.text
    policy = answer.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "https:" not in policy
    # Every script, style and link of the page is a local path.
    references = re.findall(r'(?:src|href)="([^"]+)"', answer.text)
    assert references and all(r.startswith("/static/") or r == "data:," for r in references)
    for reference in references:
        if reference.startswith("/static/"):
            assert client().get(reference).status_code == 200, reference


def test_state_and_event_stream_are_json_without_nan() -> None:
    state = client().get("/api/state")
    assert state.json()["state"] == {"x": None}
    with client().stream("GET", "/api/events") as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        body = "".join(stream.iter_text())
    events = re.findall(r"event: (\w+)\ndata: (.*)\n\n", body)
    assert [name for name, _ in events] == ["snapshot", "tick"]
    assert json.loads(events[1][1])["points"] == [{"t": 2.0}]


def test_listing_lookup_answers_with_the_journey_or_the_reason() -> None:
    asked: list[int] = []

    def lookup(listing_id: int) -> dict[str, Any]:
        asked.append(listing_id)
        if listing_id == 13:
            raise StackError("cannot connect to Postgres; is the stack up?")
        return {"found": listing_id == 7, "listing_id": listing_id}

    assert client(lookup).get("/api/listing/7").json() == {"found": True, "listing_id": 7}
    assert client(lookup).get("/api/listing/8").json()["found"] is False
    down = client(lookup).get("/api/listing/13")
    assert down.status_code == 503 and "stack up" in down.json()["error"]
    for malformed in ("abc", "-1", "0", "1.5", "%C2%B2", str(2**63), "9" * 400):
        answer = client(lookup).get(f"/api/listing/{malformed}")
        assert answer.status_code == 400, malformed
        assert "positive whole number" in answer.json()["error"]
    assert asked == [7, 8, 13]


def test_a_database_error_reaches_the_log_and_not_the_page(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import psycopg2

    def lookup(_listing_id: int) -> dict[str, Any]:
        raise psycopg2.errors.InsufficientPrivilege('permission denied for table "secret_t"')

    answer = client(lookup).get("/api/listing/5")
    assert answer.status_code == 503
    assert "secret_t" not in answer.text and "log says why" in answer.json()["error"]
    assert any("secret_t" in getattr(r, "error", "") for r in caplog.records)


def test_only_the_configured_host_names_are_answered() -> None:
    page = client(allowed_hosts=["127.0.0.1", "dash.example"])
    for path in ("/", "/api/state", "/api/listing/7"):
        assert page.get(path).status_code == 200, path
        assert page.get(path, headers={"Host": "dash.example:8090"}).status_code == 200, path
        # A page on attacker.example whose name now resolves to 127.0.0.1:
        rebound = page.get(path, headers={"Host": "attacker.example:8090"})
        assert rebound.status_code == 400, path
    from streaming_ml.config import Settings

    hosts = Settings(host="10.0.0.5", dashboard_allowed_hosts=["dash.example"]).dashboard_hosts
    assert hosts == ["10.0.0.5", "localhost", "127.0.0.1", "dash.example"]


def test_event_streams_over_the_cap_get_503_and_a_closed_one_frees_its_place() -> None:
    import asyncio

    from streaming_ml.dashboard.app import EventStreams

    class Endless(FakeCollector):
        """Never stops: a page's stream ends only when the page goes away."""

        def tick(self, seen: int) -> tuple[int, dict[str, Any]]:
            return self.seq, {"state": {}, "points": [], "markers": []}

    async def scenario() -> list[int]:
        streams = EventStreams(Endless(), max_streams=2)  # type: ignore[arg-type]
        disconnects = [asyncio.Event() for _ in range(3)]
        statuses: list[int] = []

        def client_of(index: int) -> Any:
            async def receive() -> dict[str, Any]:
                await disconnects[index].wait()
                return {"type": "http.disconnect"}

            async def send(message: dict[str, Any]) -> None:
                if message["type"] == "http.response.start":
                    statuses.append(message["status"])

            scope = {"type": "http", "method": "GET", "path": "/api/events", "headers": []}
            return streams(scope, receive, send)

        held = [asyncio.create_task(client_of(i)) for i in range(2)]
        while streams.open < 2:
            await asyncio.sleep(0.01)
        await client_of(2)  # the third page is refused at once
        assert statuses[-1] == 503
        disconnects[0].set()
        await asyncio.wait_for(held[0], timeout=5)
        assert streams.open == 1
        disconnects[2] = asyncio.Event()
        third = asyncio.create_task(client_of(2))
        while streams.open < 2:
            await asyncio.sleep(0.01)
        for event in disconnects:
            event.set()
        await asyncio.wait_for(asyncio.gather(held[1], third), timeout=5)
        assert streams.open == 0
        return statuses

    statuses = asyncio.run(scenario())
    assert sorted(statuses) == [200, 200, 200, 503]


def test_a_port_in_use_is_an_error_naming_the_setting() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with pytest.raises(StackError, match="SML_DASHBOARD_PORT"):
            server._bind("127.0.0.1", port)


def test_refresh_slower_than_a_second_is_not_live() -> None:
    with pytest.raises(ValidationError):
        Settings(dashboard_refresh_s=2.0)
    assert Settings().dashboard_url == "http://127.0.0.1:8090/"


def test_every_static_file_is_package_data_and_uplot_ships_its_licence() -> None:
    globs = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]["streaming_ml"]
    package = REPO_ROOT / "src" / "streaming_ml"
    files = [p for p in STATIC.rglob("*") if p.is_file()]
    assert files
    unpackaged = [p for p in files if not any(p.relative_to(package).match(glob) for glob in globs)]
    assert unpackaged == []
    licence = (STATIC / "vendor" / "uplot" / "LICENSE").read_text()
    assert "MIT" in licence and "Leon Sorokin" in licence
    script = (STATIC / "dashboard.js").read_text() + (STATIC / "index.html").read_text()
    assert not re.search(r"https?://(?!127\.0\.0\.1)", script)


def test_cli_dashboard_has_its_port_and_bridge_options() -> None:
    result = CliRunner().invoke(cli, ["dashboard", "--help"])
    assert result.exit_code == 0
    assert "--port" in result.output and "--bridge-metrics" in result.output


def test_vendored_uplot_is_the_one_the_readme_names() -> None:
    note = (STATIC / "vendor" / "uplot" / "README.md").read_text()
    header = (STATIC / "vendor" / "uplot" / "uPlot.iife.min.js").read_text()[:100]
    version = re.search(r"uPlot (\d+\.\d+\.\d+)", note)
    assert version and f"(v{version.group(1)})" in header
    assert Path(STATIC / "vendor" / "uplot" / "uPlot.min.css").is_file()
