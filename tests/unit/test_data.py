"""The schema contract, the CSV loader and the synthetic generator."""

import datetime as dt
import math
from typing import Any

import pandas as pd
import pytest

from streaming_ml.datasets.csv import data_fingerprint, listing_records, load_listings_csv
from streaming_ml.datasets.synthetic import (
    CORRUPTION_KINDS,
    generate_listing_records,
    generate_listings,
)
from streaming_ml.errors import DataError
from streaming_ml.schema import listing
from streaming_ml.schema.listing import (
    ABSENT,
    COLUMNS_BY_NAME,
    FEATURES,
    LISTING_COLUMNS,
    absent_features,
    check_value,
    feature_problems,
    table_problems,
)

TODAY = dt.date(2026, 6, 1)
VALID = {
    "model": "Fiesta", "year": 2017, "price": 12000, "transmission": "Manual", "mileage": 15944,
    "fuelType": "Petrol", "tax": 150, "mpg": 57.7, "engineSize": 1.0,
}  # fmt: skip


# --- schema -----------------------------------------------------------------


def test_valid_record_has_no_problems():
    assert feature_problems(VALID, TODAY) == {}


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [
        ("year", 2060, "at most 2027"),
        ("year", 1900, "at least 1970"),
        ("engineSize", 1598.0, "at most 10"),
        ("engineSize", -1.0, "at least 0"),
        ("mileage", -1, "at least 0"),
        ("mpg", math.nan, "finite"),
        ("tax", 12.5, "whole number"),
        ("model", "  ", "blank"),
        ("model", 3, "string"),
        ("year", "2017", "number"),
        ("year", True, "number"),
        ("fuelType", None, "missing"),
    ],
)
def test_feature_problems_names_field_and_reason(field, value, fragment):
    problems = feature_problems({**VALID, field: value}, TODAY)
    assert list(problems) == [field]
    assert fragment in problems[field]


@pytest.mark.parametrize("unknown", [0, 0.0, None])
def test_unknown_engine_size_is_valid(unknown):
    """Exports record an unknown engine size as 0 or null: priced, not dead-lettered."""
    assert feature_problems({**VALID, "engineSize": unknown}, TODAY) == {}


@pytest.mark.parametrize("feature", ["engineSize", "mpg", "model"])
def test_a_feature_absent_from_the_record_is_a_schema_problem_even_when_nullable(feature):
    """A key missing from a change record means its column left the table (dropped or
    renamed): not an unknown value, so even the nullable engineSize is not priced."""
    record = {k: v for k, v in VALID.items() if k != feature}
    problems = feature_problems(record, TODAY)
    assert problems == {feature: ABSENT}
    assert absent_features(problems) == [feature]
    assert absent_features(feature_problems({**VALID, "mpg": None}, TODAY)) == []


def test_the_service_accepts_unknown_engine_sizes_too():
    """The service's vectorised bounds check (from 32 rows) agrees with check_value."""
    from streaming_ml.service.validation import (
        InvalidRequestError,
        validate_columns,
        validate_records,
    )

    records = [{name: r[name] for name in FEATURES} for r in generate_listing_records(40, seed=1)]
    for row, unknown in ((3, 0), (5, None), (7, 0.0)):
        records[row]["engineSize"] = unknown
    columns = {name: [r[name] for r in records] for name in FEATURES}
    assert validate_columns(columns, TODAY) == 40
    validate_records(records, TODAY)
    assert validate_columns({**columns, "engineSize": [0.0] * 40}, TODAY) == 40
    negative = list(columns["engineSize"])
    negative[9] = -0.5
    with pytest.raises(InvalidRequestError, match=r"engineSize\[9\] must be at least 0"):
        validate_columns({**columns, "engineSize": negative}, TODAY)


def test_missing_key_is_a_problem_and_price_is_not_a_feature():
    record = {k: v for k, v in VALID.items() if k not in ("mpg", "price")}
    assert list(feature_problems(record, TODAY)) == ["mpg"]


def test_unseen_category_value_is_valid():
    assert check_value(COLUMNS_BY_NAME["model"], "Model T") is None


def test_next_years_models_are_plausible_but_not_later():
    year = COLUMNS_BY_NAME["year"]
    assert check_value(year, TODAY.year + 1, TODAY) is None
    assert check_value(year, TODAY.year + 2, TODAY) is not None


# --- CSV loader -------------------------------------------------------------

HEADER = "model,year,price,transmission,mileage,fuelType,tax,mpg,engineSize"
QUIRKY_ROWS = [
    " Fiesta,2017,12000,Automatic,15944,Petrol,150,57.7,1.0",  # leading space: kept
    " Focus,2018,14000,Manual,9083,Petrol,150,57.7,1.0 ",  # trailing space: kept
    " Focus,2018,14000,Manual,9083,Petrol,150,57.7,1.0",  # same row again: duplicate
    " Kuga ,2060,15000,Manual,100,Diesel,145,50.0,2.0",  # impossible year
    " Fiesta,2016,8000,Manual,30000,Petrol,30,60.1,0",  # engineSize 0: kept, unknown
    " Fiesta,2015,7000,Manual,40000,Petrol,30,60.1,",  # engineSize blank: kept, unknown
    " Fiesta,2016,8000,Manual,30000,Petrol,30,60.1,1598",  # engine size in cc
    " Focus,2016,9000,Manual,,Petrol,30,60.1,1.0",  # null mileage
    " Focus,2016,9000,Manual,lots,Petrol,30,60.1,1.0",  # unparseable mileage
    " Focus,2016,9000,Manual,1000,NULL,30,60.1,1.0",  # null token in a category
    " Focus,2016,9000,Manual,1000,Petrol,N/A,60.1,1.0",  # null token in a number
    " ,2016,9000,Manual,1000,Petrol,30,60.1,1.0",  # blank model
    " Mondeo,2015,-5,Manual,1000,Diesel,30,60.1,2.0",  # negative price (the target)
    " C-MAX,2014,8295,Semi-Auto,40000,Diesel,160,50.4,2.0",  # kept
]


def write_csv(tmp_path, rows, header=HEADER, newline="\r\n"):
    path = tmp_path / "listings.csv"
    path.write_bytes((newline.join([header, *rows]) + newline).encode())
    return path


def test_loader_cleans_quirks_and_counts_every_dropped_row(tmp_path):
    result = load_listings_csv(write_csv(tmp_path, QUIRKY_ROWS), TODAY)
    assert result.rows_read == len(QUIRKY_ROWS)
    assert result.dropped == {
        "exact duplicate": 1,
        "year out of range": 1,
        "engineSize out of range": 1,
        "mileage missing": 1,
        "mileage unparseable": 1,
        "fuelType missing": 1,
        "tax missing": 1,
        "model missing": 1,
        "price out of range": 1,
    }
    assert result.rows_kept + sum(result.dropped.values()) == result.rows_read
    frame = result.frame
    assert list(frame.columns) == [c.name for c in LISTING_COLUMNS]
    assert frame["model"].tolist() == ["Fiesta", "Focus", "Fiesta", "Fiesta", "C-MAX"]
    assert frame["engineSize"].tolist()[2] == 0.0 and math.isnan(frame["engineSize"][3])
    assert frame["year"].dtype == "int64" and frame["mpg"].dtype == "float64"
    assert all(feature_problems(r, TODAY) == {} for r in listing_records(frame))
    assert "dropped 9" in result.report()


def test_loader_accepts_lf_endings_and_padded_header(tmp_path):
    header = " " + HEADER.replace(",", ", ")
    path = write_csv(tmp_path, QUIRKY_ROWS[:2], header=header, newline="\n")
    assert load_listings_csv(path, TODAY).rows_kept == 2


def test_loader_explains_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"not found.*synthetic"):
        load_listings_csv(tmp_path / "nope.csv")


def test_loader_names_missing_columns(tmp_path):
    path = write_csv(tmp_path, ["Fiesta,2017"], header="model,year")
    with pytest.raises(DataError, match="price, transmission"):
        load_listings_csv(path)


def test_fingerprint_ignores_file_formatting_but_not_content(tmp_path):
    crlf = load_listings_csv(write_csv(tmp_path, QUIRKY_ROWS), TODAY).frame
    (tmp_path / "lf").mkdir()
    lf_rows = [r.strip().replace(" ,", ",") for r in QUIRKY_ROWS]
    lf = load_listings_csv(write_csv(tmp_path / "lf", lf_rows, newline="\n"), TODAY).frame
    assert data_fingerprint(crlf) == data_fingerprint(lf)
    changed = lf.copy()
    changed.loc[0, "price"] += 1
    assert data_fingerprint(changed) != data_fingerprint(lf)


# --- synthetic generator ----------------------------------------------------


def test_generator_is_seeded():
    pd.testing.assert_frame_equal(generate_listings(300, seed=5), generate_listings(300, seed=5))
    assert not generate_listings(300, seed=5).equals(generate_listings(300, seed=6))


def test_generated_rows_fit_the_schema():
    frame = generate_listings(2_000, seed=1)
    assert list(frame.columns) == [c.name for c in LISTING_COLUMNS]
    records = listing_records(frame)
    assert [
        r
        for r in records
        if feature_problems(r) or check_value(COLUMNS_BY_NAME["price"], r["price"])
    ] == []
    assert frame.duplicated().sum() < 20


@pytest.mark.parametrize("invalid", [0, 1, 7, len(CORRUPTION_KINDS) * 3])
def test_invalid_rows_are_exactly_the_flagged_ones(invalid):
    records = generate_listing_records(200, seed=3, invalid=invalid, today=TODAY)
    flagged = [r for r in records if feature_problems(r, TODAY)]
    assert len(flagged) == invalid


def test_every_corruption_kind_is_flagged():
    kinds = len(CORRUPTION_KINDS)
    records = generate_listing_records(kinds, seed=11, invalid=kinds, today=TODAY)
    problems = [feature_problems(r, TODAY) for r in records]
    assert all(problems)
    flagged_fields = {field for p in problems for field in p}
    assert {"model", "year", "mileage", "engineSize", "tax", "mpg", "fuelType"} <= flagged_fields


def test_records_are_plain_python_values():
    records = generate_listing_records(50, seed=2, invalid=10, today=TODAY)
    allowed = {"model": str, "transmission": str, "fuelType": str, "mpg": float}
    for record in records:
        assert set(record) == {c.name for c in LISTING_COLUMNS}
        for field, value in record.items():
            if value is None:
                continue
            assert type(value) in (allowed.get(field, int), int, float, str), (field, value)
            if field in ("year", "price", "mileage", "tax"):
                assert type(value) is int
    assert any(None in r.values() for r in records)


def test_generator_is_realistic():
    frame = generate_listings(5_000, seed=9)
    counts = frame["model"].value_counts()
    assert counts.index[0] == "Fiesta" and counts.index[1] == "Focus"
    assert frame["transmission"].value_counts().index[0] == "Manual"
    assert set(frame["fuelType"]) <= set(listing.FUEL_TYPES)
    by_year = frame.groupby("year")["price"].mean()
    assert by_year[2019] > by_year[2017] > by_year[2015]
    by_age = frame.groupby("year")["mileage"].median()
    assert by_age[2015] > by_age[2018] > by_age[2020]
    assert frame.loc[frame["model"] == "Mustang", "engineSize"].min() >= 2.3
    assert frame.loc[frame["model"] == "Kuga", "price"].mean() > (
        frame.loc[frame["model"] == "Ka+", "price"].mean()
    )
    assert 10_000 < frame["price"].mean() < 15_000


def test_generated_years_peak_at_2017_and_thin_out_after_it_like_the_real_listings():
    shares = generate_listings(20_000, seed=3)["year"].value_counts(normalize=True)
    assert shares.idxmax() == 2017
    # Real: 27 % in 2017, 18 % in 2019, 1.5 % in 2020 (scraped early in 2020).
    assert shares[2017] > shares[2018] > shares[2019] > 10 * shares[2020]
    assert shares[2020] < 0.03


def test_generated_mpg_is_a_few_official_figures_per_model_engine_and_fuel():
    frame = generate_listings(20_000, seed=3)
    fiesta = frame[frame["model"] == "Fiesta"]
    # Engine and fuel go together: a Fiesta diesel is a 1.5 (0 is "unknown").
    assert set(fiesta.loc[fiesta["fuelType"] == "Diesel", "engineSize"]) <= {0.0, 1.5}
    figures = fiesta[fiesta["engineSize"] > 0].groupby(["engineSize", "fuelType"])["mpg"]
    assert figures.nunique().max() <= 5
    # The real data's most common figure: 14 % of all listings (Fiesta 1.0 EcoBoost).
    assert 0.1 < (frame["mpg"] == 65.7).mean() < 0.2


def test_generator_records_a_few_engine_sizes_as_unknown_like_the_real_export():
    frame = generate_listings(20_000, seed=3)
    unknown = frame["engineSize"] == 0
    # 36 of 14,372 in the real training file (0.25 %).
    assert 0.001 < unknown.mean() < 0.005
    assert all(feature_problems(r) == {} for r in listing_records(frame[unknown]))


def test_generator_rejects_impossible_invalid_count():
    with pytest.raises(DataError, match="invalid"):
        generate_listings(3, seed=1, invalid=4)


def test_features_listed_once():
    assert len(set(FEATURES)) == len(FEATURES) == 8


ACCEPTED_BUT_WRONG = {
    "engine size that underflows float32": (
        "engineSize",
        1e-300,
        "too small for the model's float32",
    ),
    "NUL in a name": ("model", "Fie\x00sta", "U+0000"),
    "zero-width space": ("model", "Fi\u200besta", "U+200B"),
    "bidi override": ("transmission", "\u202eManual", "U+202E"),
    "multi-megabyte name": ("fuelType", "P" * 2_000_000, "at most 64 characters"),
    "Debezium TOAST placeholder": ("model", "__debezium_unavailable_value", "placeholder"),
}


@pytest.mark.parametrize(
    "field, value, reason", ACCEPTED_BUT_WRONG.values(), ids=ACCEPTED_BUT_WRONG.keys()
)
def test_values_that_were_accepted_but_wrong_are_rejected_with_a_reason(
    field: str, value: Any, reason: str
) -> None:
    """One rule set: the service and the bridge both judge with feature_problems."""
    row = {**generate_listing_records(1, seed=1)[0], field: value}
    problems = feature_problems(row)
    assert set(problems) == {field}
    assert reason in problems[field]


def test_ordinary_names_and_small_engines_stay_valid() -> None:
    row = generate_listing_records(1, seed=1)[0]
    for value in ("Grand Tourneo Connect", "Ka+", "C-MAX", "Škoda-like ünïcode"):
        assert not feature_problems({**row, "model": value})
    assert not feature_problems({**row, "engineSize": 0.6})


def test_a_table_fits_a_model_while_its_features_are_columns_of_a_usable_type():
    columns = {c.name: c.sql_type for c in LISTING_COLUMNS}
    assert table_problems(columns) == []
    # Widened columns and new columns still fit.
    widened = {**columns, "mileage": "bigint", "tax": "numeric", "mpg": "real", "colour": "text"}
    assert table_problems(widened) == []
    dropped = {k: v for k, v in columns.items() if k != "mpg"}
    assert table_problems(dropped) == ["mpg is not a column (dropped or renamed)"]
    texted = {**columns, "tax": "text", "model": "integer"}
    assert table_problems(texted) == [
        "model is integer, the model needs a string",
        "tax is text, the model needs a number",
    ]
    # Only the features a model takes count.
    assert table_problems(dropped, [f for f in FEATURES if f != "mpg"]) == []
