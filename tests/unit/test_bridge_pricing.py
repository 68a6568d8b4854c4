"""Pricing without a service: answers classified, retries, bisection, strikes, backpressure."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import pytest
import requests

from streaming_ml.bridge.pricing import (
    Backpressure,
    PredictionClient,
    Pricer,
    ServiceFailed,
    ServiceRejected,
    ServiceUnavailable,
    checked_answer,
)

Row = Mapping[str, Any]


def priced(rows: Sequence[Row]) -> list[dict[str, Any]]:
    """What a healthy service answers: one price per row (1000 + the row's number)."""
    return [{"predicted_price": 1000.0 + r["n"], "model_tag": "ford_price:v1"} for r in rows]


def rejecting(bad: Iterable[int], status: int = 422) -> Callable[[Sequence[Row]], list[Any]]:
    """A service that refuses any call containing one of the ``bad`` rows."""
    bad = frozenset(bad)

    def answer(rows: Sequence[Row]) -> list[Any]:
        if any(r["n"] in bad for r in rows):
            raise ServiceRejected(f"HTTP {status}: records[0].mileage: must be at least 0")
        return priced(rows)

    return answer


def failing(bad: Iterable[int]) -> Callable[[Sequence[Row]], list[Any]]:
    """A service that answers 500 to any call containing one of the ``bad`` rows."""
    bad = frozenset(bad)

    def answer(rows: Sequence[Row]) -> list[Any]:
        if any(r["n"] in bad for r in rows):
            raise ServiceFailed("HTTP 500: internal error")
        return priced(rows)

    return answer


class FakeClient:
    """Stands in for PredictionClient: ``script`` holds the outcome of the first calls
    (an exception to raise, or None to answer), then ``answer`` decides."""

    def __init__(
        self,
        answer: Callable[[Sequence[Row]], list[Any]] = priced,
        *,
        script: Iterable[Exception | None] = (),
        is_ready: bool = True,
    ) -> None:
        self.answer = answer
        self.script = list(script)
        self.is_ready = is_ready
        self.calls: list[list[int]] = []
        self.ready_calls = 0

    def predict(self, rows: Sequence[Row]) -> list[Any]:
        self.calls.append([r["n"] for r in rows])
        if self.script:
            outcome = self.script.pop(0)
            if outcome is not None:
                raise outcome
        return self.answer(rows)

    def ready(self) -> bool:
        self.ready_calls += 1
        return self.is_ready


class RecordedWait:
    """The Pricer's ``wait``: records each delay, sleeps never; True means "stopping"."""

    def __init__(self, stop: bool = False) -> None:
        self.delays: list[float] = []
        self.stop = stop

    def __call__(self, seconds: float) -> bool:
        self.delays.append(seconds)
        return self.stop


def rows_of(count: int) -> list[dict[str, int]]:
    return [{"n": n} for n in range(count)]


def keys_of(count: int, partition: int = 0) -> list[tuple[str, int, int]]:
    return [("cars.public.car_listings", partition, 100 + n) for n in range(count)]


def pricer(
    client: FakeClient,
    *,
    retry_delays: Sequence[float] = (0.25, 0.5),
    max_strikes: int = 3,
    wait: RecordedWait | None = None,
) -> Pricer:
    return Pricer(
        client,  # type: ignore[arg-type]
        retry_delays=retry_delays,
        max_strikes=max_strikes,
        wait=wait or RecordedWait(),
    )


# -- rejections (400/422): the records are bad --


def test_rejected_rows_are_found_by_bisection_and_only_they_are_dead_lettered() -> None:
    wait = RecordedWait()
    client = FakeClient(rejecting({2, 5}))
    out = pricer(client, wait=wait).price(rows_of(8), keys_of(8))
    assert sorted(out.rejected) == [2, 5]
    assert out.rejected[2].startswith("service: HTTP 422: records[0].mileage")
    assert out.results == {n: priced([{"n": n}])[0] for n in (0, 1, 3, 4, 6, 7)}
    assert out.unfinished == {}
    assert wait.delays == []  # a rejection is an answer: never retried
    assert out.calls == len(client.calls)


def test_a_single_rejected_row_is_dead_lettered_without_another_call() -> None:
    client = FakeClient(rejecting({0}, status=400))
    out = pricer(client).price(rows_of(1), keys_of(1))
    assert out.rejected == {0: "service: HTTP 400: records[0].mileage: must be at least 0"}
    assert client.calls == [[0]]


def test_rejections_scattered_over_a_full_batch_are_all_dead_lettered() -> None:
    """Three bad rows in a batch of 500 (the default batch size): the service answered
    every call, so the records, not the service, are at fault. Backpressure here would
    rewind to the same batch and fail the same way after every resume."""
    bad = {3, 250, 497}
    out = pricer(FakeClient(rejecting(bad))).price(rows_of(500), keys_of(500))
    assert set(out.rejected) == bad
    assert len(out.results) == 497


def test_batch_rejected_as_a_whole_is_dead_lettered_row_by_row() -> None:
    out = pricer(FakeClient(rejecting(range(16)))).price(rows_of(16), keys_of(16))
    assert sorted(out.rejected) == list(range(16))
    assert out.results == {}


# -- unavailable (404, 408, 429, 503, refused): the service is not there --


def test_unavailable_service_is_backpressure_and_no_record_is_rejected() -> None:
    outage = [
        ServiceUnavailable("HTTP 404 from http://svc/predict_batch: not found"),
        ServiceUnavailable("HTTP 429 from http://svc/predict_batch: slow down"),
        ServiceUnavailable("ConnectionError: connection refused"),
    ]
    wait = RecordedWait()
    client = FakeClient(script=outage)
    prices = pricer(client, retry_delays=(0.25, 0.5), max_strikes=1, wait=wait)
    with pytest.raises(Backpressure, match="connection refused"):
        prices.price(rows_of(4), keys_of(4))
    assert len(client.calls) == 3  # first try and two retries, then give up
    assert wait.delays == [0.25, 0.5]

    # The service is back: the same rows are priced, none was blamed for the outage
    # (max_strikes=1 would dead-letter any row holding a strike at its first failure).
    out = prices.price(rows_of(4), keys_of(4))
    assert sorted(out.results) == [0, 1, 2, 3]
    assert (out.rejected, out.unfinished) == ({}, {})


def test_service_vanishing_during_bisection_is_backpressure() -> None:
    client = FakeClient(
        rejecting({1}), script=[None, ServiceUnavailable("ConnectionError: refused")]
    )
    with pytest.raises(Backpressure, match="refused"):
        pricer(client).price(rows_of(4), keys_of(4))


# -- failures (5xx, timeouts, bad answers): maybe one record, maybe the service --


def test_record_failing_alone_gets_a_strike_per_pass_and_is_dead_lettered_at_the_last() -> None:
    prices = pricer(FakeClient(failing({2})), max_strikes=3)
    for _pass in range(2):
        out = prices.price(rows_of(4), keys_of(4))
        assert out.unfinished == {2: "service: HTTP 500: internal error"}
        assert out.rejected == {}
        assert sorted(out.results) == [0, 1, 3]

    out = prices.price(rows_of(4), keys_of(4))
    assert out.unfinished == {}
    assert out.rejected == {
        2: "service: HTTP 500: internal error "
        "(failed 3 times on its own while other records were priced)"
    }
    assert sorted(out.results) == [0, 1, 3]


def test_record_answered_once_starts_its_strikes_again() -> None:
    client = FakeClient(failing({2}))
    prices = pricer(client, max_strikes=2)
    prices.price(rows_of(4), keys_of(4))  # strike 1
    client.answer = priced  # answered this time: the strike is gone
    prices.price(rows_of(4), keys_of(4))
    client.answer = failing({2})
    out = prices.price(rows_of(4), keys_of(4))
    assert list(out.unfinished) == [2]  # strike 1 again, not 2
    assert out.rejected == {}


def test_failures_while_readyz_does_not_answer_are_backpressure() -> None:
    client = FakeClient(failing(range(4)), is_ready=False)
    with pytest.raises(Backpressure, match="/readyz does not answer"):
        pricer(client, retry_delays=(0.25,)).price(rows_of(4), keys_of(4))
    assert client.calls == [[0, 1, 2, 3], [0, 1, 2, 3]]  # no bisection
    assert client.ready_calls == 1


@pytest.mark.parametrize("count", [1, 4, 8, 64])
def test_every_record_failing_is_the_services_fault_and_no_strike_is_recorded(
    count: int,
) -> None:
    client = FakeClient(failing(range(count)))
    prices = pricer(client, max_strikes=2)
    for _pass in range(3):
        with pytest.raises(Backpressure):
            prices.price(rows_of(count), keys_of(count))

    # Back to one bad record: its first failure alone is strike 1 of 2, not its last.
    client.answer = failing({0})
    out = prices.price(rows_of(count + 1), keys_of(count + 1))
    assert list(out.unfinished) == [0]
    assert out.rejected == {}


def test_forget_drops_the_strikes_of_the_selected_records_only() -> None:
    rows = rows_of(4)
    keys = [("t", 0, 10), ("t", 0, 11), ("t", 1, 10), ("t", 1, 11)]
    prices = pricer(FakeClient(failing({0, 2})), max_strikes=2)
    prices.price(rows, keys)  # rows 0 (partition 0) and 2 (partition 1): strike 1

    prices.forget(lambda key: key[1] == 0)  # partition 0 was revoked

    out = prices.price(rows, keys)
    assert list(out.unfinished) == [0]  # forgotten: strike 1 again
    assert list(out.rejected) == [2]  # remembered: strike 2 of 2


# -- retries --


def test_retries_wait_the_configured_delays_and_then_succeed() -> None:
    wait = RecordedWait()
    client = FakeClient(
        script=[ServiceFailed("HTTP 502: bad gateway"), ServiceUnavailable("HTTP 503: loading")]
    )
    out = pricer(client, retry_delays=(0.25, 0.5, 1.0), wait=wait).price(rows_of(3), keys_of(3))
    assert sorted(out.results) == [0, 1, 2]
    assert wait.delays == [0.25, 0.5]
    assert out.calls == 3


def test_retries_use_every_configured_delay_before_giving_up() -> None:
    wait = RecordedWait()
    client = FakeClient(script=[ServiceUnavailable("HTTP 503")] * 4)
    with pytest.raises(Backpressure):
        pricer(client, retry_delays=(0.25, 0.5, 1.0), wait=wait).price(rows_of(3), keys_of(3))
    assert wait.delays == [0.25, 0.5, 1.0]
    assert len(client.calls) == 4


def test_a_stop_during_a_retry_wait_ends_retrying() -> None:
    wait = RecordedWait(stop=True)
    client = FakeClient(script=[ServiceFailed("HTTP 500")] * 3)
    with pytest.raises(Backpressure, match="stopping"):
        pricer(client, retry_delays=(0.25, 0.5), wait=wait).price(rows_of(3), keys_of(3))
    assert wait.delays == [0.25]
    assert len(client.calls) == 1
    assert client.ready_calls == 0


def test_no_rows_make_no_call() -> None:
    client = FakeClient()
    out = pricer(client).price([], [])
    assert (out.results, out.rejected, out.unfinished, out.calls) == ({}, {}, {}, 0)
    assert client.calls == []


# -- PredictionClient: every HTTP outcome classified --


class FakeResponse:
    def __init__(self, status_code: int, body: Any = None, text: str | None = None) -> None:
        self.status_code = status_code
        self._body = body
        self.text = text if text is not None else repr(body)

    def json(self) -> Any:
        if isinstance(self._body, Exception):
            raise self._body
        return self._body


class FakeSession:
    """requests.Session's post/get: returns ``response`` or raises it."""

    def __init__(self, response: FakeResponse | Exception) -> None:
        self.response = response
        self.posts: list[tuple[str, Any, float]] = []
        self.gets: list[str] = []

    def _answer(self) -> FakeResponse:
        if isinstance(self.response, Exception):
            raise self.response
        return self.response

    def post(self, url: str, *, json: Any, timeout: float) -> FakeResponse:
        self.posts.append((url, json, timeout))
        return self._answer()

    def get(self, url: str, *, timeout: float) -> FakeResponse:
        self.gets.append(url)
        return self._answer()

    def close(self) -> None:
        pass


def client_answering(response: FakeResponse | Exception) -> tuple[PredictionClient, FakeSession]:
    session = FakeSession(response)
    client = PredictionClient("http://svc:3000/", 2.5, session=session)  # type: ignore[arg-type]
    return client, session


ROWS = [{"mileage": 1}, {"mileage": 2}]
GOOD_ANSWER = [
    {"predicted_price": 9000.5, "model_tag": "ford_price:v1"},
    {"predicted_price": 9100, "model_tag": "ford_price:v1"},
]


@pytest.mark.parametrize(
    ("outcome", "expected"),
    [
        (FakeResponse(400, text="records[1].year: required"), ServiceRejected),
        (FakeResponse(422, text="records[0].mileage: must be at least 0"), ServiceRejected),
        (FakeResponse(500, text="internal error"), ServiceFailed),
        (FakeResponse(502, text="bad gateway"), ServiceFailed),
        (FakeResponse(413, text="payload too large"), ServiceFailed),
        (requests.Timeout("read timed out"), ServiceFailed),
        (FakeResponse(404, text="not found"), ServiceUnavailable),
        (FakeResponse(408, text="request timeout"), ServiceUnavailable),
        (FakeResponse(429, text="too many requests"), ServiceUnavailable),
        (FakeResponse(503, text="model loading"), ServiceUnavailable),
        (requests.ConnectionError("connection refused"), ServiceUnavailable),
    ],
    ids=lambda v: (
        str(v.status_code)
        if isinstance(v, FakeResponse)
        else v.__name__
        if isinstance(v, type)
        else type(v).__name__
    ),
)
def test_predict_classifies_every_outcome(
    outcome: FakeResponse | Exception, expected: type[Exception]
) -> None:
    client, _ = client_answering(outcome)
    with pytest.raises(expected) as raised:
        client.predict(ROWS)
    assert type(raised.value) is expected


def test_rejection_message_carries_the_services_reason() -> None:
    client, _ = client_answering(FakeResponse(422, text="records[0].mileage: must be at least 0"))
    with pytest.raises(ServiceRejected, match=r"HTTP 422: records\[0\]\.mileage"):
        client.predict(ROWS)


def test_predict_posts_the_rows_and_returns_the_checked_answer() -> None:
    client, session = client_answering(FakeResponse(200, GOOD_ANSWER))
    assert client.predict(ROWS) == GOOD_ANSWER
    assert session.posts == [("http://svc:3000/predict_batch", {"records": ROWS}, 2.5)]


def test_with_explain_the_call_asks_for_explanations_with_its_own_timeout() -> None:
    session = FakeSession(FakeResponse(200, GOOD_ANSWER))
    client = PredictionClient(
        "http://svc:3000", 2.5, session=session, explain=True, explain_timeout_s=30.0,  # type: ignore[arg-type]
    )  # fmt: skip
    assert client.predict(ROWS) == GOOD_ANSWER
    assert session.posts == [
        ("http://svc:3000/predict_batch", {"records": ROWS, "explain": True}, 30.0)
    ]
    client.ready()  # a readiness probe is no explained call: it keeps the plain timeout
    assert client.timeout_s == 2.5


def test_an_explained_call_that_times_out_says_which_timeout() -> None:
    session = FakeSession(requests.Timeout("read timed out"))
    client = PredictionClient(
        "http://svc:3000", 2.5, session=session, explain=True, explain_timeout_s=30.0,  # type: ignore[arg-type]
    )  # fmt: skip
    with pytest.raises(ServiceFailed, match="no answer within 30 s"):
        client.predict(ROWS)


@pytest.mark.parametrize(
    "answer",
    [
        GOOD_ANSWER[:1],  # one price for two records
        [*GOOD_ANSWER, GOOD_ANSWER[0]],  # three prices for two records
        {"predictions": GOOD_ANSWER},  # not a list
        [GOOD_ANSWER[0], {"model_tag": "ford_price:v1"}],  # an item without a price
    ],
    ids=["too-short", "too-long", "not-a-list", "item-without-price"],
)
def test_a_200_with_a_wrong_answer_is_a_service_failure(answer: Any) -> None:
    client, _ = client_answering(FakeResponse(200, answer))
    with pytest.raises(ServiceFailed):
        client.predict(ROWS)


def test_a_200_that_is_not_json_is_a_service_failure() -> None:
    client, _ = client_answering(FakeResponse(200, ValueError("Expecting value"), "<html>"))
    with pytest.raises(ServiceFailed, match="not JSON"):
        client.predict(ROWS)


@pytest.mark.parametrize(
    "item",
    [
        {"model_tag": "m:1"},
        {"predicted_price": None, "model_tag": "m:1"},
        {"predicted_price": "9000", "model_tag": "m:1"},
        {"predicted_price": True, "model_tag": "m:1"},
        {"predicted_price": math.nan, "model_tag": "m:1"},
        {"predicted_price": math.inf, "model_tag": "m:1"},
        {"predicted_price": 9000.0},
        {"predicted_price": 9000.0, "model_tag": 1},
        [9000.0, "m:1"],
        9000.0,
    ],
    ids=[
        "no-price", "null-price", "string-price", "bool-price", "nan-price", "inf-price",
        "no-tag", "int-tag", "list-item", "bare-number",
    ],
)  # fmt: skip
def test_checked_answer_refuses_a_malformed_item(item: Any) -> None:
    with pytest.raises(ServiceFailed):
        checked_answer([GOOD_ANSWER[0], item], 2)


def test_checked_answer_refuses_a_wrong_length_and_says_so() -> None:
    with pytest.raises(ServiceFailed, match="answered 1 items for 2 records"):
        checked_answer(GOOD_ANSWER[:1], 2)


def test_checked_answer_accepts_ints_and_floats() -> None:
    assert checked_answer(GOOD_ANSWER, 2) == GOOD_ANSWER


@pytest.mark.parametrize(
    ("outcome", "ready"),
    [
        (FakeResponse(200), True),
        (FakeResponse(503), False),
        (FakeResponse(404), False),
        (requests.ConnectionError("refused"), False),
        (requests.Timeout("slow"), False),
    ],
    ids=["200", "503", "404", "refused", "timeout"],
)
def test_ready_is_true_only_for_a_200_from_readyz(
    outcome: FakeResponse | Exception, ready: bool
) -> None:
    client, session = client_answering(outcome)
    assert client.ready() is ready
    assert session.gets == ["http://svc:3000/readyz"]
