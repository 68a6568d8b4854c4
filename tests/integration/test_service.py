"""Contract tests against the real BentoML service (``bentoml serve`` as a child process)."""

import copy
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import requests
import yaml

from streaming_ml.config import REPO_ROOT
from streaming_ml.errors import ServiceUnavailableError
from streaming_ml.schema.listing import FEATURES, max_year
from streaming_ml.service.api import EXAMPLE_INPUT, EXAMPLE_LISTING, EXAMPLE_RECORDS
from streaming_ml.service.launcher import ServiceProcess
from streaming_ml.system.processes import port_free
from tests.fixtures.ports import free_port

pytestmark = pytest.mark.integration


def post(url: str, body: Any) -> requests.Response:
    return requests.post(url, json=body, timeout=30)


def prices(service: str, body: dict[str, Any]) -> list[float]:
    response = post(f"{service}/predict", body)
    assert response.status_code == 200, response.text
    return response.json()


def problems_named(response: requests.Response) -> set[str]:
    """Every field path a 4xx reply names, from its ``detail`` list."""
    assert 400 <= response.status_code < 500, (response.status_code, response.text)
    body = response.json()
    assert isinstance(body["error"], str) and body["error"]
    return {".".join(str(part) for part in item["loc"]) for item in body["detail"]}


# --- The reference request ------------------------------------------------------------


def test_reference_body_returns_the_models_prices(
    prediction_service: str, trained_model_tag: str
) -> None:
    from streaming_ml.models.loader import load_price_model

    got = prices(prediction_service, EXAMPLE_INPUT)

    assert len(got) == 2
    assert all(isinstance(p, float) and math.isfinite(p) and p > 0 for p in got)
    direct = load_price_model(trained_model_tag).predict(pd.DataFrame(EXAMPLE_INPUT))
    assert got == pytest.approx(direct.tolist(), rel=1e-6)


def readme_curl_body() -> bytes:
    """The body of the README's reference curl, byte for byte as a user pastes it."""
    readme = (REPO_ROOT / "README.md").read_text()
    start = "curl -s -X POST http://127.0.0.1:3000/predict -H 'Content-Type: application/json' -d '"
    return readme.split(start, 1)[1].split("'\n", 1)[0].encode()


def test_the_readme_curl_answer_is_byte_for_byte_a_plain_list_of_prices(
    prediction_service: str, trained_model_tag: str
) -> None:
    """Explanations are off unless asked: the reference answer stays exactly what it was
    (the model's prices as a JSON array, nothing else), whatever the model."""
    from streaming_ml.models.loader import load_price_model

    body = readme_curl_body()
    columns = json.loads(body)
    records = [dict(zip(columns, row, strict=True)) for row in zip(*columns.values(), strict=True)]
    expected = json.dumps(load_price_model(trained_model_tag).predict_records(records).tolist())

    response = requests.post(
        f"{prediction_service}/predict", data=body,
        headers={"Content-Type": "application/json"}, timeout=30,
    )  # fmt: skip
    explicit_off = post(f"{prediction_service}/predict", dict(columns, explain=False))

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.content == expected.encode()
    assert explicit_off.content == response.content


def test_price_column_is_ignored(prediction_service: str) -> None:
    reference = prices(prediction_service, EXAMPLE_INPUT)
    without_price = {k: v for k, v in EXAMPLE_INPUT.items() if k != "price"}

    assert prices(prediction_service, dict(EXAMPLE_INPUT, price=[1, 999_999])) == reference
    assert prices(prediction_service, without_price) == reference
    assert prices(prediction_service, dict(EXAMPLE_INPUT, colour=["red", "blue"])) == reference


def test_rows_are_priced_independently_and_in_order(prediction_service: str) -> None:
    reference = prices(prediction_service, EXAMPLE_INPUT)
    reversed_body = {k: v[::-1] for k, v in EXAMPLE_INPUT.items()}
    first_row = {k: v[:1] for k, v in EXAMPLE_INPUT.items()}

    assert prices(prediction_service, reversed_body) == reference[::-1]
    assert prices(prediction_service, first_row) == reference[:1]
    assert reference[0] != reference[1]  # two different cars, so order is observable


def test_unknown_model_name_is_priced(prediction_service: str) -> None:
    body = dict(EXAMPLE_INPUT, model=["Ford Capri Reborn", "EcoSport"])

    got = prices(prediction_service, body)

    assert len(got) == 2 and all(math.isfinite(p) and p > 0 for p in got)


def test_empty_columns_give_no_prices(prediction_service: str) -> None:
    assert prices(prediction_service, {name: [] for name in FEATURES}) == []


# --- The bridge's batch endpoint ---------------------------------------------------------


def test_batch_matches_predict_and_names_the_model(
    prediction_service: str, trained_model_tag: str
) -> None:
    reference = prices(prediction_service, EXAMPLE_INPUT)
    records = EXAMPLE_RECORDS + EXAMPLE_RECORDS[::-1]

    response = post(f"{prediction_service}/predict_batch", {"records": records})

    assert response.status_code == 200, response.text
    body = response.json()
    assert [item["model_tag"] for item in body] == [trained_model_tag] * 4
    got = [item["predicted_price"] for item in body]
    assert got == pytest.approx(reference + reference[::-1], rel=1e-9)
    assert body[0] == {
        "predicted_price": got[0], "model_tag": trained_model_tag, "arm": "champion",
        "model_name": trained_model_tag.split(":")[0],
        "model_version": trained_model_tag.split(":")[1],
    }  # fmt: skip


# --- Explanations ------------------------------------------------------------------------

PENNY_MILLIONTH = 1e-6  # pounds


def explanation_total(explanation: dict[str, Any]) -> float:
    return explanation["base_price"] + sum(explanation["contributions"].values())


def test_explained_batch_prices_are_the_same_prices_and_add_up_for_random_listings(
    prediction_service: str,
) -> None:
    from streaming_ml.datasets.synthetic import generate_listing_records

    records = generate_listing_records(300, seed=1501)
    plain = post(f"{prediction_service}/predict_batch", {"records": records}).json()

    response = post(f"{prediction_service}/predict_batch", {"records": records, "explain": True})

    assert response.status_code == 200, response.text
    explained = response.json()
    assert [i["predicted_price"] for i in explained] == [i["predicted_price"] for i in plain]
    for item in explained:
        assert list(item["explanation"]["contributions"]) == list(FEATURES)
        assert abs(explanation_total(item["explanation"]) - item["predicted_price"]) < (
            PENNY_MILLIONTH
        )
    assert len({item["explanation"]["base_price"] for item in explained}) == 1


def test_explained_predict_answers_each_price_with_its_explanation(
    prediction_service: str,
) -> None:
    reference = prices(prediction_service, EXAMPLE_INPUT)

    answer = post(f"{prediction_service}/predict", dict(EXAMPLE_INPUT, explain=True)).json()

    assert [item["predicted_price"] for item in answer] == reference
    for item in answer:
        assert abs(explanation_total(item["explanation"]) - item["predicted_price"]) < (
            PENNY_MILLIONTH
        )


def test_explain_gives_the_full_decomposition_with_the_feature_values(
    prediction_service: str, trained_model_tag: str
) -> None:
    response = post(f"{prediction_service}/explain", {"listing": EXAMPLE_LISTING})

    assert response.status_code == 200, response.text
    body = response.json()
    (explanation,) = body["explanations"]
    assert body["listing"] == EXAMPLE_LISTING
    assert (explanation["arm"], explanation["model_tag"]) == ("champion", trained_model_tag)
    assert explanation["predicted_price"] == prices(prediction_service, EXAMPLE_INPUT)[1]
    values = {c["feature"]: c["value"] for c in explanation["contributions"]}
    assert values == EXAMPLE_LISTING
    total = explanation["base_price"] + sum(c["amount"] for c in explanation["contributions"])
    assert abs(total - explanation["predicted_price"]) < PENNY_MILLIONTH


def test_a_pair_differing_only_in_mileage_puts_the_difference_on_mileage(
    prediction_service: str,
) -> None:
    """The controlled pair: explained against each other, every feature the two listings
    share contributes exactly nothing, and mileage carries the whole price difference."""
    import random

    from streaming_ml.datasets.synthetic import generate_listing_records

    rng = random.Random(1502)
    for listing in generate_listing_records(20, seed=1502):
        twin = dict(listing, mileage=listing["mileage"] + rng.randint(1_000, 40_000))
        pair = {name: [listing[name], twin[name]] for name in FEATURES}
        price, twin_price = prices(prediction_service, pair)

        response = post(f"{prediction_service}/explain", {"listing": twin, "reference": listing})

        assert response.status_code == 200, response.text
        (explanation,) = response.json()["explanations"]
        amounts = {c["feature"]: c["amount"] for c in explanation["contributions"]}
        difference = twin_price - price
        assert explanation["method"] == "reference"
        assert (explanation["base_price"], explanation["predicted_price"]) == (price, twin_price)
        assert abs(amounts.pop("mileage") - difference) <= PENNY_MILLIONTH * abs(difference)
        assert set(amounts.values()) == {0.0}


def test_explaining_against_a_reference_adds_up_whatever_differs(
    prediction_service: str,
) -> None:
    from streaming_ml.datasets.synthetic import generate_listing_records

    listings = generate_listing_records(10, seed=1503)
    for listing, reference in zip(listings[::2], listings[1::2], strict=True):
        (explanation,) = post(
            f"{prediction_service}/explain", {"listing": listing, "reference": reference}
        ).json()["explanations"]
        total = explanation["base_price"] + sum(c["amount"] for c in explanation["contributions"])
        assert abs(total - explanation["predicted_price"]) < PENNY_MILLIONTH


EXPLAIN_BAD = {
    "negative mileage": ({"listing": dict(EXAMPLE_LISTING, mileage=-1)}, "listing.mileage"),
    "missing field": (
        {"listing": {k: v for k, v in EXAMPLE_LISTING.items() if k != "year"}},
        "listing.year",
    ),
    "bad reference": (
        {"listing": EXAMPLE_LISTING, "reference": dict(EXAMPLE_LISTING, tax="free")},
        "reference.tax",
    ),
    "no listing": ({"listing_id": 3}, "listing"),
    "listing not an object": ({"listing": [1, 2]}, "listing"),
    "explain as text": ({"records": EXAMPLE_RECORDS, "explain": "please"}, "explain"),
}


@pytest.mark.parametrize("body, field", EXPLAIN_BAD.values(), ids=EXPLAIN_BAD.keys())
def test_bad_explain_input_is_rejected_naming_the_field(
    prediction_service: str, body: dict[str, Any], field: str
) -> None:
    path = "/predict_batch" if "records" in body else "/explain"

    response = post(f"{prediction_service}{path}", body)

    assert field in problems_named(response)


def test_batch_of_no_records_is_empty(prediction_service: str) -> None:
    response = post(f"{prediction_service}/predict_batch", {"records": []})

    assert response.status_code == 200 and response.json() == []


def test_model_info_reports_the_served_model(
    prediction_service: str, trained_model_tag: str
) -> None:
    response = requests.post(f"{prediction_service}/model_info", timeout=10)

    assert response.status_code == 200, response.text
    info = response.json()
    assert info["tag"] == trained_model_tag
    assert info["features"] == list(FEATURES)
    assert isinstance(info["metadata"], dict) and info["metadata"]


# --- Bad input: a 4xx naming the field ---------------------------------------------------


def _without(name: str) -> dict[str, Any]:
    return {k: v for k, v in EXAMPLE_INPUT.items() if k != name}


def _with(name: str, values: Any) -> dict[str, Any]:
    return dict(copy.deepcopy(EXAMPLE_INPUT), **{name: values})


BAD_COLUMNS = {
    "missing column": (_without("year"), "year"),
    "lists of different lengths": (_with("mileage", [40000]), "mileage"),
    "number as text": (_with("year", ["2014", 2019]), "year.0"),
    "text as number": (_with("engineSize", [2.0, "big"]), "engineSize.1"),
    "negative mileage": (_with("mileage", [40000, -1]), "mileage.1"),
    "year in the future": (_with("year", [2014, max_year() + 1]), "year.1"),
    "year too old": (_with("year", [1900, 2019]), "year.0"),
    "fractional year": (_with("year", [2014.5, 2019]), "year.0"),
    "null value": (_with("tax", [None, 150]), "tax.0"),
    "blank category": (_with("transmission", ["  ", "Manual"]), "transmission.0"),
    "category not a string": (_with("fuelType", [1, "Petrol"]), "fuelType.0"),
    "boolean number": (_with("mpg", [True, 44.1]), "mpg.0"),
    "negative engine size": (_with("engineSize", [-1.0, 1.0]), "engineSize.0"),
    "column not a list": (_with("mpg", 50.4), "mpg"),
    "engine size underflowing float32": (_with("engineSize", [1e-300, 1.0]), "engineSize.0"),
    "NUL in a model name": (_with("model", ["Fie\x00sta", "Focus"]), "model.0"),
    "bidi override in a gearbox": (
        _with("transmission", ["\u202eManual", "Manual"]),
        "transmission.0",
    ),
    "Debezium TOAST placeholder": (
        _with("model", ["__debezium_unavailable_value", "Focus"]),
        "model.0",
    ),
    "megabyte model name": (_with("model", ["F" * 1_000_000, "Focus"]), "model.0"),
}


@pytest.mark.parametrize("body, field", BAD_COLUMNS.values(), ids=BAD_COLUMNS.keys())
def test_bad_predict_input_is_rejected_naming_the_field(
    prediction_service: str, body: dict[str, Any], field: str
) -> None:
    response = post(f"{prediction_service}/predict", body)

    assert field in problems_named(response)


def test_every_bad_value_is_reported_at_once(prediction_service: str) -> None:
    body = _with("mileage", [-5, 1400])
    body["year"] = [2014, max_year() + 5]

    response = post(f"{prediction_service}/predict", body)

    assert problems_named(response) == {"mileage.0", "year.1"}
    assert "mileage[0]" in response.json()["error"] and "year[1]" in response.json()["error"]


def _records_with(index: int, **changes: Any) -> list[dict[str, Any]]:
    records = [dict(record) for record in EXAMPLE_RECORDS * 2]
    records[index].update(changes)
    return records


BAD_RECORDS = {
    "negative mileage": (_records_with(2, mileage=-3), "records.2.mileage"),
    "missing field": (
        [*EXAMPLE_RECORDS, {"model": "Fiesta"}],
        "records.2.year",
    ),
    "wrong type": (_records_with(1, tax="free"), "records.1.tax"),
    "future year": (_records_with(3, year=max_year() + 1), "records.3.year"),
    "record not an object": ([EXAMPLE_RECORDS[0], [1, 2]], "records.1"),
    "records not a list": ({"a": 1}, "records"),
}


@pytest.mark.parametrize("records, field", BAD_RECORDS.values(), ids=BAD_RECORDS.keys())
def test_bad_batch_is_rejected_naming_record_and_field(
    prediction_service: str, records: Any, field: str
) -> None:
    response = post(f"{prediction_service}/predict_batch", {"records": records})

    assert field in problems_named(response)


def test_batch_problems_are_listed_in_record_order(prediction_service: str) -> None:
    records = _records_with(3, mileage=-1)
    records[1]["engineSize"] = 1598.0  # cc, not litres

    response = post(f"{prediction_service}/predict_batch", {"records": records})

    assert problems_named(response) == {"records.1.engineSize", "records.3.mileage"}
    assert response.json()["error"].index("records[1]") < response.json()["error"].index(
        "records[3]"
    )


REPEATED_KEY = {
    "predict column": (
        "/predict",
        json.dumps(EXAMPLE_INPUT)[:-1] + ', "engineSize": [1598, 999]}',
        "engineSize",
    ),
    "predict_batch record field": (
        "/predict_batch",
        json.dumps({"records": EXAMPLE_RECORDS})[:-3] + ', "model": "Mustang"}]}',
        "records.1.model",
    ),
}


@pytest.mark.parametrize("path, body, field", REPEATED_KEY.values(), ids=REPEATED_KEY.keys())
def test_a_repeated_json_key_is_refused_with_400_naming_it(
    prediction_service: str, path: str, body: str, field: str
) -> None:
    """Which of two equal keys wins differs between parsers: never guess."""
    response = requests.post(
        f"{prediction_service}{path}",
        data=body.encode(),
        headers={"Content-Type": "application/json"},
        timeout=30,
    )

    assert response.status_code == 400, response.text
    assert problems_named(response) == {field}
    assert "appears 2 times" in response.json()["detail"][0]["msg"]


GARBAGE = {
    "empty body": (b"", "application/json"),
    "not json": (b"price me", "application/json"),
    "truncated json": (b'{"model": ["Fiesta"', "application/json"),
    "json array": (b"[1, 2, 3]", "application/json"),
    "json null": (b"null", "application/json"),
    "json string": (b'"hello"', "application/json"),
    "binary": (bytes(range(256)), "application/json"),
    "deep nesting": (b"[" * 10_000 + b"]" * 10_000, "application/json"),
    "huge number": (b'{"year": [1e999]}', "application/json"),
    "form body": (b"model=Fiesta&year=2017", "application/x-www-form-urlencoded"),
    "text body": (b"Fiesta,2017", "text/plain"),
    "multipart without boundary": (b"garbage", "multipart/form-data"),
    "multipart with boundary": (b"--xx\r\n\r\n--xx--\r\n", "multipart/form-data; boundary=xx"),
    "pickle": (b"\x80\x04K\x01.", "application/vnd.bentoml+pickle"),
}


@pytest.mark.parametrize("path", ["/predict", "/predict_batch", "/explain"])
@pytest.mark.parametrize("body, content_type", GARBAGE.values(), ids=GARBAGE.keys())
def test_garbage_bodies_get_a_4xx_never_a_5xx(
    prediction_service: str, path: str, body: bytes, content_type: str
) -> None:
    response = requests.post(
        f"{prediction_service}{path}", data=body, headers={"Content-Type": content_type}, timeout=30
    )

    assert 400 <= response.status_code < 500, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json")
    json.dumps(response.json())  # a JSON error body, whatever the input


def test_service_still_answers_after_garbage(prediction_service: str) -> None:
    for body, content_type in GARBAGE.values():
        requests.post(
            f"{prediction_service}/predict",
            data=body,
            headers={"Content-Type": content_type},
            timeout=30,
        )

    assert len(prices(prediction_service, EXAMPLE_INPUT)) == 2


# --- Limits: content type, body size, rows, concurrency -----------------------------------


def _records(n: int) -> dict[str, Any]:
    return {"records": [EXAMPLE_RECORDS[i % len(EXAMPLE_RECORDS)] for i in range(n)]}


NOT_JSON = {
    "text/plain": {"Content-Type": "text/plain"},
    "no content type": {},
    "form": {"Content-Type": "application/x-www-form-urlencoded"},
}


@pytest.mark.parametrize("headers", NOT_JSON.values(), ids=NOT_JSON.keys())
def test_a_body_that_is_not_declared_json_is_refused_with_415(
    prediction_service: str, headers: dict[str, str]
) -> None:
    """A web page's "simple" cross-origin POST (no preflight) must not reach the model."""
    response = requests.post(
        f"{prediction_service}/predict", data=json.dumps(EXAMPLE_INPUT), headers=headers, timeout=10
    )
    assert response.status_code == 415, response.text
    assert "application/json" in response.json()["error"]


def test_json_with_a_charset_is_accepted(prediction_service: str) -> None:
    response = requests.post(
        f"{prediction_service}/predict",
        data=json.dumps(EXAMPLE_INPUT).encode(),
        headers={"Content-Type": "application/json; charset=utf-8"},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    assert len(response.json()) == 2


def post_with_content_types(service: str, types: list[str]) -> tuple[int, Any]:
    """POST the example to /predict with ``Content-Type`` repeated once per entry of
    ``types`` (``requests`` keeps one value per header, ``http.client`` sends each)."""
    import http.client
    from urllib.parse import urlsplit

    url = urlsplit(service)
    body = json.dumps(EXAMPLE_INPUT).encode()
    connection = http.client.HTTPConnection(url.hostname or "", url.port, timeout=10)
    try:
        connection.putrequest("POST", "/predict")
        for content_type in types:
            connection.putheader("Content-Type", content_type)
        connection.putheader("Content-Length", str(len(body)))
        connection.endheaders(body)
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def test_a_repeated_content_type_is_judged_by_the_one_the_api_reads(
    prediction_service: str,
) -> None:
    """The guard and BentoML (Starlette) both read the first value: a body cannot pass
    the guard as JSON and be read as something else, nor the other way round."""
    status, answer = post_with_content_types(prediction_service, ["text/plain", "application/json"])
    assert status == 415, answer
    assert "application/json" in answer["error"]
    status, answer = post_with_content_types(prediction_service, ["application/json", "text/plain"])
    assert status == 200, answer
    assert len(answer) == 2


def test_a_body_over_the_size_limit_is_refused_unread(prediction_service: str) -> None:
    from streaming_ml.config import Settings

    limit = Settings().service_max_body_bytes
    body = b" " * (limit + 1)  # never parsed: refused on its Content-Length
    response = requests.post(
        f"{prediction_service}/predict_batch", data=body,
        headers={"Content-Type": "application/json"}, timeout=30,
    )  # fmt: skip
    assert response.status_code == 413, response.text
    assert "SML_SERVICE_MAX_BODY_BYTES" in response.json()["error"]
    assert requests.get(f"{prediction_service}/readyz", timeout=5).status_code == 200


def test_a_chunked_body_is_refused_with_411(prediction_service: str) -> None:
    chunks = iter([json.dumps(EXAMPLE_INPUT).encode()])  # a generator body goes chunked
    response = requests.post(
        f"{prediction_service}/predict", data=chunks,
        headers={"Content-Type": "application/json"}, timeout=10,
    )  # fmt: skip
    assert response.status_code == 411, response.text


def test_more_rows_than_the_limit_get_413_and_the_limit_itself_is_priced(
    prediction_service: str,
) -> None:
    from streaming_ml.config import Settings

    limit = Settings().service_max_rows
    over = post(f"{prediction_service}/predict_batch", _records(limit + 1))
    assert over.status_code == 413, over.text
    assert "SML_SERVICE_MAX_ROWS" in over.json()["error"]
    columns = {k: [v[0]] * (limit + 1) for k, v in EXAMPLE_INPUT.items()}
    assert post(f"{prediction_service}/predict", columns).status_code == 413
    at_limit = post(f"{prediction_service}/predict_batch", _records(limit))
    assert at_limit.status_code == 200 and len(at_limit.json()) == limit


def test_requests_over_the_concurrency_limit_get_429_and_the_rest_are_served(
    trained_model_tag: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    monkeypatch.setenv("SML_SERVICE_MAX_CONCURRENCY", "1")
    service = ServiceProcess(
        host="127.0.0.1", port=free_port(), model_tag=trained_model_tag,
        log_path=tmp_path / "service.log",
    )  # fmt: skip
    body = json.dumps(_records(10_000)).encode()  # ~100 ms of pricing each
    statuses: list[int] = []
    retry_after: list[str | None] = []
    start = threading.Barrier(8)

    def call() -> None:
        start.wait()
        response = requests.post(
            f"{service.url}/predict_batch", data=body,
            headers={"Content-Type": "application/json"}, timeout=60,
        )  # fmt: skip
        statuses.append(response.status_code)
        if response.status_code == 429:
            retry_after.append(response.headers.get("retry-after"))

    with service:
        threads = [threading.Thread(target=call) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
    assert set(statuses) <= {200, 429} and len(statuses) == 8, statuses
    assert statuses.count(200) >= 1 and statuses.count(429) >= 1, statuses
    assert set(retry_after) == {"1"}


# --- Health, readiness, metrics --------------------------------------------------------


@pytest.mark.parametrize("path", ["/healthz", "/livez", "/readyz"])
def test_health_endpoints_answer(prediction_service: str, path: str) -> None:
    assert requests.get(f"{prediction_service}{path}", timeout=10).status_code == 200


def test_metrics_count_predict_requests(prediction_service: str) -> None:
    prices(prediction_service, EXAMPLE_INPUT)

    response = requests.get(f"{prediction_service}/metrics", timeout=10)

    assert response.status_code == 200
    request_lines = [
        line
        for line in response.text.splitlines()
        if line.startswith("bentoml_service_request_total") and 'endpoint="/predict"' in line
    ]
    assert request_lines, response.text[:2000]
    assert any('http_response_code="200"' in line for line in request_lines)


# --- The process helper ------------------------------------------------------------------


def test_missing_model_fails_fast_with_a_hint(tmp_path: Path) -> None:
    service = ServiceProcess(
        port=free_port(), model_tag="ford_price:doesnotexist", log_path=tmp_path / "svc.log"
    )

    # The process exits (not a worker crashing and restarting until the start times out).
    exited = r"exited with code .*streaming-ml train"
    with pytest.raises(ServiceUnavailableError, match=exited), service:
        pass

    assert service.log_tail(), "the log explains the failure"


def test_a_stored_model_of_other_inputs_fails_fast_with_a_retrain_hint(
    trained_model_tag: str, tmp_path: Path
) -> None:
    from tests.fixtures.model import corrupt_copy

    other_inputs = corrupt_copy(trained_model_tag, inputs=["year", "mileage"])
    service = ServiceProcess(
        port=free_port(), model_tag=other_inputs, log_path=tmp_path / "svc.log"
    )
    with pytest.raises(ServiceUnavailableError, match=r"exited with code"), service:
        pass
    assert "retrain with `streaming-ml train`" in service.log_tail(60)


def test_stop_leaves_no_process_and_frees_the_port(trained_model_tag: str, tmp_path: Path) -> None:
    port = free_port()
    service = ServiceProcess(port=port, model_tag=trained_model_tag, log_path=tmp_path / "s.log")

    with service:
        assert requests.get(f"{service.url}/readyz", timeout=10).status_code == 200
        processes = service.processes()
        assert len(processes) >= 2, "the arbiter and at least one worker"

    # Neither the arbiter nor any worker is left (a zombie awaiting its reaper has exited).
    assert [pid for pid in processes if running(pid)] == []
    assert port_free("127.0.0.1", port)


def running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_busy_port_is_refused(prediction_service: str, trained_model_tag: str) -> None:
    port = int(prediction_service.rsplit(":", 1)[1])

    with pytest.raises(ServiceUnavailableError, match="already in use"):
        ServiceProcess(port=port, model_tag=trained_model_tag).start()


# --- Packaging --------------------------------------------------------------------------


def test_bentoml_build_packages_service_and_model(trained_model_tag: str) -> None:
    env = dict(os.environ, BENTOML_DO_NOT_TRACK="true")
    build = subprocess.run(
        [sys.executable, "-m", "bentoml", "build", "--output", "tag"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert build.returncode == 0, build.stdout + build.stderr
    name, version = build.stdout.strip().splitlines()[-1].removeprefix("__tag__:").split(":")

    bento = Path(os.environ["BENTOML_HOME"]) / "bentos" / name / version
    info = yaml.safe_load((bento / "bento.yaml").read_text())
    assert info["service"] == "service:PricePredictor"
    assert [m["tag"].split(":")[0] for m in info["models"]] == ["ford_price"]
    assert (bento / "src" / "service.py").is_file()
    assert (bento / "src" / "src" / "streaming_ml" / "service" / "predictor.py").is_file()
    assert not (bento / "src" / "tests").exists()
