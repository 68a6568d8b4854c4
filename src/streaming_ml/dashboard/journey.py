"""A listing's journey: its row, each stage's time, the price per arm, label and error,
and why each arm gives its price.

All but the last come from the tables the pipeline writes (the listings table, the served
and shadow predictions tables, the outcomes table), so they cost a few primary-key reads
and need nothing else to be running. The explanation is the service's ``/explain`` answer,
as ``streaming-ml explain`` draws it; without a service (or for a listing that cannot be
priced) the journey says why there is none and shows the rest.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import psycopg2
import psycopg2.extras
from psycopg2 import sql

from streaming_ml.datasets.load import read_listings
from streaming_ml.datasets.predictions import read_predictions
from streaming_ml.errors import StreamingMLError
from streaming_ml.models.contributions import whole_pounds
from streaming_ml.schema.listing import FEATURES, TARGET, feature_problems

# (field of a prediction row, what happened then), in pipeline order.
STAGE_FIELDS: tuple[tuple[str, str], ...] = (
    ("source_ts_ms", "committed in Postgres"),
    ("kafka_ts_ms", "change event appended to Kafka"),
    ("bridge_received_ts_ms", "read by the bridge"),
    ("call_ts_ms", "model called"),
    ("predicted_ts_ms", "model answered"),
    ("written_ms", "prediction row written"),
)


# (listing id, listing row) -> the service's /explain answer (serving.ListingExplanation);
# raises a StreamingMLError that says why there is none.
Explainer = Callable[[int, Mapping[str, Any]], Mapping[str, Any]]


@dataclass(frozen=True)
class Tables:
    listings: str
    predictions: str
    shadow: str
    outcomes: str


def lookup(conn: Any, tables: Tables, listing_id: int, explain: Explainer) -> dict[str, Any]:
    """The journey of ``listing_id`` as JSON-ready data; ``found`` False when there is no
    such listing (a normal answer for a page, not an error). ``explain`` asks the service
    why; it is not asked for a listing that cannot be priced."""
    row = read_listings(conn, tables.listings, [listing_id]).get(listing_id)
    if row is None:
        return {
            "found": False,
            "listing_id": listing_id,
            "message": f"no listing {listing_id} in {tables.listings}",
        }
    label = row.get(TARGET)
    written = {}
    for table, default_arm in ((tables.predictions, "champion"), (tables.shadow, "shadow")):
        prediction = read_predictions(conn, table, [listing_id]).get(listing_id)
        if prediction is not None:
            written[prediction.get("arm") or default_arm] = prediction
    outcomes = _outcomes(conn, tables.outcomes, listing_id)
    problems = feature_problems(row)
    return _plain(
        {
            "found": True,
            "listing_id": listing_id,
            "features": {name: row.get(name) for name in FEATURES},
            "label": label,
            "problems": problems,
            "prices": [_price(arm, p, label, outcomes) for arm, p in written.items()],
            "stages": {arm: stages(p) for arm, p in written.items()},
            "explanation": explanation(listing_id, row, problems, written, explain),
        }
    )


def explanation(
    listing_id: int,
    row: Mapping[str, Any],
    problems: Mapping[str, str],
    written: Mapping[str, Mapping[str, Any]],
    explain: Explainer,
) -> dict[str, Any]:
    """Per arm that prices the listing now (its A/B arm, then the shadow): the base price
    and each feature's amount, exact and in the whole pounds the page shows, which add up
    to the shown price; and the model that wrote the arm's row, when there is one. Or no
    arm and the ``reason``."""
    if problems:
        reason = "the listing cannot be priced (dead-lettered), so it has no explanation"
        return {"arms": [], "reason": reason}
    try:
        answer = explain(listing_id, row)
    except StreamingMLError as error:
        return {"arms": [], "reason": str(error)}
    arms = [
        _explained_arm(e, written.get(e["arm"], {}).get("model_tag"))
        for e in answer["explanations"]
    ]
    return {"arms": arms, "reason": None}


def _explained_arm(explained: Mapping[str, Any], written_tag: str | None) -> dict[str, Any]:
    contributions = explained["contributions"]
    base, *amounts = whole_pounds(
        [explained["base_price"], *(c["amount"] for c in contributions)],
        explained["predicted_price"],
    )
    return {
        "arm": explained["arm"],
        "model_tag": explained["model_tag"],
        "written_tag": written_tag,
        "predicted_price": explained["predicted_price"],
        "base_price": explained["base_price"],
        "shown_price": base + sum(amounts),
        "shown_base": base,
        "contributions": [
            {**c, "shown": shown} for c, shown in zip(contributions, amounts, strict=True)
        ],
    }


def stages(prediction: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Each stage's epoch ms and the ms since the one before (None where unknown)."""
    times = dict(prediction)
    if times.get("predicted_ts_ms") is not None and times.get("model_latency_ms") is not None:
        times["call_ts_ms"] = times["predicted_ts_ms"] - times["model_latency_ms"]
    out: list[dict[str, Any]] = []
    previous: float | None = None
    for name, meaning in STAGE_FIELDS:
        ts = times.get(name)
        ts = None if ts is None else float(ts)
        delta = None if ts is None or previous is None else ts - previous
        out.append({"stage": name, "meaning": meaning, "ts_ms": ts, "delta_ms": delta})
        previous = ts if ts is not None else previous
    return out


def _price(
    arm: str, prediction: Mapping[str, Any], label: Any, outcomes: list[dict[str, Any]]
) -> dict[str, Any]:
    """The arm's price; the label and error from the evaluator's outcome when there is
    one for this model, else computed here from the listing's price."""
    tag = prediction.get("model_tag")
    price = float(prediction["predicted_price"])
    judged = [o for o in outcomes if o["arm"] == arm and o["model_tag"] == tag]
    if judged:
        latest = max(judged, key=lambda o: o["evaluated_ts_ms"])
        actual, error, source = latest["actual_price"], latest["error"], "evaluator"
    elif label is not None:
        actual, error, source = label, price - float(label), "listing"
    else:
        actual = error = source = None
    return {
        "arm": arm,
        "model_tag": tag,
        "predicted_price": price,
        "label": actual,
        "error": error,
        "abs_pct_error": abs(error) / float(actual) if error is not None and actual else None,
        "error_from": source,
    }


def _outcomes(conn: Any, table: str, listing_id: int) -> list[dict[str, Any]]:
    query = sql.SQL("SELECT * FROM {} WHERE listing_id = %s").format(
        sql.Identifier("public", table)
    )
    try:
        with conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
            cur.execute(query, (listing_id,))
            return [dict(r) for r in cur.fetchall()]
    except psycopg2.errors.UndefinedTable:
        # A database from before the evaluation: no outcomes, errors are computed here.
        conn.rollback()
        return []


def _plain(value: Any) -> Any:
    """JSON-ready: dates as ISO text, decimals as floats."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    return value
