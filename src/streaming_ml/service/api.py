"""The service's request and response models, with the examples its docs and tests share."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal, NotRequired

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model
from pydantic_core import InitErrorDetails, PydanticCustomError
from typing_extensions import TypedDict

from streaming_ml.schema.listing import (
    FEATURE_COLUMNS,
    FEATURES,
    Column,
)

# Cap the error list so a garbage million-row body cannot produce a huge reply.
MAX_REPORTED_PROBLEMS = 50

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


# Requests up to this many rows are priced inline on the event loop (see Predictor).
INLINE_MAX_ROWS = 64


# Defaults of the request limits (settings SML_SERVICE_MAX_*): the bridge's largest batch is
# 500 records (~100 KB); the bench's biggest /predict is 1,000 rows (~150 KB). An explained
# row costs a few hundred predictions (TreeSHAP: ~6 ms for the shipped model), so 1,000
# of them keep a request well inside the 30 s traffic timeout.
DEFAULT_MAX_ROWS = 10_000


DEFAULT_MAX_EXPLAINED_ROWS = 1_000


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
        colons = json_data.count(":") if isinstance(json_data, str) else json_data.count(b":")
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
                for p in problems[:MAX_REPORTED_PROBLEMS]
            ],
        )


class _ColumnsBody(UniqueKeysBody):
    if TYPE_CHECKING:
        # A field create_model adds below, with one list per feature: declared here for
        # the type checker only, so the schema keeps its order.
        explain: bool

    def parsed_keys_at_least(self) -> int:
        # Every feature is a required key, and ``explain`` one when it was sent; extra
        # keys are dropped, so uncounted.
        return len(FEATURES) + ("explain" in self.model_fields_set)


# Any, not tuple: mypy checks a ``**`` dict's values against every keyword of
# create_model, ``__base__`` and ``__doc__`` included.
_COLUMN_FIELDS: dict[str, Any] = {column.name: _column_field(column) for column in FEATURE_COLUMNS}

PredictRequest: type[UniqueKeysBody] = create_model(
    "PredictRequest",
    __base__=_ColumnsBody,
    __doc__="Listings as columns: every feature is a list with one value per row. "
    "Other keys (such as the target `price`) are ignored.",
    **_COLUMN_FIELDS,
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
