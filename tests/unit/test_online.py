"""The online model kind: features, predict-then-learn, storage, explanations, the study."""

from __future__ import annotations

import math

import numpy as np
import pytest

from streaming_ml.datasets.synthetic import generate_listing_records, generate_listings
from streaming_ml.models.features import fit_feature_spec
from streaming_ml.models.loader import from_bento_model
from streaming_ml.models.online import OnlinePriceModel, features_of, typical_listing
from streaming_ml.models.store import FEATURES_KEY, get_bento_model
from streaming_ml.models.study import ShiftStudy, prequential
from streaming_ml.schema.listing import FEATURES

ROWS = generate_listing_records(600, seed=5)


def test_features_leave_out_what_is_missing_or_unknown() -> None:
    x = features_of({**ROWS[0], "engineSize": 0, "mpg": None, "model": " Focus "})
    assert "engineSize" not in x and "mpg" not in x and x["model"] == "Focus"
    assert isinstance(x["year"], float)


def test_prequential_prices_before_learning_and_improves() -> None:
    model = OnlinePriceModel.new("linear")
    run = prequential(model, ROWS)
    assert model.learned == len(ROWS) == run.rows
    early, late = np.abs(run.errors[:100]).mean(), np.abs(run.errors[-100:]).mean()
    assert late < early
    summary = run.summary()
    assert summary["records_per_s"] > 0 and summary["predict"]["p99_ms"] >= 0
    assert summary["mae"] == pytest.approx(float(np.abs(run.errors).mean()))


def test_a_stored_online_model_loads_and_prices_the_same(tmp_path) -> None:
    model = OnlinePriceModel.new("hoeffding")
    model.reference_listing = typical_listing(ROWS)
    prequential(model, ROWS)
    model.positions = {"0": 12, "1": 7}
    spec = fit_feature_spec(generate_listings(600, seed=5)).to_dict()
    tag = model.save("test_online", {FEATURES_KEY: spec}, source="synthetic")
    loaded = from_bento_model(get_bento_model(tag))
    assert isinstance(loaded, OnlinePriceModel)
    assert (loaded.learned, loaded.positions) == (len(ROWS), {"0": 12, "1": 7})
    np.testing.assert_allclose(loaded.predict_records(ROWS[:20]), model.predict_records(ROWS[:20]))


def test_explanations_add_up_to_the_price_from_the_reference_listing() -> None:
    model = OnlinePriceModel.new("linear")
    model.reference_listing = typical_listing(ROWS)
    prequential(model, ROWS)
    explained = model.explain_records(ROWS[:3])
    for i in range(3):
        assert explained.base[i] + explained.amounts[i].sum() == pytest.approx(
            explained.prices[i], abs=1e-6
        )
    same = model.explain_records([model.reference_listing])
    assert np.allclose(same.amounts, 0.0) and len(same.amounts[0]) == len(FEATURES)


def test_a_diverging_learner_still_answers_a_finite_positive_price() -> None:
    model = OnlinePriceModel.new("linear")
    for _ in range(50):
        model.learn(ROWS[0], 1e300)
    assert all(math.isfinite(p) and p > 0 for p in model.predict_records(ROWS[:5]))


def test_recovery_counts_labels_until_the_error_is_back_for_good() -> None:
    before, bump = np.full(100, 1_000.0), np.full(50, 1_500.0)
    back = np.full(100, 1_050.0)
    blip = np.r_[bump, np.full(5, 1_050.0), bump]  # back for less than a window: not yet
    study = ShiftStudy(100, 10, np.r_[before, bump, bump, bump], np.r_[before, blip, back])
    assert study.recovery(study.online_mae) == 105
    assert study.recovery(study.static_mae) is None
    summary = study.summary()
    assert summary["online"]["labels_to_recover"] == 105
    assert summary["online"]["share_within_10pct_after"] == 1.0
    assert summary["static"]["share_within_10pct_after"] == 0.0
    assert summary["static"]["mae_peak_after"] == 1_500.0


def test_the_residual_candidate_corrects_its_base_and_travels_with_it() -> None:
    from streaming_ml.models.online import warmed_up

    model = warmed_up("residual", ROWS[:400])
    # Close to its base on rows like those it learnt...
    base = model.base.predict_records(ROWS[400:420])
    np.testing.assert_allclose(model.predict_records(ROWS[400:420]), base, rtol=0.25)
    # ...and a listing whose price doubles pulls the correction up.
    before = model.predict_records([ROWS[450]])[0]
    for _ in range(200):
        model.learn(ROWS[450], 2 * before)
    assert model.predict_records([ROWS[450]])[0] > 1.5 * before
    spec = fit_feature_spec(generate_listings(600, seed=5)).to_dict()
    tag = model.save("test_online_residual", {FEATURES_KEY: spec}, source="synthetic")
    loaded = from_bento_model(get_bento_model(tag))
    np.testing.assert_allclose(loaded.predict_records(ROWS[:10]), model.predict_records(ROWS[:10]))
