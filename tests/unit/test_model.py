"""Features, the PriceModel, training and evaluation, on seeded synthetic data."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from streaming_ml.data import FEATURES, generate_listings
from streaming_ml.exceptions import ConfigError, DataError, ModelNotFoundError
from streaming_ml.features import INPUT_NAMES, FeatureEncoder, FeatureSpec, fit_feature_spec
from streaming_ml.model import BOOSTER_FILE, get_bento_model, load_price_model
from streaming_ml.train import TrainParams, evaluate_model, regression_metrics, train_model

REFERENCE_BODY = {
    "model": ["C-MAX", "EcoSport"], "year": [2014, 2019], "price": [8295, 18995],
    "transmission": ["Semi-Auto", "Automatic"], "mileage": [40000, 1400],
    "fuelType": ["Diesel", "Petrol"], "tax": [160, 150], "mpg": [50.4, 44.1],
    "engineSize": [2.0, 1.0],
}  # fmt: skip
CLI = Path(sys.executable).with_name("streaming-ml")


@pytest.fixture(scope="module")
def price_model(trained_model_tag):
    return load_price_model(trained_model_tag)


# --- features -----------------------------------------------------------------


def test_spec_is_plain_json_and_round_trips():
    spec = fit_feature_spec(generate_listings(500, seed=1))
    raw = json.loads(json.dumps(spec.to_dict()))
    assert FeatureSpec.from_dict(raw) == spec
    assert raw["inputs"] == list(INPUT_NAMES)
    assert raw["categories"]["transmission"] == ["Automatic", "Manual", "Semi-Auto"]


def test_unseen_or_blank_category_becomes_missing_and_numbers_stay():
    spec = FeatureSpec(categories={"model": ("Fiesta", "Focus"), "transmission": ("Manual",),
                                   "fuelType": ("Petrol",)})  # fmt: skip
    row = {"model": " Focus ", "year": 2017, "transmission": "CVT", "mileage": None,
           "fuelType": "Petrol", "tax": 150, "mpg": "n/a", "engineSize": 1.0}  # fmt: skip
    matrix = FeatureEncoder(spec).from_records([row])
    values = dict(zip(INPUT_NAMES, matrix[0].tolist(), strict=True))
    assert values["model"] == 1.0
    assert math.isnan(values["transmission"])
    assert values["fuelType"] == 0.0
    assert math.isnan(values["mileage"]) and math.isnan(values["mpg"])
    assert values["year"] == 2017 and values["engineSize"] == 1.0


def test_frame_and_records_encode_identically():
    frame = generate_listings(200, seed=4, invalid=30)
    encoder = FeatureEncoder(fit_feature_spec(generate_listings(500, seed=1)))
    np.testing.assert_array_equal(
        encoder.from_frame(frame), encoder.from_records(frame.to_dict("records"))
    )


def test_metrics_by_hand():
    metrics = regression_metrics(np.array([100.0, 200.0]), np.array([110.0, 170.0]))
    assert metrics == {"rmse": pytest.approx(math.sqrt(500)), "mae": 20.0,
                       "mape": pytest.approx(12.5), "n": 2}  # fmt: skip


# --- the stored model -------------------------------------------------------


def test_reference_body_gets_plausible_prices(price_model):
    prices = price_model.predict(pd.DataFrame(REFERENCE_BODY))
    assert prices.shape == (2,) and prices.dtype == np.float64
    # Listed at 8,295 and 18,995: a sane model lands within a factor of two.
    assert 4_000 < prices[0] < 16_000
    assert 9_000 < prices[1] < 38_000


def test_unknown_category_missing_value_and_extra_columns_are_priced(price_model):
    frame = pd.DataFrame(REFERENCE_BODY)
    frame.loc[0, "model"] = "Model T"
    frame.loc[1, "mpg"] = None
    frame["colour"] = ["red", "blue"]
    prices = price_model.predict(frame)
    assert np.isfinite(prices).all() and (prices > 0).all()


def test_records_and_frame_paths_agree(price_model):
    frame = generate_listings(300, seed=21)
    np.testing.assert_allclose(
        price_model.predict(frame), price_model.predict_records(frame.to_dict("records"))
    )
    assert price_model.predict(frame.iloc[:0]).shape == (0,)


def test_model_learned_the_obvious(price_model):
    base = pd.DataFrame(REFERENCE_BODY).iloc[[1]]
    older = base.assign(year=2013, mileage=90_000)
    bigger = base.assign(model="Kuga", engineSize=2.0)
    new, old, kuga = (price_model.predict(f)[0] for f in (base, older, bigger))
    assert old < new < kuga


def test_stored_model_is_json_with_metadata(trained_model_tag, price_model):
    bento_model = get_bento_model(trained_model_tag)
    files = {p.name for p in Path(bento_model.path).iterdir()}
    assert BOOSTER_FILE in files
    assert not [name for name in files if name.endswith((".pkl", ".pickle", ".joblib"))]
    json.loads(Path(bento_model.path_of(BOOSTER_FILE)).read_text())
    metadata = bento_model.info.metadata
    assert len(metadata["data"]["fingerprint_sha256"]) == 64
    assert metadata["data"]["source"] == "synthetic"
    assert set(metadata["validation"]) >= {"rmse", "mae", "mape", "n"}
    assert metadata["libraries"]["xgboost"]
    assert bento_model.info.labels["source"] == "synthetic"
    assert price_model.tag == trained_model_tag
    assert price_model.booster.num_boosted_rounds() > 0


def test_missing_model_says_to_train():
    with pytest.raises(ModelNotFoundError, match="streaming-ml train"):
        load_price_model("ford_price:doesnotexist")


# --- train and evaluate ------------------------------------------------------


def quirky_csv(tmp_path, rows=400, seed=31):
    """Synthetic listings written the way the real export looks (CRLF, padded model)."""
    frame = generate_listings(rows, seed=seed)
    frame["model"] = " " + frame["model"]
    bad = frame.iloc[:3].copy()
    bad["engineSize"] = 0.0
    path = tmp_path / "eval.csv"
    pd.concat([frame, bad]).to_csv(path, index=False, lineterminator="\r\n")
    return path, rows


def test_train_on_csv_then_evaluate(tmp_path):
    path, rows = quirky_csv(tmp_path, rows=600, seed=8)
    result = train_model("ford_price_unit", path, 0, seed=3, version="v1",
                         params=TrainParams(n_estimators=60, learning_rate=0.2))  # fmt: skip
    assert result["tag"] == "ford_price_unit:v1"
    assert result["source"] == "csv"
    assert result["rows"] == {"read": rows + 3, "trained": rows, "holdout": rows // 5}
    assert result["dropped"] == {"engineSize out of range": 3}
    holdout = result["holdout_metrics"]
    assert all(math.isfinite(holdout[k]) for k in ("rmse", "mae", "mape"))
    assert holdout["mape"] < 30

    metrics = evaluate_model(path, "ford_price_unit:v1")
    assert set(metrics) == {"rmse", "mae", "mape", "n"}
    assert metrics["n"] == rows
    assert 0 < metrics["mae"] <= metrics["rmse"]
    # Scored on its own training rows, the model beats its holdout score.
    assert metrics["mape"] < holdout["mape"]


def test_training_refuses_too_little_data():
    with pytest.raises(DataError, match="usable rows"):
        train_model("ford_price_unit", None, 10, seed=1, version=None)


def test_evaluate_needs_valid_rows(tmp_path, trained_model_tag):
    path = tmp_path / "empty.csv"
    path.write_text(",".join(["model", "year", "price", "transmission", "mileage",
                              "fuelType", "tax", "mpg", "engineSize"]) + "\n")  # fmt: skip
    with pytest.raises(DataError, match="no valid listings"):
        evaluate_model(path, trained_model_tag)


def test_cli_evaluate_prints_exactly_one_json_object(tmp_path, trained_model_tag):
    path, rows = quirky_csv(tmp_path)
    completed = subprocess.run(
        [str(CLI), "evaluate", "--data", str(path), "--model", trained_model_tag],
        capture_output=True, text=True, timeout=120, env={**os.environ, "SML_LOG_LEVEL": "INFO"},
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.count("\n") == 1
    metrics = json.loads(completed.stdout)
    assert set(metrics) == {"rmse", "mae", "mape", "n"} and metrics["n"] == rows
    assert "loaded listings CSV" in completed.stderr


def test_cli_train_explains_missing_csv(tmp_path):
    completed = subprocess.run(
        [str(CLI), "train", "--data", str(tmp_path / "missing.csv")],
        capture_output=True, text=True, timeout=120, env=dict(os.environ),
    )  # fmt: skip
    assert completed.returncode == 1
    assert completed.stdout == ""
    assert "not found" in completed.stderr


def test_features_cover_the_schema():
    assert set(FEATURES) <= set(INPUT_NAMES)


def test_existing_or_invalid_tag_fails_before_training(trained_model_tag):
    name, version = trained_model_tag.split(":")
    with pytest.raises(ConfigError, match="already exists"):
        train_model(name, None, 10, seed=1, version=version)
    with pytest.raises(ConfigError, match="invalid model tag"):
        train_model(name, None, 10, seed=1, version="no spaces!")


def test_frame_without_feature_columns_is_explained(price_model):
    with pytest.raises(DataError, match="mpg"):
        price_model.predict(pd.DataFrame(REFERENCE_BODY).drop(columns=["mpg"]))
