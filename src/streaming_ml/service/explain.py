"""``streaming-ml explain LISTING_ID``: a listing, its price per arm, and why.

``gather`` reads the listing from Postgres with the prices the pipeline wrote for it (the
predictions table and the shadow table), then asks the service's ``/explain``, which
prices and explains it with the model of the listing's arm and with the shadow, if one
runs. ``render`` turns that into rich renderables, a price table and one bar chart per
model; the CLI prints them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import requests
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from streaming_ml.datasets.load import connect, read_listings
from streaming_ml.datasets.predictions import read_predictions
from streaming_ml.errors import DataError, ListingNotFoundError, ServiceUnavailableError
from streaming_ml.models.contributions import whole_pounds
from streaming_ml.schema.listing import FEATURES

logger = logging.getLogger(__name__)

# Cells each side of the axis: with the feature, value and amount columns the chart
# fits an 80-column terminal.
BAR_WIDTH = 16


@dataclass(frozen=True)
class ExplainedListing:
    listing_id: int
    listing: dict[str, Any]  # the stored row, asking price included
    written: dict[str, dict[str, Any]]  # arm -> the prediction row the pipeline wrote
    answer: dict[str, Any]  # the service's /explain answer
    reference_id: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "listing_id": self.listing_id,
            "listing": self.listing,
            "written": self.written,
            "reference_id": self.reference_id,
            **self.answer,
        }


def gather(
    dsn: str,
    tables: Mapping[str, str],
    service_url: str,
    listing_id: int,
    timeout_s: float,
    against: int | None = None,
) -> ExplainedListing:
    """The listing (and ``against``, the reference listing) from ``tables["listings"]``,
    what ``tables["predictions"]`` and ``tables["shadow"]`` hold for it, and the service's
    explanation. ListingNotFoundError, ServiceUnavailableError or DataError (the service
    cannot price it) say what to do."""
    ids = [listing_id] if against is None else [listing_id, against]
    conn = connect(dsn)
    try:
        rows = read_listings(conn, tables["listings"], ids)
        missing = [i for i in ids if i not in rows]
        if missing:
            raise ListingNotFoundError(
                f"no listing {missing[0]} in {tables['listings']}; pick an existing id "
                f"(`streaming-ml stack psql -c 'SELECT id FROM {tables['listings']} "
                "ORDER BY id DESC LIMIT 5'`) or insert some with `streaming-ml load`"
            )
        written: dict[str, dict[str, Any]] = {}
        for table, default_arm in (
            (tables["predictions"], "champion"),
            (tables["shadow"], "shadow"),
        ):
            row = read_predictions(conn, table, [listing_id]).get(listing_id)
            if row is not None:
                # Rows written before model experiments have no arm: the champion's.
                written[row.get("arm") or default_arm] = row
    finally:
        conn.close()
    reference = None if against is None else rows[against]
    answer = explain_listing(service_url, listing_id, rows[listing_id], timeout_s, reference)
    return ExplainedListing(listing_id, rows[listing_id], written, answer, against)


def explain_listing(
    service_url: str,
    listing_id: int,
    listing: Mapping[str, Any],
    timeout_s: float,
    reference: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The service's ``/explain`` answer for a listing row (its feature fields are sent;
    the id picks its A/B arm), against ``reference`` when given. The CLI and the
    dashboard's journey both ask through here."""
    body: dict[str, Any] = {"listing": _features(listing), "listing_id": listing_id}
    if reference is not None:
        body["reference"] = _features(reference)
    return request_explanation(service_url, body, timeout_s, f"listing {listing_id}")


def _features(row: Mapping[str, Any]) -> dict[str, Any]:
    return {name: row.get(name) for name in FEATURES}


def request_explanation(
    service_url: str, body: Mapping[str, Any], timeout_s: float, what: str
) -> dict[str, Any]:
    """POST ``body`` to the service's ``/explain``; its answer, or an error with the fix."""
    url = service_url.rstrip("/") + "/explain"
    try:
        response = requests.post(url, json=dict(body), timeout=timeout_s)
    except requests.RequestException as error:
        raise ServiceUnavailableError(
            f"the prediction service at {service_url} is not answering "
            f"({type(error).__name__}); start it with `streaming-ml serve` (or `make demo`), "
            "or point SML_SERVICE_URL at the one that runs"
        ) from error
    if response.status_code == 400:
        reason = response.json().get("error", response.text[:300])
        raise DataError(f"{what} cannot be priced, so it has no explanation: {reason}")
    if response.status_code == 404:
        raise ServiceUnavailableError(
            f"{url} does not exist: the service at {service_url} predates explanations; "
            "restart it from this version (`streaming-ml serve`)"
        )
    if response.status_code != 200:
        raise ServiceUnavailableError(
            f"{url} answered HTTP {response.status_code}: {response.text[:300]}; "
            "see the service's log"
        )
    return response.json()


# --- Rendering ---------------------------------------------------------------------------


def _pounds(amount: float, signed: bool = False) -> str:
    sign = ("+" if amount >= 0 else "-") if signed else ("-" if amount < 0 else "")
    return f"{sign}£{abs(amount):,.0f}"


def _value(name: str, value: Any) -> str:
    if value is None:
        return "unknown"
    if name == "mileage" and isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _bar(amount: float, largest: float) -> Text:
    """A bar left of the axis for a negative amount, right of it for a positive one."""
    cells = round(abs(amount) / largest * BAR_WIDTH) if largest > 0 else 0
    block = "█" * cells if cells else ("▏" if amount else "")
    text = Text()
    if amount < 0:
        text.append(" " * (BAR_WIDTH - len(block)))
        text.append(block, style="red")
        text.append("│")
    else:
        text.append(" " * BAR_WIDTH + "│")
        text.append(block, style="green")
    return text


def bar_chart(explanation: Mapping[str, Any], reference_id: int | None = None) -> Table:
    """One model's decomposition: the base, each feature's amount as a bar, the price."""
    method = explanation["method"]
    rather = f" rather than {_pounds(explanation['base_price'])}" if method == "reference" else ""
    title = (
        f"Why {_pounds(explanation['predicted_price'])}{rather}: {explanation['arm']}, "
        f"{explanation['model_tag']}"
    )
    table = Table(title=title, box=None, show_header=False, title_justify="left", pad_edge=False)
    table.add_column("feature")
    table.add_column("value", justify="right")
    table.add_column("amount", justify="right")
    table.add_column("bar", no_wrap=True)
    base_label = f"listing {reference_id}" if method == "reference" else "base price"
    contributions = explanation["contributions"]
    # Whole pounds that add up to the price as shown: rounding each amount on its own can
    # miss it by a pound or more.
    base, *amounts = whole_pounds(
        [explanation["base_price"], *(c["amount"] for c in contributions)],
        explanation["predicted_price"],
    )
    table.add_row(base_label, "", _pounds(base), "")
    largest = max((abs(c["amount"]) for c in contributions), default=0.0)
    for item, shown in zip(contributions, amounts, strict=True):
        table.add_row(
            item["feature"],
            _value(item["feature"], item["value"]),
            _pounds(shown, signed=True),
            _bar(item["amount"], largest),
        )
    table.add_row(Text("= price", style="bold"), "", _pounds(base + sum(amounts)), "")
    return table


def price_table(explained: ExplainedListing) -> tuple[Table, list[str]]:
    """Per arm: the model, the price the pipeline wrote and the price the service gives now;
    and a note for every arm whose stored price came from another model."""
    table = Table("arm", "model now", "written", "now", title="Price per arm", title_justify="left")
    notes = []
    explained_arms = {e["arm"]: e for e in explained.answer["explanations"]}
    for arm in [*explained_arms, *(a for a in explained.written if a not in explained_arms)]:
        now = explained_arms.get(arm)
        row = explained.written.get(arm)
        written = _pounds(row["predicted_price"]) if row else "not yet"
        if row and now and row.get("model_tag") != now["model_tag"]:
            written += " *"
            notes.append(
                f"* {arm}: written by {row.get('model_tag')}; the service prices this arm "
                f"with {now['model_tag']} now (a change of the listing re-prices it)"
            )
        elif row and now is None:
            notes.append(f"{arm}: written by {row.get('model_tag')}; no {arm} is served now")
        table.add_row(
            arm,
            now["model_tag"] if now else "-",
            written,
            _pounds(now["predicted_price"]) if now else "-",
        )
    return table, notes


def render(explained: ExplainedListing) -> RenderableType:
    listing = explained.listing
    facts = " · ".join(f"{name} {_value(name, listing.get(name))}" for name in FEATURES)
    header = Text.assemble(
        (f"Listing {explained.listing_id}", "bold"),
        f"  {facts}",
        f" · asking {_pounds(listing['price'])}" if listing.get("price") is not None else "",
    )
    table, notes = price_table(explained)
    parts: list[RenderableType] = [header, table, *(Text(note, style="yellow") for note in notes)]
    if explained.reference_id is not None:
        parts.append(
            Text(
                f"Against listing {explained.reference_id}: each amount is the feature's "
                "share of the difference; features both listings share contribute £0."
            )
        )
    for explanation in explained.answer["explanations"]:
        parts += [Text(""), bar_chart(explanation, explained.reference_id)]
    return Group(*parts)
