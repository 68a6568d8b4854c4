"""Pairing predictions with labels: one listing's state, and the outcomes it yields.

The label is the listing's ``price`` column. It arrives in change events (with the
insert, or later with an UPDATE), and predictions arrive on the predictions and shadow
topics; either may come first. A label is paired only with a prediction of the same
features (``features_hash``): an update that changes features and price together is
re-priced by the bridge, and its new price must not judge the old prediction.

Exactly one outcome per (listing, model tag, arm, label value): the state remembers the
keys it has emitted, and it is stored with the consumed offsets in one transaction
(``evaluator``), so a redelivered event finds the key already there.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from streaming_ml.schema.listing import FEATURES, TARGET, feature_problems, features_hash
from streaming_ml.schema.outcome import Outcome


@dataclass
class Seen:
    """A prediction as the evaluator keeps it."""

    predicted_price: float
    features_hash: str | None
    priced_ts_ms: int
    model_name: str | None = None
    model_version: str | None = None


@dataclass
class ListingState:
    """What the evaluator knows of one listing (stored as JSON in the changelog)."""

    label: float | None = None
    label_hash: str | None = None  # features_hash of the row that carried the label
    label_ts_ms: int | None = None
    label_row: dict[str, Any] | None = None  # the labelled row's features
    predictions: dict[str, Seen] = field(default_factory=dict)  # "tag|arm" -> latest
    ever_predicted: set[str] = field(default_factory=set)  # "tag|arm"
    evaluated: set[str] = field(default_factory=set)  # "tag|arm|label"

    def to_json(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "label_hash": self.label_hash,
            "label_ts_ms": self.label_ts_ms,
            "label_row": self.label_row,
            "predictions": {k: vars(v) for k, v in self.predictions.items()},
            "ever_predicted": sorted(self.ever_predicted),
            "evaluated": sorted(self.evaluated),
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> ListingState:
        return cls(
            label=raw.get("label"),
            label_hash=raw.get("label_hash"),
            label_ts_ms=raw.get("label_ts_ms"),
            label_row=raw.get("label_row"),
            predictions={k: Seen(**v) for k, v in (raw.get("predictions") or {}).items()},
            ever_predicted=set(raw.get("ever_predicted") or ()),
            evaluated=set(raw.get("evaluated") or ()),
        )


def pair_key(tag: str, arm: str) -> str:
    return f"{tag}|{arm}"


def split_pair(pair: str) -> tuple[str, str]:
    tag, _, arm = pair.rpartition("|")
    return tag, arm


@dataclass
class Transition:
    """What one event did: outcomes to emit, and pairs seen for the first time."""

    outcomes: list[Outcome] = field(default_factory=list)
    first_predicted: list[str] = field(default_factory=list)  # "tag|arm"
    first_labelled: list[str] = field(default_factory=list)  # "tag|arm"


def label_of(row: Mapping[str, Any]) -> tuple[float | None, str | None]:
    """The row's label and the hash of its features; no label for a row the bridge
    would not price (its features are invalid), since no prediction will come."""
    price = row.get(TARGET)
    if price is None or feature_problems(row):
        return None, None
    return float(price), features_hash(row)


def _evaluate(listing_id: int, state: ListingState, now_ms: int, transition: Transition) -> None:
    """Emit an outcome for every prediction that matches the label and has none yet."""
    if state.label is None or state.label_ts_ms is None:
        return
    for pair, seen in sorted(state.predictions.items()):
        if seen.features_hash != state.label_hash:
            continue
        key = f"{pair}|{state.label!r}"
        if key in state.evaluated:
            continue
        if not any(k.startswith(f"{pair}|") for k in state.evaluated):
            transition.first_labelled.append(pair)
        state.evaluated.add(key)
        tag, arm = split_pair(pair)
        transition.outcomes.append(
            Outcome(
                listing_id=listing_id,
                model_tag=tag,
                arm=arm,
                actual_price=state.label,
                predicted_price=seen.predicted_price,
                priced_ts_ms=seen.priced_ts_ms,
                labelled_ts_ms=state.label_ts_ms,
                evaluated_ts_ms=now_ms,
                model_name=seen.model_name,
                model_version=seen.model_version,
                features=state.label_row,
            )
        )


def on_row(
    listing_id: int,
    state: ListingState,
    row: Mapping[str, Any],
    source_ts_ms: int,
    now_ms: int,
) -> Transition:
    """A listing row was inserted, updated or snapshotted."""
    transition = Transition()
    label, label_hash = label_of(row)
    if label is None:
        # A NULL price (not known yet) or a row that will not be priced: nothing to judge.
        state.label, state.label_hash, state.label_ts_ms = None, None, None
        state.label_row = None
        return transition
    if (label, label_hash) != (state.label, state.label_hash):
        state.label, state.label_hash, state.label_ts_ms = label, label_hash, source_ts_ms
        state.label_row = {name: row.get(name) for name in FEATURES}
    _evaluate(listing_id, state, now_ms, transition)
    return transition


def on_prediction(
    listing_id: int, state: ListingState, record: Mapping[str, Any], now_ms: int
) -> Transition:
    """A prediction record (served or shadow) for the listing."""
    transition = Transition()
    pair = pair_key(str(record["model_tag"]), str(record.get("arm") or "champion"))
    state.predictions[pair] = Seen(
        predicted_price=float(record["predicted_price"]),
        features_hash=record.get("features_hash"),
        priced_ts_ms=int(record["source_ts_ms"]),
        model_name=record.get("model_name"),
        model_version=record.get("model_version"),
    )
    if pair not in state.ever_predicted:
        state.ever_predicted.add(pair)
        transition.first_predicted.append(pair)
    _evaluate(listing_id, state, now_ms, transition)
    return transition


def on_retraction(state: ListingState) -> None:
    """The listing's prediction was withdrawn (a tombstone): it was deleted, or its
    features became invalid. What was already judged stays judged."""
    state.predictions.clear()
