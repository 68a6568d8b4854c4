"""The model registry's state (a fold over its event log), the promotion gate, and how a
lineup routes listings to arms and swaps models."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from streaming_ml.models.features import INPUT_NAMES
from streaming_ml.models.lifecycle import table_problem
from streaming_ml.models.registry_state import ModelEvent, ModelSummary, fold, gate, schema_problem
from streaming_ml.schema.listing import LISTING_COLUMNS
from streaming_ml.service.api import EXAMPLE_RECORDS
from streaming_ml.service.lineup import (
    BUCKETS,
    Lineup,
    RefusedModel,
    RegistryFollower,
    ServedModel,
    bucket_of,
    canary_problem,
)
from streaming_ml.service.predictor import Predictor


def promoted(tag: str) -> ModelEvent:
    return ModelEvent(kind="promoted", tag=tag)


def test_promotions_and_rollbacks_fold_into_a_champion_history() -> None:
    aliases = fold(
        [
            ModelEvent(kind="claimed", tag="m:1"),
            ModelEvent(kind="claimed", tag="m:0"),  # a later claim loses: m:1 was first
            promoted("m:2"),
            promoted("m:3"),
            ModelEvent(kind="rolled_back", tag="m:2"),
        ]
    )
    assert aliases.champion == "m:2"
    assert aliases.previous_champion == "m:1"
    assert aliases.aliases_of("m:2") == ["champion"]
    assert aliases.aliases_of("m:1") == ["previous"]
    assert len(aliases.history) == 5


def test_rollback_with_a_single_champion_changes_nothing() -> None:
    aliases = fold([promoted("m:1"), ModelEvent(kind="rolled_back")])
    assert aliases.champion == "m:1"


def test_experiments_start_and_stop_and_name_their_models() -> None:
    started = ModelEvent(
        kind="experiment_started", challenger="m:2", split_percent=20, shadow="m:3"
    )
    aliases = fold([promoted("m:1"), started])
    assert aliases.wanted_tags() == ["m:1", "m:2", "m:3"]
    assert aliases.aliases_of("m:2") == ["challenger (20%)"]
    assert aliases.aliases_of("m:3") == ["shadow"]
    aliases.apply(ModelEvent(kind="experiment_stopped"))
    assert aliases.experiment is None and aliases.wanted_tags() == ["m:1"]


def summary(tag: str, rmse: float | None, fingerprint: str = "abc", **cv: Any) -> ModelSummary:
    metrics = None
    if rmse is not None:
        metrics = {"folds": 5, "seed": 42, "data_fingerprint_sha256": fingerprint, "rmse": rmse}
        metrics.update(cv)
    return ModelSummary(tag=tag, inputs=list(INPUT_NAMES), cv=metrics)


def test_gate_lets_a_better_or_equal_model_through_and_stops_a_worse_one() -> None:
    champion = summary("m:1", 1133.0)
    assert gate(summary("m:2", 1090.0), champion) == []
    assert gate(summary("m:2", 1133.0), champion) == []
    (reason,) = gate(summary("m:2", 1200.0), champion)
    assert "1,200.0 is worse than champion m:1's 1,133.0" in reason
    assert gate(summary("m:2", 5000.0), None) == []


def test_gate_refuses_to_compare_metrics_of_different_protocols() -> None:
    champion = summary("m:1", 1133.0)
    (reason,) = gate(summary("m:2", 900.0, fingerprint="other"), champion)
    assert "not comparable" in reason and "data_fingerprint_sha256" in reason
    (reason,) = gate(summary("m:2", None), champion)
    assert "no stored cross-validation metrics" in reason


def test_schema_problem_names_the_mismatched_inputs() -> None:
    assert schema_problem(summary("m:1", 1.0)) is None
    odd = ModelSummary(tag="m:9", inputs=["year", "mileage"])
    problem = schema_problem(odd)
    assert problem is not None and "['year', 'mileage']" in problem


def test_table_problem_names_the_features_a_model_takes_that_the_table_lost() -> None:
    columns = {column.name: column.sql_type for column in LISTING_COLUMNS}
    assert table_problem("listings", columns, summary("m:1", 1.0)) is None
    renamed = {("miles" if name == "mileage" else name): kind for name, kind in columns.items()}
    problem = table_problem("listings", renamed, summary("m:1", 1.0))
    assert problem is not None
    assert problem.startswith("m:1 prices from features that listings no longer has: ")
    assert "mileage is not a column (dropped or renamed)" in problem
    # A model that does not take mileage still fits the renamed table.
    narrow = ModelSummary(tag="m:2", inputs=[n for n in INPUT_NAMES if n != "mileage"])
    assert table_problem("listings", renamed, narrow) is None


# -- lineups --


class ConstantModel:
    """A stand-in PriceModel: one price for every row (or a failure)."""

    def __init__(self, tag: str, price: float = 1000.0, error: Exception | None = None) -> None:
        self.tag = tag
        self.price = price
        self.error = error
        self.calls = 0

    def predict_records(self, records: Sequence[Mapping[str, Any]]) -> np.ndarray:
        self.calls += 1
        if self.error is not None:
            raise self.error
        return np.full(len(list(records)), self.price)


def served(tag: str, price: float = 1000.0) -> ServedModel:
    return ServedModel(ConstantModel(tag, price), {"tag": tag})


def test_a_listing_always_lands_on_the_same_arm_and_the_split_holds() -> None:
    lineup = Lineup(served("m:1"), served("m:2"), split_percent=20)
    arms = [lineup.arm_of(i) for i in range(1, 5001)]
    share = arms.count("challenger") / len(arms)
    assert 0.17 <= share <= 0.23
    assert arms == [lineup.arm_of(i) for i in range(1, 5001)]
    assert all(0 <= bucket_of(i) < BUCKETS for i in range(100))
    assert lineup.arm_of(None) == "champion" and lineup.arm_of("7") == "champion"
    assert Lineup(served("m:1")).arm_of(3) == "champion"


def test_predict_batch_prices_each_arm_with_its_model_and_adds_the_shadow() -> None:
    lineup = Lineup(served("m:1", 1000), served("m:2", 2000), 50, served("m:3", 3000))
    predictor = Predictor(lineup)
    records = [{**EXAMPLE_RECORDS[0], "listing_id": i} for i in range(1, 41)]
    answer = predictor.predict_records(records)
    for record, item in zip(records, answer, strict=True):
        arm = lineup.arm_of(record["listing_id"])
        assert item["arm"] == arm
        expected = {"champion": (1000, "m:1"), "challenger": (2000, "m:2")}[arm]
        assert (item["predicted_price"], item["model_tag"]) == expected
        assert (item["model_name"], item["model_version"]) == ("m", expected[1][2:])
        assert item["shadow"] == {"predicted_price": 3000, "model_tag": "m:3"}
    assert {item["arm"] for item in answer} == {"champion", "challenger"}


def test_a_swap_between_requests_changes_the_model_for_the_next_request_only() -> None:
    predictor = Predictor(Lineup(served("m:1", 1000)))
    before = predictor.predict_records(EXAMPLE_RECORDS)
    predictor.swap(Lineup(served("m:2", 2000)))
    after = predictor.predict_records(EXAMPLE_RECORDS)
    assert [i["model_tag"] for i in before] == ["m:1", "m:1"]
    assert [i["model_tag"] for i in after] == ["m:2", "m:2"]
    assert "shadow" not in after[0]


def test_canary_refuses_models_with_unusable_prices() -> None:
    assert canary_problem(ConstantModel("m:1", 1000.0)) is None
    assert "not finite and positive" in str(canary_problem(ConstantModel("m:1", float("nan"))))
    assert "not finite and positive" in str(canary_problem(ConstantModel("m:1", -5.0)))
    failing = ConstantModel("m:1", error=ValueError("bad booster"))
    assert "ValueError: bad booster" in str(canary_problem(failing))


def follower_with(loads: dict[str, ServedModel | str], current: Lineup) -> RegistryFollower:
    """A follower whose loads come from ``loads`` (a string: refused with that reason)."""

    def load(tag: str) -> ServedModel:
        outcome = loads[tag]
        if isinstance(outcome, str):
            raise RefusedModel(tag, outcome)
        return outcome

    from streaming_ml.config import Settings
    from streaming_ml.models.registry_state import Aliases

    follower = RegistryFollower(Settings(), current, load=load)
    follower._aliases = Aliases()
    return follower


def feed(follower: RegistryFollower, *events: ModelEvent) -> None:
    for event in events:
        follower._on_event(event.model_dump_json().encode())
    follower._reconcile()


def test_follower_swaps_in_a_promoted_model_and_keeps_the_old_one_on_refusal() -> None:
    swaps: list[dict[str, str]] = []
    follower = follower_with(
        {"m:2": served("m:2"), "m:3": "canary batch failed: boom"}, Lineup(served("m:1"))
    )
    follower.on_swap = lambda lineup: swaps.append(lineup.tags())
    feed(follower, promoted("m:1"), promoted("m:2"))
    assert swaps == [{"champion": "m:2"}]

    feed(follower, promoted("m:3"))
    assert follower.lineup is not None and follower.lineup.champion.tag == "m:2"
    assert swaps == [{"champion": "m:2"}]
    assert [(r.tag, r.reason) for r in follower.refused] == [("m:3", "canary batch failed: boom")]
    assert follower.status()["refused"][0]["tag"] == "m:3"

    # The refused model is not retried on every later change, only when named again.
    feed(follower, ModelEvent(kind="experiment_stopped"))
    assert len(follower.refused) == 1


def test_follower_serves_an_experiment_without_an_arm_whose_model_is_refused() -> None:
    follower = follower_with(
        {"m:2": served("m:2"), "m:3": "cannot load: corrupt"}, Lineup(served("m:1"))
    )
    feed(
        follower,
        promoted("m:1"),
        ModelEvent(kind="experiment_started", challenger="m:2", split_percent=10, shadow="m:3"),
    )
    assert follower.lineup is not None
    assert follower.lineup.tags() == {"champion": "m:1", "challenger": "m:2"}
    assert follower.lineup.split_percent == 10


def test_follower_skips_an_unreadable_event_and_reads_on() -> None:
    follower = follower_with({"m:2": served("m:2")}, Lineup(served("m:1")))
    follower._on_event(b"{not json")
    feed(follower, promoted("m:2"))
    assert follower.events_read == 1
    assert follower.lineup is not None and follower.lineup.champion.tag == "m:2"


def test_a_refusal_reason_keeps_the_first_line_and_file_names_only() -> None:
    from streaming_ml.service.lineup import reason_of

    xgboost_like = (
        "[10:01:02] /workspace/src/data/json.cc:123: Check failed: bad JSON\n"
        "Stack trace:\n  [bt] (0) /usr/lib/python3/site-packages/xgboost/lib/libxgboost.so(+0x1)"
    )
    assert reason_of(RuntimeError(xgboost_like)) == "[10:01:02] json.cc:123: Check failed: bad JSON"
    missing = "cannot open '/home/me/.bentoml/models/ford_price/abc/saved_model.json': gone"
    assert reason_of(OSError(missing)) == "cannot open 'saved_model.json': gone"
    assert reason_of(ValueError("1/2 of the rows, see http://127.0.0.1:3000/a/b")) == (
        "1/2 of the rows, see http://127.0.0.1:3000/a/b"
    )
    assert reason_of(KeyError()) == "KeyError"
