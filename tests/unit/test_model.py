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

from streaming_ml.config import Settings
from streaming_ml.datasets.synthetic import generate_listings
from streaming_ml.errors import ConfigError, DataError, ModelNotFoundError
from streaming_ml.models.booster import BOOSTER_FILE
from streaming_ml.models.features import (
    INPUT_NAMES,
    RELATIVE_MPG,
    FeatureEncoder,
    FeatureSpec,
    fit_feature_spec,
)
from streaming_ml.models.loader import load_price_model
from streaming_ml.models.store import get_bento_model
from streaming_ml.models.train import (
    CV_SEED,
    TrainParams,
    evaluate_model,
    regression_metrics,
    train_model,
)
from streaming_ml.schema.listing import FEATURES, feature_problems
from tests.fixtures.model import FIXTURE_ROWS, FIXTURE_SEED

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


SPEC = FeatureSpec(
    categories={"model": ("Fiesta", "Focus"), "transmission": ("Manual",), "fuelType": ("Petrol",)},
    mpg_medians={"Fiesta": {"Petrol": 60.0}, "Focus": {"Petrol": 50.0}},
)


def encoded(row: dict) -> dict[str, float]:
    return dict(zip(INPUT_NAMES, FeatureEncoder(SPEC).from_records([row])[0].tolist(), strict=True))


def test_unseen_or_blank_category_becomes_missing_and_numbers_stay():
    row = {"model": " Focus ", "year": 2017, "transmission": "CVT", "mileage": None,
           "fuelType": "Petrol", "tax": 150, "mpg": "n/a", "engineSize": 1.0}  # fmt: skip
    values = encoded(row)
    assert values["model"] == 1.0
    assert math.isnan(values["transmission"])
    assert values["fuelType"] == 0.0
    assert math.isnan(values["mileage"]) and math.isnan(values["mpg"])
    assert values["year"] == 2017 and values["engineSize"] == 1.0


def test_relative_mpg_is_mpg_over_the_training_median_of_its_model_and_fuel():
    row = {"model": "Focus", "year": 2017, "transmission": "Manual", "mileage": 100,
           "fuelType": "Petrol", "tax": 150, "mpg": 55.0, "engineSize": 1.0}  # fmt: skip
    assert encoded(row)[RELATIVE_MPG] == pytest.approx(1.1)
    for unknown in ({"model": "Model T"}, {"fuelType": "Diesel"}, {"mpg": None}):
        assert math.isnan(encoded({**row, **unknown})[RELATIVE_MPG]), unknown
    spec = fit_feature_spec(pd.DataFrame({"model": ["Ka", "Ka", " Ka", "Ka"],
                                          "transmission": ["Manual"] * 4,
                                          "fuelType": ["Petrol", "Petrol", "Petrol", "Diesel"],
                                          "mpg": [40.0, 50.0, 70.0, 65.0]}))  # fmt: skip
    assert spec.mpg_medians == {"Ka": {"Petrol": 50.0, "Diesel": 65.0}}


@pytest.mark.parametrize("unknown", [0, 0.0, None, "missing key"])
def test_engine_size_zero_or_null_is_missing_to_the_model(unknown):
    """0 is how exports say "unknown": the model must not read it as a 0-litre engine."""
    row = {"model": "Focus", "year": 2017, "transmission": "Manual", "mileage": 100,
           "fuelType": "Petrol", "tax": 150, "mpg": 55.0}  # fmt: skip
    if unknown != "missing key":
        row["engineSize"] = unknown
    assert math.isnan(encoded(row)["engineSize"])
    assert encoded({**row, "engineSize": 1.6})["engineSize"] == pytest.approx(1.6)


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


def test_unknown_engine_size_is_accepted_and_priced_as_learned(price_model):
    """An engine size of 0 or null passes the shared validation and is priced through
    the branches the model learned from the training rows without one: the same price
    for both spellings, finite and plausible, and not the price of a known engine."""
    training = generate_listings(FIXTURE_ROWS, seed=FIXTURE_SEED)
    assert (training["engineSize"] == 0).sum() > 0  # the model did see unknown engines
    kuga = {**{name: values[0] for name, values in REFERENCE_BODY.items()}, "model": "Kuga"}
    known = {size: price_model.predict_records([{**kuga, "engineSize": size}])[0]
             for size in (1.5, 2.0)}  # fmt: skip
    zero, null = price_model.predict_records(
        [{**kuga, "engineSize": 0.0}, {**kuga, "engineSize": None}]
    )
    assert feature_problems({**kuga, "engineSize": 0.0}) == {}
    assert feature_problems({**kuga, "engineSize": None}) == {}
    assert zero == null
    assert math.isfinite(zero) and min(known.values()) / 2 < zero < max(known.values()) * 2
    assert zero not in known.values()


def test_price_never_rises_with_mileage(price_model):
    listing = {name: values[1] for name, values in REFERENCE_BODY.items()}
    miles = [0, 1_000, 5_000, 10_000, 20_000, 40_000, 60_000, 90_000, 150_000, 300_000]
    prices = price_model.predict_records([{**listing, "mileage": m} for m in miles])
    assert (np.diff(prices) <= 0).all()
    assert prices[0] > prices[-1]


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
    assert metadata["features"]["inputs"] == list(INPUT_NAMES)
    assert metadata["libraries"]["xgboost"]
    assert bento_model.info.labels["source"] == "synthetic"
    assert price_model.tag == trained_model_tag
    assert price_model.booster.num_boosted_rounds() > 0


def test_cv_metrics_are_stored_for_the_promotion_gate(trained_model_tag):
    metadata = get_bento_model(trained_model_tag).info.metadata
    cv = metadata["cv"]
    assert set(cv) == {"folds", "seed", "data_fingerprint_sha256", "rows",
                       "rmse", "mae", "mape", "rmse_std"}  # fmt: skip
    assert (cv["folds"], cv["seed"], cv["rows"]) == (5, CV_SEED, FIXTURE_ROWS)
    assert cv["data_fingerprint_sha256"] == metadata["data"]["fingerprint_sha256"]
    for key in ("rmse", "mae", "mape", "rmse_std"):
        assert isinstance(cv[key], float) and math.isfinite(cv[key]) and cv[key] > 0, key
    assert cv["mae"] < cv["rmse"] < 5_000 and cv["mape"] < 30
    assert all(isinstance(cv[key], int) for key in ("folds", "seed", "rows"))


def test_missing_model_says_to_train():
    with pytest.raises(ModelNotFoundError, match="streaming-ml train"):
        load_price_model("ford_price:doesnotexist")


# --- train and evaluate ------------------------------------------------------


def quirky_csv(tmp_path, rows=400, seed=31):
    """Synthetic listings written the way the real export looks (CRLF, padded model)."""
    frame = generate_listings(rows, seed=seed)
    frame["model"] = " " + frame["model"]
    bad = frame.iloc[:3].copy()
    bad["engineSize"] = 1598.0  # cubic centimetres where litres belong
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
    assert set(result["cv"]) >= {"rmse", "mae", "mape"} and result["cv"]["rows"] == rows
    # The folds do not follow the training seed: another seed on the same rows compares.
    assert result["cv"]["seed"] == CV_SEED
    holdout = result["holdout_metrics"]
    assert all(math.isfinite(holdout[k]) for k in ("rmse", "mae", "mape"))
    assert holdout["mape"] < 30

    metrics = evaluate_model(path, "ford_price_unit:v1")
    assert set(metrics) == {"rmse", "mae", "mape", "n"}
    assert metrics["n"] == rows
    assert 0 < metrics["mae"] <= metrics["rmse"]
    # Scored on its own training rows, the model beats its holdout score.
    assert metrics["mape"] < holdout["mape"]


def test_unknown_engine_sizes_are_trained_on_not_dropped(tmp_path):
    frame = generate_listings(300, seed=12)
    frame.loc[:9, "engineSize"] = 0.0
    frame.loc[10:14, "engineSize"] = None
    path = tmp_path / "unknown_engines.csv"
    frame.to_csv(path, index=False, lineterminator="\r\n")
    result = train_model("ford_price_unit", path, 0, seed=3, version="unknown-engines",
                         params=TrainParams(n_estimators=20), cv_folds=0)  # fmt: skip
    assert result["dropped"] == {}
    assert result["rows"]["trained"] == 300


def test_cv_folds_zero_stores_no_cv_metrics():
    result = train_model("ford_price_unit", None, 300, seed=2, version="no-cv",
                         params=TrainParams(n_estimators=20), cv_folds=0)  # fmt: skip
    assert "cv" not in result
    assert "cv" not in get_bento_model(result["tag"]).info.metadata


@pytest.mark.parametrize(("folds", "stored"), [("0", None), ("3", 3)])
def test_cli_cv_folds_option(folds, stored):
    name = Settings().model_name
    completed = subprocess.run(
        [str(CLI), "train", "--synthetic", "300", "--cv-folds", folds, "--tag", f"cli-cv-{folds}",
         "--json"],
        capture_output=True, text=True, timeout=120, env=dict(os.environ),
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    printed = json.loads(completed.stdout).get("cv")
    metadata = get_bento_model(f"{name}:cli-cv-{folds}").info.metadata
    if stored is None:
        assert printed is None and "cv" not in metadata
    else:
        assert printed["folds"] == metadata["cv"]["folds"] == stored


def test_one_fold_is_refused_before_training():
    with pytest.raises(ConfigError, match="cv-folds"):
        train_model("ford_price_unit", None, 300, seed=2, version="one-fold", cv_folds=1)


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
        [str(CLI), "evaluate", "--data", str(path), "--model", trained_model_tag, "--json"],
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
