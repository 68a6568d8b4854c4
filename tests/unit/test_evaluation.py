"""The evaluation's pure parts: pairing labels with predictions, running metrics, drift."""

from __future__ import annotations

import math

import numpy as np
import pytest

from streaming_ml.datasets.load import PRICE_SHIFT, SCENARIOS, LateLabels, scenario_records
from streaming_ml.datasets.synthetic import Shift, generate_listing_records, generate_listings
from streaming_ml.errors import DataError
from streaming_ml.evaluation import outcomes as joins
from streaming_ml.evaluation.accuracy import Scoreboard
from streaming_ml.evaluation.drift import DriftWindow, psi
from streaming_ml.models.reference import reference_of
from streaming_ml.schema.listing import FEATURES, features_hash
from streaming_ml.schema.outcome import Outcome

ROW = generate_listing_records(1, seed=3)[0]


def prediction(price: float, row: dict = ROW, tag: str = "m:1", arm: str = "champion") -> dict:
    return {
        "model_tag": tag, "arm": arm, "predicted_price": price,
        "features_hash": features_hash(row), "source_ts_ms": 1_000,
        "model_name": tag.split(":")[0], "model_version": tag.split(":")[1],
    }  # fmt: skip


def test_label_on_insert_then_prediction_gives_one_outcome_with_no_lag() -> None:
    state = joins.ListingState()
    assert joins.on_row(7, state, ROW, source_ts_ms=1_000, now_ms=5).outcomes == []
    transition = joins.on_prediction(7, state, prediction(ROW["price"] + 100.0), now_ms=6)
    [outcome] = transition.outcomes
    assert (outcome.listing_id, outcome.actual_price, outcome.error) == (7, ROW["price"], 100.0)
    assert outcome.label_lag_ms == 0
    assert transition.first_predicted == transition.first_labelled == ["m:1|champion"]
    # Redelivered prediction and label: nothing new.
    assert joins.on_prediction(7, state, prediction(ROW["price"] + 100.0), now_ms=7).outcomes == []
    assert joins.on_row(7, state, ROW, source_ts_ms=1_000, now_ms=8).outcomes == []


def test_late_label_pairs_with_every_arm_and_a_new_label_value_is_a_new_outcome() -> None:
    state = joins.ListingState()
    unlabelled = {**ROW, "price": None}
    joins.on_row(7, state, unlabelled, source_ts_ms=1_000, now_ms=1)
    joins.on_prediction(7, state, prediction(9_000.0), now_ms=2)
    joins.on_prediction(7, state, prediction(9_500.0, tag="s:2", arm="shadow"), now_ms=3)
    late = joins.on_row(7, state, {**ROW, "price": 10_000}, source_ts_ms=4_000, now_ms=4)
    assert sorted((o.arm, o.error, o.label_lag_ms) for o in late.outcomes) == [
        ("champion", -1_000.0, 3_000), ("shadow", -500.0, 3_000),
    ]  # fmt: skip
    corrected = joins.on_row(7, state, {**ROW, "price": 9_000}, source_ts_ms=6_000, now_ms=5)
    assert {(o.arm, o.actual_price) for o in corrected.outcomes} == {
        ("champion", 9_000.0), ("shadow", 9_000.0),
    }  # fmt: skip
    assert corrected.first_labelled == []  # coverage counts a listing once per pair


def test_a_label_never_judges_a_prediction_of_other_features() -> None:
    state = joins.ListingState()
    joins.on_prediction(7, state, prediction(9_000.0), now_ms=1)
    moved = {**ROW, "mileage": ROW["mileage"] + 10_000, "price": 8_000}
    assert joins.on_row(7, state, moved, source_ts_ms=2_000, now_ms=2).outcomes == []
    [outcome] = joins.on_prediction(7, state, prediction(8_200.0, row=moved), now_ms=3).outcomes
    assert outcome.predicted_price == 8_200.0


def test_an_invalid_row_gives_no_label() -> None:
    assert joins.label_of({**ROW, "year": None}) == (None, None)


def test_state_survives_its_json_form() -> None:
    state = joins.ListingState()
    joins.on_row(7, state, ROW, source_ts_ms=1_000, now_ms=1)
    joins.on_prediction(7, state, prediction(9_000.0), now_ms=2)
    again = joins.ListingState.from_json(state.to_json())
    assert again == state
    assert joins.on_prediction(7, again, prediction(9_000.0), now_ms=3).outcomes == []


def outcome(error: float, actual: float = 10_000.0, ts: int = 0, arm: str = "champion"):
    return Outcome(
        listing_id=1, model_tag="m:1", arm=arm, actual_price=actual,
        predicted_price=actual + error, priced_ts_ms=0, labelled_ts_ms=ts, evaluated_ts_ms=ts,
    )  # fmt: skip


def test_running_metrics_match_the_definitions_and_the_windows_slide() -> None:
    board = Scoreboard(window_outcomes=2, window_minutes=1.0, threshold=5.0)
    errors = [100.0, -300.0, 200.0]
    for i, error in enumerate(errors):
        board.add(outcome(error, ts=i * 40_000))
    snap = board.snapshot(now_ms=80_000)["m:1|champion"]
    c = snap["cumulative"]
    assert c["n"] == 3 and c["mae"] == pytest.approx(200.0) and c["bias"] == pytest.approx(0.0)
    assert c["rmse"] == pytest.approx(math.sqrt((100**2 + 300**2 + 200**2) / 3))
    assert c["mape"] == pytest.approx(0.02)
    assert snap["last_n"]["n"] == 2 and snap["last_n"]["mae"] == pytest.approx(250.0)
    assert snap["last_t"]["n"] == 2  # the first outcome is older than a minute


def test_page_hinkley_fires_when_the_error_rises_and_not_before() -> None:
    rng = np.random.default_rng(0)
    board = Scoreboard(window_outcomes=500, window_minutes=10.0, threshold=5.0)
    for error in rng.normal(0, 900, 5_000):
        assert board.add(outcome(float(error))) is None
    fired = [board.add(outcome(float(e))) for e in rng.normal(2_500, 900, 1_000)]
    first = next(i for i, f in enumerate(fired) if f is not None)
    assert first < 300 and fired[first].arm == "champion"


def test_psi_is_zero_for_the_reference_itself_and_large_for_a_shift() -> None:
    assert psi([0.5, 0.5], [50, 50]) == pytest.approx(0.0)
    assert psi([0.5, 0.5], [95, 5]) > 0.5


def window_over(reference_rows, live_rows, size: int = 500) -> list:
    frame = {name: [r[name] for r in reference_rows] for name in FEATURES}
    reference = reference_of(frame, [1.0] * len(reference_rows))
    window = DriftWindow(size, threshold=0.2, alert_windows=3)
    window.use("m:1", reference["features"])
    return [r for row in live_rows if (r := window.observe(row)) is not None]


def test_normal_rows_do_not_drift_and_a_mileage_shift_alerts_on_mileage_only() -> None:
    reference = generate_listing_records(3_000, seed=7)
    quiet = window_over(reference, generate_listing_records(10_000, seed=8))
    assert len(quiet) == 20 and not any(r.alerts for r in quiet)
    shifted = window_over(reference, generate_listing_records(2_000, 9, shift=Shift(2.5)))
    assert [r.alerts for r in shifted] == [[], [], ["mileage"], []]
    assert shifted[0].scores["mileage"]["ks"] > 0.3
    assert shifted[0].scores["model"]["chi2_p"] > 0.001


def test_unseen_categories_are_counted_and_the_window_restores() -> None:
    reference = generate_listing_records(1_000, seed=7)
    frame = {name: [r[name] for r in reference] for name in FEATURES}
    window = DriftWindow(100, threshold=0.2, alert_windows=1)
    window.use("m:1", reference_of(frame, [1.0] * 1_000)["features"])
    for row in generate_listing_records(60, seed=8):
        window.observe({**row, "model": "Capri"})
    again = DriftWindow(100, threshold=0.2, alert_windows=1)
    again.restore(window.to_json())
    again.use("m:1", reference_of(frame, [1.0] * 1_000)["features"])
    assert again.counts == window.counts and again.rows == 60
    result = None
    for row in generate_listing_records(40, seed=9):
        result = again.observe({**row, "model": "Capri"}) or result
    assert result is not None and result.alerts == ["model"]


def test_scenarios_shift_what_they_say_after_the_lead_in() -> None:
    assert set(SCENARIOS) == {"normal", "price-shift", "feature-shift", "late-labels"}
    base = generate_listings(400, seed=5)
    shifted = scenario_records("price-shift", 500, seed=4, lead_in=100)[100:]
    same = generate_listings(400, seed=5, shift=PRICE_SHIFT)
    assert [r["price"] for r in shifted] == same["price"].tolist()
    ratio = (same["price"] / base["price"]).groupby(base["model"]).mean()
    assert ratio["Kuga"] == pytest.approx(1.2, abs=0.01) and ratio["Fiesta"] == 1.0
    miles = scenario_records("feature-shift", 500, seed=4, lead_in=0)
    assert np.mean([r["mileage"] for r in miles]) > 2 * base["mileage"].mean()
    with pytest.raises(DataError, match="unknown scenario"):
        scenario_records("chaos", 10, seed=1)


def test_late_labels_choose_a_seeded_share() -> None:
    labels = LateLabels(share=0.75, seed=3)
    chosen = [len(labels.chosen(start, 100)) for start in range(0, 2_000, 100)]
    assert 0.7 < sum(chosen) / 2_000 < 0.8
    assert labels.chosen(0, 100) == LateLabels(share=0.75, seed=3).chosen(0, 100)
