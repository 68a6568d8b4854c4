"""Everything behind ``service.py``: request models, input validation, the predict
glue, and a helper that runs the real service as a child process.

``service.py`` stays a thin BentoML class; the rules a request must satisfy come
from ``streaming_ml.data`` (``check_value`` decides, with the same bounds). The
process helper is shared by the CLI (``streaming-ml serve``), the demo, the
benchmark and the tests, so there is one way to start and stop the service.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, NotRequired

import anyio
import numpy as np
import requests
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model
from pydantic_core import InitErrorDetails, PydanticCustomError
from typing_extensions import TypedDict

from streaming_ml.config import REPO_ROOT, Settings, settings_env
from streaming_ml.contributions import against_reference, largest_first
from streaming_ml.data import (
    FEATURE_COLUMNS,
    FEATURES,
    FLOAT32_TINY,
    LISTING_ID_KEY,
    Column,
    check_value,
    column_bounds,
)
from streaming_ml.exceptions import DataError, ModelNotFoundError, ServiceUnavailableError
from streaming_ml.processes import descendants, port_free, stop_group

if TYPE_CHECKING:
    import bentoml
    from starlette.responses import Response

    from streaming_ml.lineup import Arm, Lineup, ServedModel
    from streaming_ml.model import Explained

logger = logging.getLogger(__name__)

SERVICE_TARGET = "service:PricePredictor"

# The reference request: two Ford listings, column-oriented, as a client sends
# them (``price`` included; the service ignores it). Docs and tests reuse it.
EXAMPLE_INPUT: dict[str, list[Any]] = {
    "model": ["C-MAX", "EcoSport"],
    "year": [2014, 2019],
    "price": [8295, 18995],
    "transmission": ["Semi-Auto", "Automatic"],
    "mileage": [40000, 1400],
    "fuelType": ["Diesel", "Petrol"],
    "tax": [160, 150],
    "mpg": [50.4, 44.1],
    "engineSize": [2.0, 1.0],
}
# The same two listings as ``/predict_batch`` records, with the bridge's extra key.
EXAMPLE_RECORDS: list[dict[str, Any]] = [
    {"key": row, **{name: EXAMPLE_INPUT[name][row] for name in FEATURES}} for row in range(2)
]
# The second one alone, as ``/explain`` takes a listing.
EXAMPLE_LISTING: dict[str, Any] = {name: EXAMPLE_INPUT[name][1] for name in FEATURES}

# Only JSON documentation: values are typed loosely on purpose so every rule,
# type included, is decided by data.check_value and reported with its field.
_JSON_ITEM_TYPES = {"category": "string", "int": "integer", "float": "number"}
# Below this many rows a plain check_value loop is cheaper than numpy set-up.
_VECTORISE_FROM_ROWS = 32
# Requests up to this many rows are priced inline on the event loop (see Predictor).
INLINE_MAX_ROWS = 64
# Defaults of the request limits (settings SML_SERVICE_MAX_*): the bridge's largest batch is
# 500 records (~100 KB); the bench's biggest /predict is 1,000 rows (~150 KB). An explained
# row costs a few hundred predictions (TreeSHAP: ~6 ms for the shipped model), so 1,000
# of them keep a request well inside the 30 s traffic timeout.
DEFAULT_MAX_ROWS = 10_000
DEFAULT_MAX_EXPLAINED_ROWS = 1_000
# Cap the error list so a garbage million-row body cannot produce a huge reply.
_MAX_REPORTED_PROBLEMS = 50


def _column_field(column: Column) -> tuple[Any, Any]:
    return (
        list[Any],
        Field(
            description=f"{column.description}; one value per row",
            examples=[EXAMPLE_INPUT[column.name]],
            json_schema_extra={"items": {"type": _JSON_ITEM_TYPES[column.kind]}},
        ),
    )


# A body field, not a query parameter: BentoML maps an API's inputs to the JSON body, so
# the option is in the OpenAPI schema, validated with the rest, and BentoML's own clients
# can send it (they have no way to add a query string).
_EXPLAIN_FIELD = Field(
    False,
    description="Also return, per row, the base price and each feature's contribution in "
    "GBP (they add up to the price); costs a few hundred predictions per row",
)


@dataclass(frozen=True)
class Problem:
    """Why one input value (or column) cannot be priced; ``loc`` is its JSON path."""

    loc: tuple[str | int, ...]
    msg: str

    @property
    def path(self) -> str:
        text = ""
        for part in self.loc:
            text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
        return text or "body"

    def as_dict(self) -> dict[str, Any]:
        return {"loc": list(self.loc), "msg": self.msg, "type": "value_error"}


class _Repeats(dict[str, Any]):
    """A parsed JSON object that repeated ``repeated`` keys (key -> times seen)."""

    repeated: dict[str, int]


def duplicate_keys(body: str | bytes | bytearray) -> list[Problem]:
    """A Problem for every key that some object of the JSON ``body`` repeats, at the
    key's JSON path; none when the body has no repeat or is not JSON at all.

    Parsers disagree on which of two equal keys wins (Python and pydantic keep the last,
    others the first or refuse), so a body with one can mean one thing to a filter in
    front of the service and another to the model: it is refused, never guessed.
    """

    found: list[_Repeats] = []

    def pairs_to_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        obj = _Repeats(pairs)
        if len(obj) != len(pairs):
            counts: dict[str, int] = {}
            for key, _ in pairs:
                counts[key] = counts.get(key, 0) + 1
            obj.repeated = {key: n for key, n in counts.items() if n > 1}
            found.append(obj)
        return obj

    try:
        parsed = json.loads(body, object_pairs_hook=pairs_to_object)
    except (ValueError, RecursionError):  # not JSON: the caller's parser says why
        return []
    if not found:
        return []  # the common case: no walk over a body of many values
    problems: list[Problem] = []
    # Depth first in document order (children pushed reversed), iterative so a deeply
    # nested body cannot exhaust the stack here.
    pending: list[tuple[tuple[str | int, ...], Any]] = [((), parsed)]
    while pending:
        loc, value = pending.pop()
        if isinstance(value, _Repeats):
            problems += [
                Problem(
                    (*loc, key),
                    f"appears {times} times in one JSON object; send each key once "
                    "(parsers disagree on which value wins)",
                )
                for key, times in getattr(value, "repeated", {}).items()
            ]
            pending += reversed([((*loc, key), item) for key, item in value.items()])
        elif isinstance(value, list):
            pending += reversed([((*loc, index), item) for index, item in enumerate(value)])
    return problems


class UniqueKeysBody(BaseModel):
    """Base of the request models: parsed from JSON, a body may not repeat a key.

    BentoML parses a request body with the input model's ``model_validate_json``; this
    override is the one place both APIs pass through, before any value is used.
    """

    model_config = ConfigDict(extra="ignore")

    def parsed_keys_at_least(self) -> int:
        """A lower bound on how many keys the body's objects held after parsing (0:
        unknown, so the body is always searched for repeats)."""
        return 0

    @classmethod
    def model_validate_json(cls, json_data: str | bytes | bytearray, **kwargs: Any) -> Any:
        try:
            request = super().model_validate_json(json_data, **kwargs)
        except ValidationError:
            _refuse_duplicate_keys(cls, json_data)
            raise
        # Every key in JSON text is followed by a colon. When the parsed objects still
        # hold as many keys as the text has colons, no object lost a key to a repeat:
        # a byte count proves it without parsing the bridge's batches a second time.
        colons = json_data.count(":" if isinstance(json_data, str) else b":")
        if request.parsed_keys_at_least() != colons:
            _refuse_duplicate_keys(cls, json_data)
        return request


def _refuse_duplicate_keys(model: type[BaseModel], body: str | bytes | bytearray) -> None:
    """Raise a ValidationError naming each repeated key (BentoML answers it with a 400)."""
    problems = duplicate_keys(body)
    if problems:
        raise ValidationError.from_exception_data(
            model.__name__,
            [
                InitErrorDetails(
                    type=PydanticCustomError("duplicate_key", f"{p.path} {p.msg}"),
                    loc=p.loc,
                    input=p.loc[-1],
                )
                for p in problems[:_MAX_REPORTED_PROBLEMS]
            ],
        )


class _ColumnsBody(UniqueKeysBody):
    def parsed_keys_at_least(self) -> int:
        # Every feature is a required key, and ``explain`` one when it was sent; extra
        # keys are dropped, so uncounted.
        return len(FEATURES) + ("explain" in self.model_fields_set)


PredictRequest: type[UniqueKeysBody] = create_model(
    "PredictRequest",
    __base__=_ColumnsBody,
    __doc__="Listings as columns: every feature is a list with one value per row. "
    "Other keys (such as the target `price`) are ignored.",
    **{column.name: _column_field(column) for column in FEATURE_COLUMNS},
    explain=(bool, _EXPLAIN_FIELD),
)


class PredictBatchRequest(UniqueKeysBody):
    """Listings as records, the bridge's micro-batch format."""

    records: list[dict[str, Any]] = Field(
        description="One object per listing with the feature fields "
        f"({', '.join(FEATURES)}); other keys are ignored",
        examples=[EXAMPLE_RECORDS],
    )
    explain: bool = _EXPLAIN_FIELD

    def parsed_keys_at_least(self) -> int:
        # ``records`` itself, every record's keys (records keep all of theirs), and
        # ``explain`` when it was sent.
        return (
            1 + sum(len(record) for record in self.records) + ("explain" in self.model_fields_set)
        )


class ExplainRequest(UniqueKeysBody):
    """One listing to explain with every model that prices it (a small body: always
    searched for repeated keys)."""

    listing: dict[str, Any] = Field(
        description=f"The listing's feature fields ({', '.join(FEATURES)}); others are ignored",
        examples=[EXAMPLE_LISTING],
    )
    listing_id: int | None = Field(
        None,
        description="Its id, which picks its A/B arm as on /predict_batch (none: champion)",
        examples=[7],
    )
    reference: dict[str, Any] | None = Field(
        None,
        description="Another listing: explain the difference from its price instead of "
        "from the model's base price (a feature both share then contributes exactly 0)",
    )


# A TypedDict, not a BaseModel: BentoML validates every returned item against it,
# and plain dicts are about six times cheaper to check than model instances.
class PriceExplanation(TypedDict):
    base_price: Annotated[
        float,
        Field(description="The model's price before any feature is known (exp of its mean "
              "log price over the training rows), GBP"),
    ]  # fmt: skip
    contributions: Annotated[
        dict[str, float],
        Field(description="Per feature, GBP: base_price plus all of them is the price"),
    ]


class ExplainedPrice(TypedDict):
    predicted_price: Annotated[float, Field(description="Predicted price in GBP")]
    explanation: PriceExplanation


class ShadowPrediction(TypedDict):
    predicted_price: Annotated[float, Field(description="The shadow model's price (not served)")]
    model_tag: Annotated[str, Field(description="BentoML tag of the shadow model")]
    explanation: NotRequired[PriceExplanation]


class BatchPrediction(TypedDict):
    predicted_price: Annotated[float, Field(description="Predicted price in GBP")]
    model_tag: Annotated[str, Field(description="BentoML tag of the model that priced it")]
    model_name: Annotated[str, Field(description="Model name (the tag before ':')")]
    model_version: Annotated[str, Field(description="Model version (the tag after ':')")]
    arm: Annotated[str, Field(description="champion or challenger (the listing's A/B arm)")]
    explanation: NotRequired[PriceExplanation]
    shadow: NotRequired[ShadowPrediction]


class FeatureContribution(TypedDict):
    feature: str
    value: Annotated[Any, Field(description="The listing's value of the feature")]
    amount: Annotated[float, Field(description="Its contribution to the price, GBP")]


class ArmExplanation(TypedDict):
    arm: Annotated[str, Field(description="champion, challenger or shadow")]
    model_tag: str
    model_name: str
    model_version: str
    predicted_price: Annotated[float, Field(description="This model's price of the listing")]
    base_price: Annotated[
        float,
        Field(description="tree_shap: the model's base price; reference: its price of the "
              "reference listing"),
    ]  # fmt: skip
    method: Literal["tree_shap", "reference"]
    contributions: Annotated[
        list[FeatureContribution],
        Field(description="Every feature, largest amount first; they add up to "
              "predicted_price - base_price"),
    ]  # fmt: skip


class ListingExplanation(TypedDict):
    listing: dict[str, Any]
    listing_id: int | None
    reference: NotRequired[dict[str, Any]]
    explanations: Annotated[
        list[ArmExplanation],
        Field(description="The arm that serves the listing, then the shadow if one runs"),
    ]


# --- Validation -----------------------------------------------------------------


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
            "detail": [p.as_dict() for p in self.problems[:_MAX_REPORTED_PROBLEMS]],
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


# --- Predicting -------------------------------------------------------------------


def model_card(bento_model: bentoml.Model) -> dict[str, Any]:
    """What ``/model_info`` reports about a stored model."""
    info = bento_model.info
    return {
        "tag": str(bento_model.tag),
        "name": bento_model.tag.name,
        "version": bento_model.tag.version,
        "created_at": info.creation_time.isoformat(),
        "module": info.module,
        "labels": dict(info.labels),
        "metadata": without_paths(dict(info.metadata)),
        "features": list(FEATURES),
    }


def without_paths(value: Any) -> Any:
    """``value`` with every ``path`` entry replaced by the file's name alone: where the
    training data lived on the trainer's disk is nobody's business on the network."""
    if isinstance(value, Mapping):
        cleaned = {}
        for key, item in value.items():
            if key == "path" and isinstance(item, str):
                cleaned["file"] = Path(item).name
            else:
                cleaned[key] = without_paths(item)
        return cleaned
    if isinstance(value, list):
        return [without_paths(item) for item in value]
    return value


class ArmMetrics:
    """Per-arm Prometheus metrics on the service's /metrics (BentoML's registry)."""

    def __init__(self) -> None:
        import bentoml

        labels = ["arm", "model_tag"]
        self.rows = bentoml.metrics.Counter(
            name="sml_service_arm_rows", documentation="Rows priced per arm", labelnames=labels
        )
        self.requests = bentoml.metrics.Counter(
            name="sml_service_arm_requests",
            documentation="Requests that reached each arm",
            labelnames=labels,
        )
        self.errors = bentoml.metrics.Counter(
            name="sml_service_arm_errors",
            documentation="Model failures per arm",
            labelnames=labels,
        )
        self.latency = bentoml.metrics.Histogram(
            name="sml_service_arm_latency_seconds",
            documentation="Model time per request and arm",
            labelnames=labels,
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
        )
        self.refusals = bentoml.metrics.Counter(
            name="sml_service_model_refusals",
            documentation="Models refused by the hot swap (failed to load or the canary)",
            labelnames=["model_tag"],
        )
        self.swaps = bentoml.metrics.Counter(
            name="sml_service_model_swaps", documentation="Lineup changes applied"
        )


class Predictor:
    """Validates requests and prices them with the current lineup (``streaming_ml.lineup``).

    Each request reads ``self.lineup`` once: a hot swap replaces the attribute, and a
    request already running finishes on the models it started with; so does its
    explanation, which comes from the very model that priced the row."""

    def __init__(
        self,
        lineup: Lineup,
        max_rows: int = DEFAULT_MAX_ROWS,
        metrics: ArmMetrics | None = None,
        status: Callable[[], Mapping[str, Any]] | None = None,
        max_explained_rows: int = DEFAULT_MAX_EXPLAINED_ROWS,
    ) -> None:
        self.lineup = lineup
        self.max_rows = max_rows
        self.max_explained_rows = max_explained_rows
        self.metrics = metrics
        self._status = status

    def swap(self, lineup: Lineup) -> None:
        self.lineup = lineup
        if self.metrics is not None:
            self.metrics.swaps.inc()

    @property
    def card(self) -> dict[str, Any]:
        """``/model_info``: the champion's card at the top level (as before experiments),
        every arm, and what the registry follower knows."""
        lineup = self.lineup
        info = {**lineup.champion.card, "arms": lineup.describe()}
        if self._status is not None:
            info["registry"] = dict(self._status())
        return info

    def _call(
        self,
        served: ServedModel,
        arm: str,
        records: Sequence[Mapping[str, Any]],
        work: Callable[[Any, Sequence[Mapping[str, Any]]], Any],
    ) -> Any:
        """``work(model, records)`` with the arm's metrics around it."""
        labels = (arm, served.tag)
        started = time.perf_counter()
        try:
            result = work(served.model, records)
        except Exception:
            if self.metrics is not None:
                self.metrics.errors.labels(*labels).inc()
            raise
        if self.metrics is not None:
            self.metrics.latency.labels(*labels).observe(time.perf_counter() - started)
            self.metrics.requests.labels(*labels).inc()
            self.metrics.rows.labels(*labels).inc(len(records))
        return result

    def _price(
        self, served: ServedModel, arm: str, records: Sequence[Mapping[str, Any]], explain: bool
    ) -> tuple[list[float], list[PriceExplanation] | None]:
        """Prices, and with ``explain`` each row's explanation by the same model."""
        if not explain:
            prices = self._call(served, arm, records, _predict)
            return prices, None
        explained: Explained = self._call(served, arm, records, _explain)
        rows = [PriceExplanation(**explained.row(i)) for i in range(len(records))]
        return explained.prices.tolist(), rows

    def predict_columns(self, request: BaseModel) -> list[float] | list[ExplainedPrice]:
        """``/predict``: one price per row of a PredictRequest, in row order (champion);
        with ``explain``, each price with its explanation."""
        columns = {name: getattr(request, name) for name in FEATURES}
        if validate_columns(columns) == 0:
            return []
        # Rows as dicts feed the model's record path; cheaper than a DataFrame for
        # the small requests this endpoint sees.
        rows = zip(*columns.values(), strict=True)
        records = [dict(zip(FEATURES, row, strict=True)) for row in rows]
        prices, explanations = self._price(
            self.lineup.champion, "champion", records, request.explain
        )
        if explanations is None:
            return prices
        return [
            ExplainedPrice(predicted_price=price, explanation=explanation)
            for price, explanation in zip(prices, explanations, strict=True)
        ]

    def predict_records(
        self, records: Sequence[Mapping[str, Any]], explain: bool = False
    ) -> list[BatchPrediction]:
        """``/predict_batch``: price, tag, name, version and arm per record, in order; with
        a shadow model, each item also carries the shadow's price under ``shadow``; with
        ``explain``, each price (the shadow's too) has its ``explanation``."""
        validate_records(records)
        if not records:
            return []
        lineup = self.lineup
        arms = [lineup.arm_of(record.get(LISTING_ID_KEY)) for record in records]
        prices: list[float] = [0.0] * len(records)
        explanations: list[PriceExplanation | None] = [None] * len(records)
        for arm in sorted(set(arms)):
            rows = [i for i, a in enumerate(arms) if a == arm]
            chosen = records if len(rows) == len(records) else [records[i] for i in rows]
            priced, explained = self._price(lineup.model_of(arm), arm, chosen, explain)
            for k, i in enumerate(rows):
                prices[i] = priced[k]
                explanations[i] = explained[k] if explained is not None else None
        answer = [
            BatchPrediction(
                predicted_price=price,
                model_tag=(served := lineup.model_of(arm)).tag,
                model_name=served.name,
                model_version=served.version,
                arm=arm,
            )
            for price, arm in zip(prices, arms, strict=True)
        ]
        if explain:
            for item, explanation in zip(answer, explanations, strict=True):
                assert explanation is not None
                item["explanation"] = explanation
        if lineup.shadow is not None:
            shadow_tag = lineup.shadow.tag
            priced, explained = self._price(lineup.shadow, "shadow", records, explain)
            for i, (item, price) in enumerate(zip(answer, priced, strict=True)):
                item["shadow"] = ShadowPrediction(predicted_price=price, model_tag=shadow_tag)
                if explained is not None:
                    item["shadow"]["explanation"] = explained[i]
        return answer

    def explain_listing(self, request: ExplainRequest) -> ListingExplanation:
        """``/explain``: the listing's decomposition by the model of its arm, then by the
        shadow; against ``request.reference`` when one is given."""
        listing = {name: request.listing.get(name) for name in FEATURES}
        problems = listing_problems(listing, "listing")
        reference = None
        if request.reference is not None:
            reference = {name: request.reference.get(name) for name in FEATURES}
            problems += listing_problems(reference, "reference")
        if problems:
            raise InvalidRequestError(problems)
        lineup = self.lineup
        arms: list[Arm] = [lineup.arm_of(request.listing_id)]
        if lineup.shadow is not None:
            arms.append("shadow")
        answer = ListingExplanation(
            listing=listing,
            listing_id=request.listing_id,
            explanations=[
                self._explain_arm(lineup.model_of(arm), arm, listing, reference) for arm in arms
            ],
        )
        if reference is not None:
            answer["reference"] = reference
        return answer

    def _explain_arm(
        self,
        served: ServedModel,
        arm: str,
        listing: dict[str, Any],
        reference: dict[str, Any] | None,
    ) -> ArmExplanation:
        if reference is None:
            explained: Explained = self._call(served, arm, [listing], _explain)
            base, price, amounts = explained.base[0], explained.prices[0], explained.amounts[0]
        else:

            def against(model: Any, rows: Sequence[Mapping[str, Any]]) -> Any:
                return against_reference(model.predict_records, rows[0], reference, FEATURES)

            base, price, amounts = self._call(served, arm, [listing], against)
        ranked = largest_first(dict(zip(FEATURES, map(float, amounts), strict=True)))
        return ArmExplanation(
            arm=arm,
            model_tag=served.tag,
            model_name=served.name,
            model_version=served.version,
            predicted_price=float(price),
            base_price=float(base),
            method="tree_shap" if reference is None else "reference",
            contributions=[
                FeatureContribution(feature=name, value=listing[name], amount=amount)
                for name, amount in ranked
            ],
        )

    # The HTTP side. A small request costs less to price than a hop to a worker
    # thread, so it is priced on the event loop; a big one, or any explained one
    # (a few hundred times the work per row), goes to a thread so /readyz and
    # /metrics keep answering while it runs.

    async def handle_predict(self, request: BaseModel) -> list[Any] | Response:
        rows = len(getattr(request, FEATURES[0]))
        return await self._answer(self.predict_columns, request, rows, request.explain)

    async def handle_predict_batch(self, request: PredictBatchRequest) -> list[Any] | Response:
        def price(records: list[dict[str, Any]]) -> list[BatchPrediction]:
            return self.predict_records(records, request.explain)

        return await self._answer(price, request.records, len(request.records), request.explain)

    async def handle_explain(self, request: ExplainRequest) -> ListingExplanation | Response:
        return await self._answer(self.explain_listing, request, 1, explain=True)

    async def _answer(
        self, price: Callable[[Any], Any], payload: Any, rows: int, explain: bool
    ) -> Any:
        if explain and self.max_explained_rows < self.max_rows:
            limit, what = self.max_explained_rows, "explained rows"
            setting = "SML_SERVICE_MAX_EXPLAINED_ROWS"
        else:
            limit, what, setting = self.max_rows, "rows", "SML_SERVICE_MAX_ROWS"
        if rows > limit:
            return _refuse(
                413,
                f"{rows} {what} is over the limit of {limit} per request ({setting}); "
                "split the request",
                {},
            )
        return await _answer(price, payload, inline=rows <= INLINE_MAX_ROWS and not explain)


def _predict(model: Any, records: Sequence[Mapping[str, Any]]) -> list[float]:
    return model.predict_records(records).tolist()


def _explain(model: Any, records: Sequence[Mapping[str, Any]]) -> Explained:
    return model.explain_records(records)


async def _answer(price: Callable[[Any], Any], payload: Any, inline: bool) -> Any:
    """``price(payload)``, or the 400 reply naming every bad field."""
    try:
        if inline:
            return price(payload)
        return await anyio.to_thread.run_sync(price, payload)
    except InvalidRequestError as error:
        from starlette.responses import JSONResponse

        return JSONResponse(error.to_json(), status_code=400)


class RequestGuard:
    """ASGI middleware: what a POST must be before any of it is read or parsed.

    - a body is JSON (``Content-Type: application/json``), else 415: a web page cannot
      send a "simple" cross-origin POST (text/plain, form) that the APIs would parse;
    - its length is declared and at most ``max_body_bytes``, else 411 / 413: one huge
      body must not grow the worker or stall ``/readyz`` for everyone;
    - at most ``max_concurrency`` POSTs are in flight, else 429 with ``Retry-After``.
    Rows per request are checked by the APIs (``max_rows``), after parsing.
    """

    def __init__(self, app: Any, max_body_bytes: int, max_concurrency: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_concurrency = max_concurrency
        self.in_flight = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        refusal = self._refusal(dict(scope["headers"]))
        if refusal is not None:
            status, message, extra = refusal
            await _refuse(status, message, extra)(scope, receive, send)
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1

    def _refusal(self, headers: Mapping[bytes, bytes]) -> tuple[int, str, dict[str, str]] | None:
        length = headers.get(b"content-length")
        chunked = b"chunked" in headers.get(b"transfer-encoding", b"").lower()
        if chunked or (length is None and headers.get(b"transfer-encoding")):
            return 411, "send the body with a Content-Length (chunked bodies are refused)", {}
        try:
            size = int(length) if length is not None else 0
        except ValueError:
            return 400, "Content-Length is not a number", {}
        if size > self.max_body_bytes:
            return (
                413,
                (
                    f"body of {size} bytes is over the limit of {self.max_body_bytes} "
                    "(SML_SERVICE_MAX_BODY_BYTES); send fewer rows per request"
                ),
                {},
            )
        content_type = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        if size > 0 and content_type != b"application/json":
            return 415, "this API takes a JSON body: send Content-Type: application/json", {}
        if self.in_flight >= self.max_concurrency:
            return (
                429,
                (
                    f"{self.in_flight} requests in flight, the limit is {self.max_concurrency} "
                    "(SML_SERVICE_MAX_CONCURRENCY); retry shortly"
                ),
                {"Retry-After": "1"},
            )
        return None


def _refuse(status: int, message: str, headers: Mapping[str, str]) -> Any:
    from starlette.responses import JSONResponse

    body = {"error": message, "detail": [{"loc": ["body"], "msg": message, "type": str(status)}]}
    return JSONResponse(body, status_code=status, headers=dict(headers))


# --- Running the service as a process -----------------------------------------------


class ServiceProcess:
    """``bentoml serve service:PricePredictor`` as a child process on one port.

    Use as a context manager: entering starts the service and waits until
    ``/readyz`` answers; leaving stops the server and its workers (SIGTERM,
    then SIGKILL), so no BentoML process outlives it. ``model_tag`` names the model
    (``name:version``): pinned without ``settings``; with them, the service follows the
    registry of that stack and ``model_tag`` is its fallback and first champion (see
    ``streaming_ml.lineup``). ``bentoml_home`` selects the model store; ``log_path``
    receives the service's output (None: inherit this terminal). If the
    starting process dies without stopping it, the service gets SIGTERM too
    (Linux), so start it from a thread that lives as long as it should.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 3000,
        model_tag: str = "ford_price:latest",
        bentoml_home: Path | None = None,
        log_path: Path | None = None,
        startup_timeout_s: float = 120.0,
        repo_root: Path = REPO_ROOT,
        settings: Settings | None = None,
    ) -> None:
        self.settings = settings
        self.host = host
        self.port = port
        self.model_tag = model_tag
        self.bentoml_home = bentoml_home
        self.log_path = log_path
        self.startup_timeout_s = startup_timeout_s
        self.repo_root = repo_root
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        """Process id of the running service (also its process group id)."""
        return self._process.pid if self._process is not None else None

    def _environment(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.settings is not None:
            # Same stack, same registry: the service follows the champion (SML_MODEL_FOLLOW).
            env.update(settings_env(self.settings))
        else:
            env["SML_MODEL_FOLLOW"] = "false"
        name, _, version = self.model_tag.partition(":")
        env.update(SML_MODEL_NAME=name, SML_MODEL_VERSION=version or "latest")
        env.setdefault("BENTOML_DO_NOT_TRACK", "true")
        if self.bentoml_home is not None:
            env["BENTOML_HOME"] = str(self.bentoml_home)
        return env

    def start(self) -> str:
        """Start the service and wait until it is ready; return its base URL."""
        if self._process is not None:
            return self.url
        if not port_free(self.host, self.port):
            raise ServiceUnavailableError(
                f"port {self.port} on {self.host} is already in use; stop whatever listens "
                "there (an earlier `streaming-ml serve`?) or choose another port"
            )
        command = [sys.executable, "-m", "bentoml", "serve", SERVICE_TARGET]
        command += ["--host", self.host, "--port", str(self.port)]
        output = None
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            output = self.log_path.open("ab")
        logger.info(
            "starting prediction service",
            extra={"url": self.url, "model": self.model_tag, "log": str(self.log_path)},
        )
        try:
            # A new session makes the service and its workers one process group.
            self._process = subprocess.Popen(
                command,
                cwd=self.repo_root,
                env=self._environment(),
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT if output else None,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        finally:
            if output is not None:
                output.close()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self.url

    def wait_ready(self) -> None:
        """Poll ``/readyz`` until it answers 200, the process dies, or the deadline."""
        assert self._process is not None, "start() first"
        started = time.monotonic()
        deadline = started + self.startup_timeout_s
        next_report = started + 5.0
        ready_url = f"{self.url}/readyz"
        with requests.Session() as session:
            while True:
                code = self._process.poll()
                if code is not None:
                    raise self._startup_failure(code)
                try:
                    # BentoML's arbiter listens before the worker accepts: a request
                    # sent then waits in the backlog, so a longer read timeout
                    # answers as soon as the worker is up instead of retrying blind.
                    if session.get(ready_url, timeout=(1.0, 3.0)).status_code == 200:
                        logger.info(
                            "prediction service ready",
                            extra={
                                "url": self.url,
                                "elapsed_s": round(time.monotonic() - started, 1),
                            },
                        )
                        return
                except requests.RequestException:
                    pass  # not listening yet
                now = time.monotonic()
                if now >= deadline:
                    raise ServiceUnavailableError(
                        f"prediction service at {self.url} not ready after "
                        f"{self.startup_timeout_s:.0f}s; check its log.{self._log_excerpt()}"
                    )
                if now >= next_report:
                    logger.info(
                        "waiting for prediction service",
                        extra={
                            "url": ready_url,
                            "elapsed_s": round(now - started, 1),
                            "timeout_s": self.startup_timeout_s,
                        },
                    )
                    next_report = now + 5.0
                time.sleep(0.2)

    def _startup_failure(self, code: int) -> ServiceUnavailableError:
        hint = "see its log"
        if re.search(r"not (be )?found", self.log_tail(200), re.IGNORECASE):
            hint = "the model is not in the store: run `streaming-ml train` or pass a stored tag"
        return ServiceUnavailableError(
            f"prediction service exited with code {code} while starting model "
            f"{self.model_tag}; {hint}.{self._log_excerpt()}"
        )

    def log_tail(self, lines: int = 30) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def _log_excerpt(self) -> str:
        tail = self.log_tail()
        if tail:
            return f"\nlast lines of {self.log_path}:\n{tail}"
        return " Its output is above." if self.log_path is None else ""

    def wait(self) -> int:
        """Block until the service exits; return its exit code."""
        assert self._process is not None, "start() first"
        return self._process.wait()

    def processes(self) -> list[int]:
        """Pids of the service: the BentoML arbiter first, then its workers."""
        if self._process is None:
            return []
        return [self._process.pid, *descendants(self._process.pid)]

    def stop(self, timeout_s: float = 15.0) -> None:
        """SIGTERM the service, SIGKILL whatever of it is left after ``timeout_s``."""
        if self._process is None:
            return
        # BentoML's workers run in sessions of their own, out of reach of a group
        # signal: remember them now, while they are still the arbiter's children.
        workers = descendants(self._process.pid)
        process, self._process = self._process, None
        # The session leader's pid is also the group id.
        if not stop_group(process.pid, timeout=timeout_s, stragglers=workers):
            logger.warning(
                "prediction service ignored SIGTERM; killed it", extra={"pid": process.pid}
            )
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=5.0)  # collect the exit status, if not reaped already
        logger.info("prediction service stopped", extra={"url": self.url})

    def __enter__(self) -> ServiceProcess:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _die_with_parent() -> None:
    """In the child before exec: get SIGTERM if the parent dies without stopping us.

    The service runs in its own session (so it can be stopped as a group), which
    also shields it from the parent's Ctrl-C; this keeps a crashed or SIGKILLed
    parent from leaving an orphaned service on its port. Linux only.
    """
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def serve_forever(
    host: str,
    port: int,
    model_tag: str,
    bentoml_home: Path | None = None,
    settings: Settings | None = None,
) -> int:
    """Run the service in the foreground until it exits, Ctrl-C or SIGTERM; return its code."""

    def _terminate(signum: int, frame: object) -> None:
        raise SystemExit(0)  # unwinds through ``with service``, which stops the workers

    if bentoml_home is None:
        # Same model store as the child: fail now with the `streaming-ml train` hint
        # rather than after BentoML's traceback scrolls past. A following service may
        # start with an empty store when the registry has a champion to import.
        from streaming_ml.exceptions import RegistryError
        from streaming_ml.model import check_servable, get_bento_model

        try:
            check_servable(get_bento_model(model_tag))
        except ModelNotFoundError:
            if settings is None or not settings.model_follow:
                raise
            from streaming_ml.registry import read_aliases

            try:
                champion = read_aliases(settings, timeout_s=10).champion
            except RegistryError:
                champion = None
            if champion is None:
                raise
    service = ServiceProcess(
        host=host, port=port, model_tag=model_tag, bentoml_home=bentoml_home, settings=settings
    )
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        with service:
            logger.info("serving until Ctrl-C", extra={"url": service.url, "model": model_tag})
            return service.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)
