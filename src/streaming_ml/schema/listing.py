"""The Ford listing: its columns, their kinds and bounds, and the rules a value must meet."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

ColumnKind = Literal["category", "int", "float"]


@dataclass(frozen=True)
class Column:
    name: str
    kind: ColumnKind
    sql_type: str
    description: str
    minimum: float | None = None
    maximum: float | None = None
    # Values seen in the real data. Categories are open: an unseen value (a new
    # model name) is still priced; only blank values are invalid.
    categories: tuple[str, ...] = ()
    # Lower bound is exclusive (no column uses it today; the service's vectorised
    # bounds check honours it).
    exclusive_minimum: bool = False
    # Null is a valid value meaning "unknown": the model prices it through the
    # default branches it learned for missing values (docs/model.md).
    nullable: bool = False


MIN_YEAR = 1970


# Category values are names (the longest Ford model name is 21 characters).
MAX_CATEGORY_CHARS = 64


# Debezium's stand-in for an unchanged TOASTed column it could not read: never a value.
DEBEZIUM_UNAVAILABLE = "__debezium_unavailable_value"


# The model works in float32: a non-zero value below this becomes 0 there.
FLOAT32_TINY = 1.1754943508222875e-38


# Control characters, zero-width characters and bidirectional overrides: invisible in a
# name, they make two equal-looking values different (or hide what a value says).
_INVISIBLE = re.compile(
    "[\x00-\x1f\x7f-\x9f\u00ad\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff]"
)


def max_year(today: dt.date | None = None) -> int:
    """Latest plausible registration year: next year's models are sold this year."""
    return (today or dt.date.today()).year + 1


FORD_MODELS: tuple[str, ...] = (
    "Fiesta", "Focus", "Kuga", "EcoSport", "C-MAX", "Mondeo", "Ka+", "B-MAX", "S-MAX",
    "Grand C-MAX", "Galaxy", "Edge", "KA", "Tourneo Custom", "Puma", "Grand Tourneo Connect",
    "Mustang", "Tourneo Connect", "Fusion", "Streetka", "Ranger", "Escort",
)  # fmt: skip


TRANSMISSIONS: tuple[str, ...] = ("Manual", "Automatic", "Semi-Auto")


FUEL_TYPES: tuple[str, ...] = ("Petrol", "Diesel", "Hybrid", "Electric", "Other")


LISTING_COLUMNS: tuple[Column, ...] = (
    Column("model", "category", "text", "Ford model name", categories=FORD_MODELS),
    Column("year", "int", "integer", "Registration year", minimum=MIN_YEAR),
    Column("price", "int", "integer", "Asking price in GBP (the target)", 1, 1_000_000),
    Column("transmission", "category", "text", "Gearbox type", categories=TRANSMISSIONS),
    Column("mileage", "int", "integer", "Odometer reading in miles", 0, 1_000_000),
    Column("fuelType", "category", "text", "Fuel type", categories=FUEL_TYPES),
    Column("tax", "int", "integer", "Annual road tax in GBP", 0, 1_000),
    Column("mpg", "float", "double precision", "Fuel economy, miles per gallon", 1, 500),
    # Real exports record an unknown engine size as 0 or leave it empty; both are
    # priced as "engine size unknown" (features.py turns 0 into missing).
    Column(
        "engineSize", "float", "double precision",
        "Engine size in litres; 0 or null when unknown", 0, 10, nullable=True,
    ),
)  # fmt: skip


TARGET = "price"


COLUMNS_BY_NAME: dict[str, Column] = {c.name: c for c in LISTING_COLUMNS}


FEATURE_COLUMNS: tuple[Column, ...] = tuple(c for c in LISTING_COLUMNS if c.name != TARGET)


FEATURES: tuple[str, ...] = tuple(c.name for c in FEATURE_COLUMNS)


CATEGORICAL_FEATURES: tuple[str, ...] = tuple(
    c.name for c in FEATURE_COLUMNS if c.kind == "category"
)


NUMERIC_FEATURES: tuple[str, ...] = tuple(c.name for c in FEATURE_COLUMNS if c.kind != "category")


def column_bounds(
    column: Column, today: dt.date | None = None
) -> tuple[float | None, float | None]:
    if column.name == "year":
        return MIN_YEAR, max_year(today)
    return column.minimum, column.maximum


def check_value(column: Column, value: Any, today: dt.date | None = None) -> str | None:
    """Return why ``value`` is not a valid ``column`` value, or None when it is."""
    if value is None:
        return None if column.nullable else "is missing (null)"
    if column.kind == "category":
        if not isinstance(value, str):
            return f"must be a string, got {type(value).__name__}"
        if not value.strip():
            return "must not be blank"
        if len(value) > MAX_CATEGORY_CHARS:
            return f"must be at most {MAX_CATEGORY_CHARS} characters, got {len(value)}"
        if value == DEBEZIUM_UNAVAILABLE:
            return "is Debezium's placeholder for an unreadable TOAST value, not a value"
        if match := _INVISIBLE.search(value):
            return f"contains an invisible or control character (U+{ord(match.group()):04X})"
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"must be a number, got {type(value).__name__}"
    if isinstance(value, float) and not math.isfinite(value):
        return f"must be finite, got {value}"
    if column.kind == "int" and isinstance(value, float) and not value.is_integer():
        return f"must be a whole number, got {value}"
    if column.kind == "float" and value != 0 and abs(value) < FLOAT32_TINY:
        return f"is too small for the model's float32 (it would become 0), got {value}"
    low, high = column_bounds(column, today)
    if low is not None:
        if column.exclusive_minimum and value <= low:
            return f"must be greater than {low:g}, got {value}"
        if value < low:
            return f"must be at least {low:g}, got {value}"
    if high is not None and value > high:
        return f"must be at most {high:g}, got {value}"
    return None


# A feature whose key a change record lacks: its column is gone from the source table
# (dropped or renamed), which is not the same as a null value in a column that exists.
ABSENT = "is not in the record: its column was dropped or renamed in the source table"


def feature_problems(record: Mapping[str, Any], today: dt.date | None = None) -> dict[str, str]:
    """Every reason a record's features cannot be priced, keyed by field name."""
    problems: dict[str, str] = {}
    for column in FEATURE_COLUMNS:
        if column.name not in record:
            problems[column.name] = ABSENT
        elif reason := check_value(column, record[column.name], today):
            problems[column.name] = reason
    return problems


def absent_features(problems: Mapping[str, str]) -> list[str]:
    """The features ``feature_problems`` found missing from the record itself."""
    return [name for name, reason in problems.items() if reason == ABSENT]


# Postgres types a feature's column may have: any integer or floating type for a number
# (a widened column is read as the wider Avro type and priced the same), any string type
# for a category.
_COLUMN_TYPES: dict[ColumnKind, frozenset[str]] = {
    "int": frozenset({"smallint", "integer", "bigint", "numeric"}),
    "float": frozenset({"smallint", "integer", "bigint", "numeric", "real", "double precision"}),
    "category": frozenset({"text", "character varying", "character"}),
}


def table_problems(columns: Mapping[str, str], features: Sequence[str] = FEATURES) -> list[str]:
    """Why a table with ``columns`` (name: Postgres data_type) cannot feed a model that
    takes ``features``: each feature missing or of a type it cannot be priced from."""
    problems = []
    for name in features:
        column = COLUMNS_BY_NAME.get(name)
        if name not in columns:
            problems.append(f"{name} is not a column (dropped or renamed)")
        elif column is not None and columns[name] not in _COLUMN_TYPES[column.kind]:
            wanted = "a string" if column.kind == "category" else "a number"
            problems.append(f"{name} is {columns[name]}, the model needs {wanted}")
    return problems


ALL_FEATURES = frozenset(FEATURES)


def features_hash(row: Mapping[str, Any]) -> str:
    """Stable hash of the priced features: equal features give an equal hash whatever
    the other columns (price) or the numeric representation (2 vs 2.0) are."""
    canonical: dict[str, Any] = {}
    for name in FEATURES:
        value = row.get(name)
        kind = COLUMNS_BY_NAME[name].kind
        if value is not None and kind != "category":
            value = float(value)
            if kind == "int" and value.is_integer():
                value = int(value)
        canonical[name] = value
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"), allow_nan=True)
    return hashlib.sha256(text.encode()).hexdigest()
