"""Request validation behind the service: one rule source (data.check_value), fast path included."""

import datetime as dt
import json
import math
from typing import Any

import pytest
from pydantic import ValidationError

from streaming_ml.schema.listing import COLUMNS_BY_NAME, FEATURE_COLUMNS, FEATURES, check_value
from streaming_ml.service.api import (
    EXAMPLE_INPUT,
    EXAMPLE_RECORDS,
    PredictBatchRequest,
    PredictRequest,
    Problem,
    duplicate_keys,
)
from streaming_ml.service.validation import (
    InvalidRequestError,
    column_problems,
    validate_columns,
    validate_records,
)

TODAY = dt.date(2026, 6, 1)

# Values around every bound and of every wrong type, per column kind.
PROBES: list[Any] = [
    None, True, False, "", " ", "12", "Fiesta", [], {}, math.nan, math.inf, -math.inf,
    -1, -0.5, 0, 0.0, 0.5, 1, 1.5, 9.99, 10, 10.01, 500, 500.5, 999, 1000, 1001,
    1969, 1970, 2014, 2014.0, 2014.5, 2027, 2028, 999_999, 1_000_000, 1_000_001, 10**400,
]  # fmt: skip


@pytest.mark.parametrize("column", FEATURE_COLUMNS, ids=lambda c: c.name)
@pytest.mark.parametrize("rows", [1, 200], ids=["loop", "vectorised"])
def test_column_problems_agree_with_check_value(column: Any, rows: int) -> None:
    # Each probe is embedded among valid values so both the per-value loop and
    # the vectorised pre-check (used from 32 rows on) see it.
    valid = EXAMPLE_INPUT[column.name][0]
    for probe in PROBES:
        values = [valid] * (rows - 1) + [probe]
        expected = check_value(column, probe, TODAY)

        got = column_problems(column, values, TODAY)

        assert got == ([(rows - 1, expected)] if expected else []), (column.name, probe)


def test_vectorised_path_reports_every_bad_row_in_order() -> None:
    mileage = COLUMNS_BY_NAME["mileage"]
    values = [100] * 100
    values[3], values[50], values[99] = -1, 2.5, 1_000_001

    got = column_problems(mileage, values, TODAY)

    assert [row for row, _ in got] == [3, 50, 99]
    assert got[0][1] == check_value(mileage, -1, TODAY)


def test_example_input_is_valid() -> None:
    assert validate_columns({n: EXAMPLE_INPUT[n] for n in FEATURES}, TODAY) == 2
    validate_records(EXAMPLE_RECORDS, TODAY)


def test_lists_of_different_lengths_name_the_column() -> None:
    columns = {n: list(EXAMPLE_INPUT[n]) for n in FEATURES}
    columns["tax"] = [160]

    with pytest.raises(InvalidRequestError) as caught:
        validate_columns(columns, TODAY)

    assert [p.loc for p in caught.value.problems] == [("tax",)]
    assert "tax has 1 values but model has 2" in str(caught.value)


def test_bad_records_name_index_and_field_in_record_order() -> None:
    records = [dict(r) for r in EXAMPLE_RECORDS * 2]
    records[3]["year"] = 2100
    records[1].pop("mpg")

    with pytest.raises(InvalidRequestError) as caught:
        validate_records(records, TODAY)

    assert [p.loc for p in caught.value.problems] == [
        ("records", 1, "mpg"),
        ("records", 3, "year"),
    ]
    assert caught.value.to_json()["detail"][1] == {
        "loc": ["records", 3, "year"],
        "msg": "must be at most 2027, got 2100",
        "type": "value_error",
    }
    assert "records[1].mpg is missing" in str(caught.value)


def test_problem_paths_read_like_json_paths() -> None:
    assert Problem(("records", 2, "mileage"), "x").path == "records[2].mileage"
    assert Problem(("year", 0), "x").path == "year[0]"
    assert Problem((), "x").path == "body"


def test_error_reply_is_capped_for_huge_bodies() -> None:
    problems = [Problem(("mileage", i), "must be at least 0, got -1") for i in range(10_000)]

    body = InvalidRequestError(problems).to_json()

    assert len(body["detail"]) == 50
    assert "(and 9995 more)" in body["error"]


def test_request_models_ignore_extra_keys() -> None:
    request = PredictRequest.model_validate(dict(EXAMPLE_INPUT, colour=["red", "blue"]))
    batch = PredictBatchRequest.model_validate({"records": EXAMPLE_RECORDS, "trace": 1})

    assert set(request.model_dump()) == {*FEATURES, "explain"}
    assert request.explain is False and batch.explain is False  # off unless asked
    assert batch.records[0]["key"] == 0  # extra record keys reach the service untouched


def test_request_schema_documents_every_feature_with_an_example() -> None:
    schema = PredictRequest.model_json_schema()

    assert set(schema["required"]) == set(FEATURES)
    for name in FEATURES:
        assert schema["properties"][name]["description"]
        assert schema["properties"][name]["examples"] == [EXAMPLE_INPUT[name]]


def test_model_info_names_the_training_file_but_never_its_path() -> None:
    from streaming_ml.models.store import without_paths

    metadata = {
        "source": "csv", "path": "/home/someone/secret/ford_train.csv",
        "cv": {"rmse": 1133.0}, "runs": [{"path": "/tmp/x/y.csv"}],
    }  # fmt: skip
    cleaned = without_paths(metadata)
    assert cleaned == {
        "source": "csv", "file": "ford_train.csv", "cv": {"rmse": 1133.0},
        "runs": [{"file": "y.csv"}],
    }  # fmt: skip
    assert "/" not in json.dumps(cleaned)


# --- Explanations (the Predictor with real models) ---------------------------------------


@pytest.fixture(scope="module")
def two_models(trained_model_tag: str) -> tuple[Any, Any]:
    """The fixture model and a cut of its first 40 trees: two models that price apart."""
    from streaming_ml.models.booster import PriceModel
    from streaming_ml.models.loader import load_price_model

    full = load_price_model(trained_model_tag)
    cut = PriceModel(full.booster[:40], full.spec, tag="ford_price:cut")
    return full, cut


def lineup_of(*models: Any, split: float = 50.0) -> Any:
    from streaming_ml.service.lineup import Lineup, ServedModel

    served = [ServedModel(m, {"tag": m.tag}) for m in models]
    return Lineup(served[0], served[1], split, served[2] if len(served) > 2 else None)


def adds_up(price: float, explanation: dict[str, Any]) -> bool:
    total = explanation["base_price"] + sum(explanation["contributions"].values())
    return abs(total - price) < 1e-6


def test_explained_batch_keeps_every_price_and_each_arm_explains_with_its_model(
    two_models: tuple[Any, Any],
) -> None:
    from streaming_ml.datasets.synthetic import generate_listing_records
    from streaming_ml.service.predictor import Predictor

    full, cut = two_models
    predictor = Predictor(lineup_of(full, cut, full))  # the shadow is the full model
    records = [
        {**record, "listing_id": i}
        for i, record in enumerate(generate_listing_records(60, seed=21), start=1)
    ]

    plain = predictor.predict_records(records)
    explained = predictor.predict_records(records, explain=True)

    assert [i["predicted_price"] for i in explained] == [i["predicted_price"] for i in plain]
    assert {i["arm"] for i in explained} == {"champion", "challenger"}
    for record, item in zip(records, explained, strict=True):
        model = {"champion": full, "challenger": cut}[item["arm"]]
        assert item["explanation"] == model.explain_records([record]).row(0)
        assert adds_up(item["predicted_price"], item["explanation"])
        shadow = item["shadow"]
        assert shadow["explanation"] == full.explain_records([record]).row(0)
        assert adds_up(shadow["predicted_price"], shadow["explanation"])
    assert "explanation" not in plain[0] and "explanation" not in plain[0]["shadow"]


def test_explained_columns_are_the_champions_prices_with_their_explanations(
    two_models: tuple[Any, Any],
) -> None:
    from streaming_ml.service.predictor import Predictor

    predictor = Predictor(lineup_of(*two_models))
    prices = predictor.predict_columns(PredictRequest.model_validate(EXAMPLE_INPUT))

    answer = predictor.predict_columns(
        PredictRequest.model_validate({**EXAMPLE_INPUT, "explain": True})
    )

    assert [item["predicted_price"] for item in answer] == prices
    assert all(adds_up(item["predicted_price"], item["explanation"]) for item in answer)


def test_explain_lists_every_feature_largest_first_for_the_arm_and_the_shadow(
    two_models: tuple[Any, Any],
) -> None:
    from streaming_ml.service.api import EXAMPLE_LISTING, ExplainRequest
    from streaming_ml.service.predictor import Predictor

    full, cut = two_models
    lineup = lineup_of(full, cut, cut, split=100.0)  # every listing with an id: challenger
    answer = Predictor(lineup).explain_listing(
        ExplainRequest(listing={**EXAMPLE_LISTING, "price": 1}, listing_id=5)
    )

    assert answer["listing"] == EXAMPLE_LISTING and answer["listing_id"] == 5
    assert [(e["arm"], e["model_tag"]) for e in answer["explanations"]] == [
        ("challenger", "ford_price:cut"),
        ("shadow", "ford_price:cut"),
    ]
    first = answer["explanations"][0]
    amounts = [abs(c["amount"]) for c in first["contributions"]]
    assert amounts == sorted(amounts, reverse=True)
    assert {c["feature"]: c["value"] for c in first["contributions"]} == EXAMPLE_LISTING
    total = first["base_price"] + sum(c["amount"] for c in first["contributions"])
    assert abs(total - first["predicted_price"]) < 1e-6
    assert first["predicted_price"] == float(cut.predict_records([EXAMPLE_LISTING])[0])
    assert first["method"] == "tree_shap"


def test_explain_against_a_reference_gives_shared_features_nothing(
    two_models: tuple[Any, Any],
) -> None:
    from streaming_ml.service.api import EXAMPLE_LISTING, ExplainRequest
    from streaming_ml.service.predictor import Predictor

    full, _cut = two_models
    reference = dict(EXAMPLE_LISTING, mileage=EXAMPLE_LISTING["mileage"] + 30_000)
    answer = Predictor(lineup_of(*two_models, split=0.0)).explain_listing(
        ExplainRequest(listing=EXAMPLE_LISTING, reference=reference)
    )

    (explanation,) = answer["explanations"]
    amounts = {c["feature"]: c["amount"] for c in explanation["contributions"]}
    difference = explanation["predicted_price"] - explanation["base_price"]
    assert explanation["method"] == "reference" and answer["reference"] == reference
    assert explanation["base_price"] == float(full.predict_records([reference])[0])
    assert amounts.pop("mileage") == pytest.approx(difference, rel=1e-12)
    assert set(amounts.values()) == {0.0}


def test_explain_names_the_bad_fields_of_listing_and_reference(
    two_models: tuple[Any, Any],
) -> None:
    from streaming_ml.service.api import EXAMPLE_LISTING, ExplainRequest
    from streaming_ml.service.predictor import Predictor

    request = ExplainRequest(
        listing=dict(EXAMPLE_LISTING, mileage=-1), reference=dict(EXAMPLE_LISTING, year=None)
    )
    with pytest.raises(InvalidRequestError) as raised:
        Predictor(lineup_of(*two_models)).explain_listing(request)

    assert [p.loc for p in raised.value.problems] == [
        ("listing", "mileage"),
        ("reference", "year"),
    ]


def test_explained_rows_have_their_own_limit(two_models: tuple[Any, Any]) -> None:
    import anyio

    from streaming_ml.service.predictor import Predictor

    predictor = Predictor(lineup_of(*two_models), max_rows=10, max_explained_rows=2)
    records = EXAMPLE_RECORDS * 2

    refused = anyio.run(
        predictor.handle_predict_batch, PredictBatchRequest(records=records, explain=True)
    )
    priced = anyio.run(predictor.handle_predict_batch, PredictBatchRequest(records=records))

    assert refused.status_code == 413
    assert b"SML_SERVICE_MAX_EXPLAINED_ROWS" in refused.body
    assert len(priced) == 4


REPEATED_KEYS = {
    "feature column": (
        PredictRequest,
        json.dumps(EXAMPLE_INPUT)[:-1] + ', "model": ["Focus", "Kuga"]}',
        ("model",),
    ),
    "records list": (
        PredictBatchRequest,
        '{"records": [], "records": ' + json.dumps(EXAMPLE_RECORDS) + "}",
        ("records",),
    ),
    "field of one record": (
        PredictBatchRequest,
        json.dumps({"records": EXAMPLE_RECORDS})[:-3] + ', "mileage": 1}]}',
        ("records", 1, "mileage"),
    ),
    "colon in a value": (
        PredictBatchRequest,
        '{"records": [{"model": "a:b", "year": 2014, "year": 2019}]}',
        ("records", 0, "year"),
    ),
}


@pytest.mark.parametrize("model, body, loc", REPEATED_KEYS.values(), ids=REPEATED_KEYS.keys())
def test_a_body_repeating_a_key_is_refused_naming_the_key(
    model: Any, body: str, loc: tuple[Any, ...]
) -> None:
    # Left alone, pydantic keeps the last value; a proxy in front may have checked the first.
    with pytest.raises(ValidationError) as caught:
        model.model_validate_json(body.encode())

    errors = caught.value.errors(include_context=False, include_input=False)
    assert [(e["loc"], e["type"]) for e in errors] == [(loc, "duplicate_key")]
    assert "appears 2 times" in errors[0]["msg"] and str(loc[-1]) in errors[0]["msg"]


def test_a_repeated_key_is_reported_even_when_the_body_is_otherwise_invalid() -> None:
    # The repeat decides what the body means, so it is named before (and with) any schema error.
    with pytest.raises(ValidationError) as caught:
        PredictBatchRequest.model_validate_json(b'{"records": [], "records": 5}')

    assert caught.value.errors()[0]["loc"] == ("records",)
    assert caught.value.errors()[0]["type"] == "duplicate_key"


def test_bodies_without_repeats_parse_as_before_colons_in_strings_included() -> None:
    records = [dict(EXAMPLE_RECORDS[0], model="Tourneo: Custom", note={"a": 1, "b": {"c": 2}})]

    batch = PredictBatchRequest.model_validate_json(json.dumps({"records": records}))
    columns = PredictRequest.model_validate_json(json.dumps(EXAMPLE_INPUT).encode())

    assert batch.records == records
    assert columns.model_dump() == {
        **{name: EXAMPLE_INPUT[name] for name in FEATURES},
        "explain": False,
    }
    # ``explain`` sent counts as one more key, not as a repeat.
    explained = PredictBatchRequest.model_validate_json(
        json.dumps({"records": records, "explain": True})
    )
    assert explained.explain is True


def test_duplicate_keys_ignores_what_is_not_json() -> None:
    assert duplicate_keys(b"price me") == []
    assert duplicate_keys(b"[" * 100_000 + b"]" * 100_000) == []
    assert [p.path for p in duplicate_keys(b'[{"a": 1, "a": 2}, {"b": {"c": 1, "c": 1}}]')] == [
        "[0].a",
        "[1].b.c",
    ]


# --- The request guard reads the headers the APIs read ----------------------------------


def _through_guard(headers: list[tuple[bytes, bytes]]) -> int:
    """The status a POST with ``headers`` gets from the guard (200: passed on to the app)."""
    import asyncio

    from streaming_ml.service.guard import RequestGuard

    statuses: list[int] = []

    async def app(_scope: Any, _receive: Any, _send: Any) -> None:
        statuses.append(200)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    scope = {"type": "http", "method": "POST", "path": "/predict", "headers": headers}
    asyncio.run(RequestGuard(app, max_body_bytes=1024, max_concurrency=4)(scope, receive, send))
    return statuses[0]


JSON_TYPE = (b"content-type", b"application/json")
TEXT_TYPE = (b"content-type", b"text/plain")
LENGTH = (b"content-length", b"2")


def test_the_guard_checks_the_first_of_repeated_content_types_as_starlette_reads_it() -> None:
    from starlette.datastructures import Headers

    for first, second in ((TEXT_TYPE, JSON_TYPE), (JSON_TYPE, TEXT_TYPE)):
        read_by_the_api = Headers(raw=[first, second])["content-type"]
        expected = 200 if read_by_the_api == "application/json" else 415
        assert _through_guard([LENGTH, first, second]) == expected, (first, second)


def test_the_guard_reads_the_first_content_length_too() -> None:
    assert _through_guard([(b"content-length", b"9999"), LENGTH, JSON_TYPE]) == 413
    assert _through_guard([LENGTH, (b"content-length", b"9999"), JSON_TYPE]) == 200
