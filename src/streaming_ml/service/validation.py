"""Checking a request's rows against the listing schema, naming every problem found."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from streaming_ml.errors import DataError
from streaming_ml.schema.listing import (
    FEATURE_COLUMNS,
    FEATURES,
    FLOAT32_TINY,
    Column,
    check_value,
    column_bounds,
)
from streaming_ml.service.api import MAX_REPORTED_PROBLEMS, Problem

# Below this many rows a plain check_value loop is cheaper than numpy set-up.
_VECTORISE_FROM_ROWS = 32


class InvalidRequestError(DataError):
    """The request cannot be priced; ``problems`` names every bad field."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        shown = "; ".join(f"{p.path} {p.msg}" for p in self.problems[:5])
        more = f" (and {len(self.problems) - 5} more)" if len(self.problems) > 5 else ""
        super().__init__(f"invalid input: {shown}{more}; fix these fields and resend")

    def to_json(self) -> dict[str, Any]:
        """Same shape as BentoML's own 400 body for schema errors: ``error`` + ``detail``."""
        return {
            "error": str(self),
            "detail": [p.as_dict() for p in self.problems[:MAX_REPORTED_PROBLEMS]],
        }


def _suspect_rows(column: Column, values: Sequence[Any], today: dt.date) -> Sequence[int]:
    """Rows that might fail ``check_value``; a superset, so every other row is valid.

    For numeric columns a vectorised bounds test clears the common all-valid case
    without a Python call per value; anything it cannot vouch for is handed to
    check_value, which stays the only judge of validity and of the message.
    """
    if column.kind == "category" or len(values) < _VECTORISE_FROM_ROWS:
        return range(len(values))
    if not set(map(type, values)) <= {int, float}:
        return range(len(values))
    try:
        array = np.asarray(values, dtype=np.float64)
    except (OverflowError, ValueError):  # ints beyond float range
        return range(len(values))
    low, high = column_bounds(column, today)
    ok = np.isfinite(array)
    if low is not None:
        ok &= array > low if column.exclusive_minimum else array >= low
    if high is not None:
        ok &= array <= high
    if column.kind == "int":
        ok &= array == np.floor(array)
    else:
        ok &= (array == 0) | (np.abs(array) >= FLOAT32_TINY)
    return np.flatnonzero(~ok).tolist()


def column_problems(
    column: Column, values: Sequence[Any], today: dt.date | None = None
) -> list[tuple[int, str]]:
    """``(row, reason)`` for every value of ``column`` that check_value rejects."""
    today = today or dt.date.today()
    return [
        (row, reason)
        for row in _suspect_rows(column, values, today)
        if (reason := check_value(column, values[row], today))
    ]


def validate_columns(columns: Mapping[str, Sequence[Any]], today: dt.date | None = None) -> int:
    """Check column-oriented input (``/predict``); return the row count.

    Raises InvalidRequestError naming ``column[row]`` for each bad value and any
    column whose length differs from the first one.
    """
    today = today or dt.date.today()
    first = FEATURES[0]
    rows = len(columns[first])
    problems = [
        Problem(
            (name,),
            f"has {len(columns[name])} values but {first} has {rows}: "
            "every column needs exactly one value per row",
        )
        for name in FEATURES
        if len(columns[name]) != rows
    ]
    if problems:
        raise InvalidRequestError(problems)
    for column in FEATURE_COLUMNS:
        problems += [
            Problem((column.name, row), reason)
            for row, reason in column_problems(column, columns[column.name], today)
        ]
    if problems:
        raise InvalidRequestError(problems)
    return rows


def validate_records(records: Sequence[Mapping[str, Any]], today: dt.date | None = None) -> None:
    """Check record-oriented input (``/predict_batch``).

    Raises InvalidRequestError naming ``records[i].field`` for each bad value
    (a missing field is reported as null), in record order.
    """
    today = today or dt.date.today()
    problems = [
        Problem(("records", row, column.name), reason)
        for column in FEATURE_COLUMNS
        for row, reason in column_problems(
            column, [record.get(column.name) for record in records], today
        )
    ]
    if problems:
        problems.sort(key=lambda p: p.loc[1])
        raise InvalidRequestError(problems)


def listing_problems(
    listing: Mapping[str, Any], name: str, today: dt.date | None = None
) -> list[Problem]:
    """What check_value rejects in one listing, located as ``name.field``."""
    today = today or dt.date.today()
    return [
        Problem((name, column.name), reason)
        for column in FEATURE_COLUMNS
        if (reason := check_value(column, listing.get(column.name), today))
    ]
