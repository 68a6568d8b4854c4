"""Listings from a CSV file: its raw quirks cleaned, with a reason for every dropped row."""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from streaming_ml.errors import DataError
from streaming_ml.schema.listing import LISTING_COLUMNS, Column, check_value

logger = logging.getLogger(__name__)


DUPLICATE_REASON = "exact duplicate"


# Cells that mean "no value" in exports (compared case-insensitively after stripping).
NULL_TOKENS = frozenset({"", "na", "n/a", "nan", "null", "none"})


@dataclass(frozen=True)
class LoadResult:
    """A cleaned listing frame plus what was dropped on the way and why."""

    frame: pd.DataFrame
    dropped: dict[str, int]
    rows_read: int

    @property
    def rows_kept(self) -> int:
        return len(self.frame)

    def report(self) -> str:
        reasons = ", ".join(f"{reason}: {count}" for reason, count in self.dropped.items())
        return (
            f"read {self.rows_read} rows, kept {self.rows_kept}, "
            f"dropped {self.rows_read - self.rows_kept}" + (f" ({reasons})" if reasons else "")
        )


def _python_value(column: Column, value: Any) -> Any:
    """A cleaned cell as the plain Python value ``check_value`` expects."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    if column.kind == "category":
        return str(value)
    number = float(value)
    if column.kind == "int" and number.is_integer():
        return int(number)
    return number


def _drop_reason(column: Column, raw: str, parsed: Any, today: dt.date | None) -> str | None:
    if raw == "":
        return None if column.nullable else f"{column.name} missing"
    if parsed is None:
        return f"{column.name} unparseable"
    problem = check_value(column, parsed, today)
    if problem is None:
        return None
    if problem.startswith("must be a whole number"):
        return f"{column.name} not a whole number"
    return f"{column.name} out of range"


def _cell_text(series: pd.Series) -> pd.Series:
    text = series.astype("string").fillna("").str.strip()
    return text.mask(text.str.lower().isin(NULL_TOKENS), "")


def clean_listings(raw: pd.DataFrame, today: dt.date | None = None) -> LoadResult:
    """Normalise a frame of raw string cells and drop rows that do not fit the schema.

    Each dropped row is counted once, under the first schema column that rejects it,
    so the counts add up to the number of rows dropped.
    """
    rows_read = len(raw)
    cells = pd.DataFrame({c.name: _cell_text(raw[c.name]) for c in LISTING_COLUMNS})
    parsed: dict[str, pd.Series] = {}
    for column in LISTING_COLUMNS:
        text = cells[column.name]
        if column.kind == "category":
            parsed[column.name] = text.where(text != "", None).astype(object)
        else:
            parsed[column.name] = pd.to_numeric(text.where(text != ""), errors="coerce")

    raw_lists = {c.name: cells[c.name].tolist() for c in LISTING_COLUMNS}
    parsed_lists = {c.name: parsed[c.name].tolist() for c in LISTING_COLUMNS}
    reasons: list[str | None] = []
    for i in range(rows_read):
        reason = None
        for column in LISTING_COLUMNS:
            value = _python_value(column, parsed_lists[column.name][i])
            reason = _drop_reason(column, raw_lists[column.name][i], value, today)
            if reason:
                break
        reasons.append(reason)

    frame = pd.DataFrame(parsed)
    valid = np.array([r is None for r in reasons], dtype=bool)
    dropped: dict[str, int] = {}
    for reason in reasons:
        if reason:
            dropped[reason] = dropped.get(reason, 0) + 1
    frame = frame.loc[valid]
    duplicated = frame.duplicated(keep="first")
    if duplicated.any():
        dropped[DUPLICATE_REASON] = int(duplicated.sum())
        frame = frame[~duplicated]
    return LoadResult(frame=with_schema_dtypes(frame), dropped=dropped, rows_read=rows_read)


def with_schema_dtypes(frame: pd.DataFrame) -> pd.DataFrame:
    """Schema column order and dtypes: str categories, int64 ints, float64 floats."""
    frame = frame.loc[:, [c.name for c in LISTING_COLUMNS]].reset_index(drop=True)
    for column in LISTING_COLUMNS:
        series = frame[column.name]
        if column.kind == "category":
            frame[column.name] = series.astype(object)
        elif column.kind == "int" and not series.isna().any():
            frame[column.name] = series.astype("int64")
        elif column.kind == "int":
            frame[column.name] = series.astype("Int64")
        else:
            frame[column.name] = series.astype("float64")
    return frame


def load_listings_csv(path: str | Path, today: dt.date | None = None) -> LoadResult:
    """Read a Ford listings CSV as exported (CRLF endings, padded cells, bad rows kept)
    and return the rows that fit the schema plus a count of dropped rows per reason."""
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"listings CSV not found: {path}. Pass an existing file (columns: "
            f"{', '.join(c.name for c in LISTING_COLUMNS)}) or leave --data out to use "
            "the seeded synthetic data."
        )
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise DataError(
            f"cannot parse {path} as CSV ({error}); is it the Ford listings CSV?"
        ) from error
    raw.columns = [str(name).strip() for name in raw.columns]
    missing = [c.name for c in LISTING_COLUMNS if c.name not in raw.columns]
    if missing:
        raise DataError(
            f"{path} lacks the column(s) {', '.join(missing)}; found {', '.join(raw.columns)}. "
            "The header must use the dataset spelling (e.g. fuelType, engineSize)."
        )
    result = clean_listings(raw, today)
    logger.info(
        "loaded listings CSV: %s",
        result.report(),
        extra={"path": str(path), "rows_read": result.rows_read, "rows_kept": result.rows_kept},
    )
    return result


def data_fingerprint(frame: pd.DataFrame) -> str:
    """sha256 of the listings in canonical form (schema order, fixed number format), so
    the same training rows give the same fingerprint whatever file they came from."""
    canonical = with_schema_dtypes(frame).to_csv(
        index=False, lineterminator="\n", float_format="%.6g"
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def listing_records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as dicts of plain Python values (None for missing), ready for psycopg2 or JSON."""
    columns = [c for c in LISTING_COLUMNS if c.name in frame.columns]
    return [
        {c.name: _python_value(c, v) for c, v in zip(columns, row, strict=True)}
        for row in frame.loc[:, [c.name for c in columns]].itertuples(index=False, name=None)
    ]
