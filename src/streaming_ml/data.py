"""The Ford listing schema, in one place.

Training, the service's input validation, the bridge's event validation, the
Postgres DDL in ``postgres/`` and the Avro prediction schema are all derived
from the definitions below. Column names keep the dataset's spelling
(``fuelType``, ``engineSize``) so one name travels from CSV to API to table.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping
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
    # Lower bound is exclusive (engineSize 0 is a data-entry artefact, not a car).
    exclusive_minimum: bool = False


MIN_YEAR = 1970


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
    Column(
        "engineSize", "float", "double precision", "Engine size in litres", 0, 10,
        exclusive_minimum=True,
    ),
)  # fmt: skip

TARGET = "price"
COLUMNS_BY_NAME: dict[str, Column] = {c.name: c for c in LISTING_COLUMNS}
FEATURE_COLUMNS: tuple[Column, ...] = tuple(c for c in LISTING_COLUMNS if c.name != TARGET)
FEATURES: tuple[str, ...] = tuple(c.name for c in FEATURE_COLUMNS)
CATEGORICAL_FEATURES: tuple[str, ...] = tuple(c.name for c in FEATURE_COLUMNS if c.kind == "category")
NUMERIC_FEATURES: tuple[str, ...] = tuple(c.name for c in FEATURE_COLUMNS if c.kind != "category")


def column_bounds(column: Column, today: dt.date | None = None) -> tuple[float | None, float | None]:
    if column.name == "year":
        return MIN_YEAR, max_year(today)
    return column.minimum, column.maximum


def check_value(column: Column, value: Any, today: dt.date | None = None) -> str | None:
    """Return why ``value`` is not a valid ``column`` value, or None when it is."""
    if value is None:
        return "is missing (null)"
    if column.kind == "category":
        if not isinstance(value, str):
            return f"must be a string, got {type(value).__name__}"
        if not value.strip():
            return "must not be blank"
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"must be a number, got {type(value).__name__}"
    if isinstance(value, float) and not math.isfinite(value):
        return f"must be finite, got {value}"
    if column.kind == "int" and isinstance(value, float) and not value.is_integer():
        return f"must be a whole number, got {value}"
    low, high = column_bounds(column, today)
    if low is not None:
        if column.exclusive_minimum and value <= low:
            return f"must be greater than {low:g}, got {value}"
        if value < low:
            return f"must be at least {low:g}, got {value}"
    if high is not None and value > high:
        return f"must be at most {high:g}, got {value}"
    return None


def feature_problems(record: Mapping[str, Any], today: dt.date | None = None) -> dict[str, str]:
    """Every reason a record's features cannot be priced, keyed by field name."""
    problems: dict[str, str] = {}
    for column in FEATURE_COLUMNS:
        reason = check_value(column, record.get(column.name), today)
        if reason:
            problems[column.name] = reason
    return problems


# --- Postgres -----------------------------------------------------------------


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def listings_ddl(table: str = "car_listings") -> str:
    """The source table. No CHECK constraints on purpose: bad rows must reach the
    pipeline so they are dead-lettered with a reason instead of vanishing."""
    cols = ",\n    ".join(f"{quote_ident(c.name)} {c.sql_type}" for c in LISTING_COLUMNS)
    return (
        f"CREATE TABLE IF NOT EXISTS public.{table} (\n"
        f"    id serial PRIMARY KEY,\n    {cols}\n);\n"
    )


@dataclass(frozen=True)
class PredictionField:
    name: str
    sql_type: str
    avro_type: str | list[str]
    description: str


# One record per listing in the predictions topic and one row in the table.
PREDICTION_FIELDS: tuple[PredictionField, ...] = (
    PredictionField("listing_id", "bigint", "long", "car_listings.id (also the record key)"),
    PredictionField("predicted_price", "double precision", "double", "Predicted price in GBP"),
    PredictionField("model_tag", "text", "string", "BentoML model tag that produced it"),
    PredictionField("features_hash", "text", "string", "Hash of the priced features"),
    PredictionField("source_lsn", "bigint", ["null", "long"], "WAL position of the change"),
    PredictionField("source_ts_ms", "bigint", "long", "Commit time of the change (epoch ms)"),
    PredictionField("kafka_ts_ms", "bigint", "long", "Change event appended to Kafka (epoch ms)"),
    PredictionField("bridge_received_ts_ms", "bigint", "long", "Bridge read the event (epoch ms)"),
    PredictionField("predicted_ts_ms", "bigint", "long", "Model answered (epoch ms)"),
    PredictionField("model_latency_ms", "double precision", "double", "HTTP model call time"),
    PredictionField("end_to_end_ms", "double precision", "double", "Commit to prediction (ms)"),
)


def predictions_ddl(table: str = "car_price_predictions") -> str:
    """The sink table; ``written_at`` is stamped by Postgres on every upsert so the
    benchmark can measure commit-to-visible latency without trusting any client clock."""
    cols = ",\n    ".join(
        f"{f.name} {f.sql_type}{' PRIMARY KEY' if f.name == 'listing_id' else ''}"
        for f in PREDICTION_FIELDS
    )
    return (
        f"CREATE TABLE IF NOT EXISTS public.{table} (\n    {cols},\n"
        f"    written_at timestamptz NOT NULL DEFAULT clock_timestamp()\n);\n"
        f"CREATE OR REPLACE FUNCTION public.{table}_stamp() RETURNS trigger AS $$\n"
        f"BEGIN NEW.written_at := clock_timestamp(); RETURN NEW; END $$ LANGUAGE plpgsql;\n"
        f"DROP TRIGGER IF EXISTS {table}_stamp ON public.{table};\n"
        f"CREATE TRIGGER {table}_stamp BEFORE INSERT OR UPDATE ON public.{table}\n"
        f"    FOR EACH ROW EXECUTE FUNCTION public.{table}_stamp();\n"
    )
