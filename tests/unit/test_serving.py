"""Request validation behind the service: one rule source (data.check_value), fast path included."""

import datetime as dt
import json
import math
from typing import Any

import pytest
from pydantic import ValidationError

from streaming_ml.data import COLUMNS_BY_NAME, FEATURE_COLUMNS, FEATURES, check_value
from streaming_ml.serving import (
    EXAMPLE_INPUT,
    EXAMPLE_RECORDS,
    InvalidRequestError,
    PredictBatchRequest,
    PredictRequest,
    Problem,
    column_problems,
    duplicate_keys,
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

    assert set(request.model_dump()) == set(FEATURES)
    assert batch.records[0]["key"] == 0  # extra record keys reach the service untouched


def test_request_schema_documents_every_feature_with_an_example() -> None:
    schema = PredictRequest.model_json_schema()

    assert set(schema["required"]) == set(FEATURES)
    for name in FEATURES:
        assert schema["properties"][name]["description"]
        assert schema["properties"][name]["examples"] == [EXAMPLE_INPUT[name]]


def test_model_info_names_the_training_file_but_never_its_path() -> None:
    from streaming_ml.serving import without_paths

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
    assert columns.model_dump() == {name: EXAMPLE_INPUT[name] for name in FEATURES}


def test_duplicate_keys_ignores_what_is_not_json() -> None:
    assert duplicate_keys(b"price me") == []
    assert duplicate_keys(b"[" * 100_000 + b"]" * 100_000) == []
    assert [p.path for p in duplicate_keys(b'[{"a": 1, "a": 2}, {"b": {"c": 1, "c": 1}}]')] == [
        "[0].a",
        "[1].b.c",
    ]
