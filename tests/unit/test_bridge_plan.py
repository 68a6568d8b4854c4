"""The bridge's decisions, without Kafka: parsing, planning, DLQ reasons, offsets."""

from __future__ import annotations

from typing import Any

import pytest

from streaming_ml.bridge.plan import (
    Action,
    dlq_headers,
    dlq_reason,
    explanation_fields,
    plan_actions,
    prediction_record,
    service_records,
    shadow_result,
)
from streaming_ml.datasets.synthetic import generate_listing_records
from streaming_ml.kafka.changes import Change, parse_change, unchanged_columns
from streaming_ml.kafka.offsets import offsets_to_commit, rewind_points, split_at_unfinished
from streaming_ml.schema.fields import EXPLANATION_FIELDS, PREDICTION_FIELDS
from streaming_ml.schema.listing import FEATURES, feature_problems, features_hash

ROW: dict[str, Any] = {
    "model": "Fiesta", "year": 2017, "price": 9000, "transmission": "Manual",
    "mileage": 21000, "fuelType": "Petrol", "tax": 145, "mpg": 55.4, "engineSize": 1.0,
}  # fmt: skip


NOT_FEATURES = frozenset({"id", "price"})


def change(op: str, lid: int, unchanged: frozenset[str] = frozenset(), **row: Any) -> Change:
    after = None if op == "d" else {**ROW, **row}
    return Change(op, lid, after, 1_700_000_000_000, 42, unchanged)


def test_hash_ignores_price_and_number_representation() -> None:
    assert features_hash(ROW) == features_hash({**ROW, "price": 1})
    assert features_hash(ROW) == features_hash({**ROW, "year": 2017.0, "engineSize": 1})
    assert features_hash(ROW) != features_hash({**ROW, "mileage": 21001})
    assert features_hash(ROW) != features_hash({**ROW, "model": "Focus"})


def test_plan_orders_actions_like_the_input() -> None:
    changes = [change("c", 1), change("c", 2, mileage=-5), "deserialization: bad", change("c", 3)]
    actions = plan_actions(changes)
    assert [(a.kind, a.index, a.listing_id) for a in actions] == [
        ("predict", 0, 1), ("dlq", 1, 2), ("dlq", 2, None), ("predict", 3, 3),
    ]  # fmt: skip
    assert actions[1].reason == "mileage: must be at least 0, got -5"
    assert actions[2].reason == "deserialization: bad"
    assert (actions[1].stage, actions[2].stage) == ("validation", "decode")


def test_price_only_update_is_skipped_but_feature_update_repriced() -> None:
    price_only = frozenset(FEATURES)  # Debezium's header: every feature unchanged
    mileage = frozenset(FEATURES) - {"mileage"}
    actions = plan_actions(
        [change("u", 7, price_only, price=1), change("u", 7, mileage, mileage=30_000)]
    )
    assert [a.kind for a in actions] == ["skip", "predict"]
    assert actions[0].skip_why == "unchanged"


def test_change_back_to_earlier_features_is_priced() -> None:
    """No memory of earlier prices: F1 -> F2 -> F1 prices both changes, whatever the
    table or any cache says (the old cache could call the last one "unchanged")."""
    others = frozenset(FEATURES) - {"mileage"}
    there = change("u", 7, others, mileage=30_000)
    back = change("u", 7, others, mileage=ROW["mileage"])
    assert [a.kind for a in plan_actions([there, back])] == ["predict", "predict"]


def test_update_without_proof_of_unchanged_features_is_priced() -> None:
    """No header (REPLICA IDENTITY DEFAULT gives empty lists): unknown, so priced."""
    unknown = plan_actions([change("u", 7), change("u", 8, NOT_FEATURES)])
    assert [a.kind for a in unknown] == ["predict", "predict"]


def test_unchanged_header_is_read_and_only_trusted_when_readable() -> None:
    good = [("changed", b'["price"]'), ("unchanged", b'["id","model","year"]')]
    assert unchanged_columns(good) == {"id", "model", "year"}
    assert unchanged_columns([("unchanged", b"not json")]) == frozenset()
    assert unchanged_columns([("unchanged", b'{"a": 1}')]) == frozenset()
    assert unchanged_columns(None) == frozenset()


def test_insert_and_snapshot_are_always_priced() -> None:
    every = frozenset(FEATURES)
    actions = plan_actions([change("c", 1, every), change("r", 2, every)])
    assert [a.kind for a in actions] == ["predict", "predict"]


def test_delete_then_recreate_in_one_batch() -> None:
    actions = plan_actions([change("d", 3), change("c", 3)])
    assert [a.kind for a in actions] == ["tombstone", "predict"]


def test_update_that_breaks_a_row_is_dead_lettered_and_unpriced() -> None:
    actions = plan_actions([change("u", 4, year=None)])
    assert [a.kind for a in actions] == ["dlq", "tombstone"]
    assert actions[0].reason == "year: is missing (null)"


def test_debezium_tombstone_and_truncate_are_skipped() -> None:
    actions = plan_actions([Change("tombstone", 9, None, None, None)])
    assert [(a.kind, a.skip_why) for a in actions] == [("skip", "tombstone")]


def test_generated_invalid_rows_are_all_dead_lettered() -> None:
    records = generate_listing_records(60, seed=3, invalid=12)
    changes = [Change("c", i, r, 1, 1) for i, r in enumerate(records)]
    actions = plan_actions(changes)
    dlq = [a for a in actions if a.kind == "dlq"]
    assert len(dlq) == 12
    assert all(a.reason and ": " in a.reason for a in dlq)
    assert sum(a.kind == "predict" for a in actions) == 48


def test_dlq_reason_lists_fields_in_schema_order() -> None:
    problems = feature_problems({**ROW, "mpg": 0.0, "model": " ", "year": None})
    assert dlq_reason(problems) == (
        "model: must not be blank; year: is missing (null); mpg: must be at least 1, got 0.0"
    )
    headers = dict(dlq_headers("x: y", "cars.public.car_listings", 0, 17))
    assert headers == {
        "reason": b"x: y", "source.topic": b"cars.public.car_listings",
        "source.partition": b"0", "source.offset": b"17",
    }  # fmt: skip


def test_parse_debezium_envelope() -> None:
    value = {
        "before": None, "after": {"id": 12, **ROW}, "op": "c", "ts_ms": 5,
        "source": {"ts_ms": 1_700_000_000_123, "lsn": 2_345_678, "table": "car_listings"},
    }  # fmt: skip
    parsed = parse_change({"id": 12}, value)
    assert parsed == Change("c", 12, {"id": 12, **ROW}, 1_700_000_000_123, 2_345_678)
    # The unchanged-columns proof only means something for an update.
    assert parse_change({"id": 12}, value, frozenset(FEATURES)).unchanged == frozenset()
    deleted = parse_change(
        {"id": 12}, {"before": {"id": 12}, "after": None, "op": "d", "source": {"ts_ms": 1}}
    )
    assert (deleted.op, deleted.listing_id, deleted.row) == ("d", 12, None)


def test_parse_flattened_row() -> None:
    parsed = parse_change(None, {"id": 3, **ROW, "__op": "u", "__source_ts_ms": 9, "__lsn": 8})
    assert (parsed.op, parsed.listing_id, parsed.source_ts_ms, parsed.lsn) == ("u", 3, 9, 8)
    gone = parse_change({"id": 3}, {"id": 3, "__deleted": "true"})
    assert (gone.op, gone.row) == ("d", None)


def test_offsets_commit_next_offset_per_partition() -> None:
    tps = offsets_to_commit([("t", 0, 5), ("t", 1, 2), ("t", 0, 7), ("t", 0, 6)])
    assert [(tp.topic, tp.partition, tp.offset) for tp in tps] == [("t", 0, 8), ("t", 1, 3)]


def test_rewind_points_are_the_first_offset_per_partition() -> None:
    tps = rewind_points([("t", 0, 5), ("t", 1, 2), ("t", 0, 4)])
    assert [(tp.topic, tp.partition, tp.offset) for tp in tps] == [("t", 0, 4), ("t", 1, 2)]


def test_unfinished_record_cuts_only_its_own_partition() -> None:
    positions = [("t", 0, 10), ("t", 1, 20), ("t", 0, 11), ("t", 1, 21), ("t", 0, 12)]
    done, rewinds = split_at_unfinished(positions, unfinished=[2])
    # Partition 0 stops before offset 11 (order per listing); partition 1 goes on.
    assert done == [0, 1, 3]
    assert [(tp.partition, tp.offset) for tp in rewinds] == [(0, 11)]
    assert split_at_unfinished(positions, []) == ([0, 1, 2, 3, 4], [])


def test_prediction_record_keeps_full_precision_and_latencies() -> None:
    action = Action("predict", 0, 11, change("c", 11), "abc")
    record = prediction_record(
        action, {"predicted_price": 12345.678901, "model_tag": "ford_price:x"},
        kafka_ts_ms=1_700_000_000_050, received_ts_ms=1_700_000_000_060,
        predicted_ts_ms=1_700_000_000_100, model_latency_ms=12.5,
    )  # fmt: skip
    assert record["predicted_price"] == 12345.678901
    assert record["end_to_end_ms"] == 100.0
    assert (record["source_lsn"], record["features_hash"]) == (42, "abc")
    # A service from before experiments answers with the tag alone: the rest is derived.
    assert (record["model_name"], record["model_version"], record["arm"]) == (
        "ford_price", "x", "champion",
    )  # fmt: skip


def test_prediction_record_says_which_model_and_arm_priced_it() -> None:
    action = Action("predict", 0, 11, change("c", 11), "abc")
    answer = {
        "predicted_price": 9000.0, "model_tag": "ford_price:v2", "model_name": "ford_price",
        "model_version": "v2", "arm": "challenger",
    }  # fmt: skip
    record = prediction_record(
        action, answer, kafka_ts_ms=1, received_ts_ms=2, predicted_ts_ms=3, model_latency_ms=1.0
    )
    assert (record["model_tag"], record["model_version"], record["arm"]) == (
        "ford_price:v2", "v2", "challenger",
    )  # fmt: skip


# The service's explanation of one price (its contributions in data.FEATURES order).
EXPLANATION: dict[str, Any] = {
    "base_price": 11_000.0,
    "contributions": {
        "model": 300.0, "year": -1_200.5, "transmission": 10.0, "mileage": -300.0,
        "fuelType": 0.0, "tax": 5.0, "mpg": 2_000.25, "engineSize": -50.0,
    },
}  # fmt: skip
EXPLANATION_COLUMNS = [f.name for f in EXPLANATION_FIELDS]


def priced(answer: dict[str, Any]) -> dict[str, Any]:
    action = Action("predict", 0, 11, change("c", 11), "abc")
    return prediction_record(
        action, answer, kafka_ts_ms=1, received_ts_ms=2, predicted_ts_ms=3, model_latency_ms=1.0
    )


def test_prediction_record_carries_the_base_and_the_three_largest_contributions() -> None:
    answer = {"predicted_price": 11_765.0, "model_tag": "ford_price:x", "explanation": EXPLANATION}
    record = priced(answer)
    # By magnitude, sign kept; model and mileage tie at 300 and keep the service's order.
    assert {name: record[name] for name in EXPLANATION_COLUMNS} == {
        "base_price": 11_000.0,
        "top1_feature": "mpg", "top1_amount": 2_000.25,
        "top2_feature": "year", "top2_amount": -1_200.5,
        "top3_feature": "model", "top3_amount": 300.0,
    }  # fmt: skip
    assert record["predicted_price"] == 11_765.0


def test_prediction_record_without_an_explanation_has_null_explanation_fields() -> None:
    record = priced({"predicted_price": 9000.0, "model_tag": "ford_price:x"})
    assert [record[name] for name in EXPLANATION_COLUMNS] == [None] * len(EXPLANATION_COLUMNS)
    assert set(record) == {f.name for f in PREDICTION_FIELDS}


@pytest.mark.parametrize(
    "broken",
    [
        None,
        "x",
        {"contributions": EXPLANATION["contributions"]},
        {**EXPLANATION, "base_price": float("nan")},
        {**EXPLANATION, "base_price": True},
        {**EXPLANATION, "contributions": {}},
        {**EXPLANATION, "contributions": [["mpg", 1.0]]},
        {**EXPLANATION, "contributions": {**EXPLANATION["contributions"], "mpg": "lots"}},
        {**EXPLANATION, "contributions": {**EXPLANATION["contributions"], "tax": float("inf")}},
    ],
)
def test_an_unusable_explanation_is_written_as_nulls_and_the_price_kept(broken: Any) -> None:
    record = priced({"predicted_price": 9000.0, "model_tag": "ford_price:x", "explanation": broken})
    assert record["predicted_price"] == 9000.0
    assert explanation_fields(broken) == dict.fromkeys(EXPLANATION_COLUMNS)
    assert all(record[name] is None for name in EXPLANATION_COLUMNS)


def test_fewer_contributions_than_the_top_leave_the_rest_null() -> None:
    fields = explanation_fields({"base_price": 10.0, "contributions": {"year": -2.0}})
    assert (fields["top1_feature"], fields["top1_amount"]) == ("year", -2.0)
    assert fields["top2_feature"] is fields["top3_amount"] is None


def test_shadow_result_is_taken_only_when_usable() -> None:
    good = {
        "predicted_price": 1.0,
        "model_tag": "m:1",
        "shadow": {"predicted_price": 2.5, "model_tag": "m:3"},
    }
    assert shadow_result(good) == {
        "predicted_price": 2.5, "model_tag": "m:3", "arm": "shadow", "explanation": None,
    }  # fmt: skip
    explained = {**good["shadow"], "explanation": EXPLANATION}
    assert shadow_result({**good, "shadow": explained})["explanation"] == EXPLANATION  # type: ignore[index]
    assert shadow_result({"predicted_price": 1.0, "model_tag": "m:1"}) is None
    for broken in (
        {"predicted_price": float("nan"), "model_tag": "m:3"},
        {"predicted_price": 2.0},
        "x",
    ):
        assert shadow_result({**good, "shadow": broken}) is None


def test_service_records_carry_the_features_and_the_listing_id() -> None:
    features = {name: ROW[name] for name in FEATURES}
    assert service_records([{"id": 1, **ROW}], [11]) == [{"listing_id": 11, **features}]
    assert service_records([ROW]) == [{"listing_id": None, **features}]


@pytest.mark.parametrize("bad", [{"mileage": "12k"}, {"engineSize": -1.0}, {"fuelType": ""}])
def test_unpriceable_values_are_caught(bad: dict[str, Any]) -> None:
    actions = plan_actions([change("c", 1, **bad)])
    assert actions[0].kind == "dlq"
    assert actions[0].reason.startswith(next(iter(bad)) + ": ")


def test_registry_outage_is_retried_but_bad_bytes_are_dead_lettered() -> None:
    import httpx
    import httpx2
    from confluent_kafka.schema_registry.error import SchemaRegistryError
    from confluent_kafka.serialization import SerializationError

    from streaming_ml.kafka.changes import registry_unavailable

    assert registry_unavailable(httpx.ConnectError("connection refused"))
    # The registry client itself raises httpx2's errors when httpx2 is installed.
    assert registry_unavailable(httpx2.ConnectError("connection refused"))
    assert registry_unavailable(SchemaRegistryError(503, 50301, "unavailable"))
    assert not registry_unavailable(SchemaRegistryError(404, 40403, "schema not found"))
    assert not registry_unavailable(SerializationError("unknown magic byte"))
    assert not registry_unavailable(EOFError())


def test_debezium_toast_placeholder_in_an_update_is_dead_lettered_and_unpriced() -> None:
    actions = plan_actions([change("u", 4, model="__debezium_unavailable_value")])
    assert [a.kind for a in actions] == ["dlq", "tombstone"]
    assert actions[0].reason is not None and actions[0].reason.startswith("model: ")
