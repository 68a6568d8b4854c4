"""The pounds decompositions (streaming_ml.contributions) and PriceModel.explain_records."""

import itertools
import math

import numpy as np
import pytest

from streaming_ml.datasets.synthetic import generate_listing_records
from streaming_ml.models import contributions
from streaming_ml.models.features import FEATURE_OF_INPUT, INPUT_NAMES, RELATIVE_MPG
from streaming_ml.models.loader import load_price_model
from streaming_ml.schema.listing import FEATURES

PENNY_MILLIONTH = 1e-6  # pounds: how exactly a decomposition must add up


def random_rows(seed: int, rows: int = 500, features: int = 8) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(0, 0.3, (rows, features)), rng.normal(9.3, 0.2, rows)


# --- log contributions to pounds ---------------------------------------------------------


def test_pounds_add_up_to_the_price_exactly() -> None:
    log_contributions, log_base = random_rows(1)
    prices = np.exp(log_base + log_contributions.sum(axis=1))

    base, amounts = contributions.to_pounds(log_contributions, log_base, prices)

    assert np.abs(base + amounts.sum(axis=1) - prices).max() < PENNY_MILLIONTH
    assert np.array_equal(base, np.exp(log_base))


def test_the_served_price_wins_over_xgboosts_float32_sum() -> None:
    """Contributions and margin disagree by float32 rounding; the amounts still end at
    the price the service answered, and no sign flips."""
    log_contributions, log_base = random_rows(2)
    noise = np.random.default_rng(3).normal(0, 2e-6, len(log_base))
    prices = np.exp(log_base + log_contributions.sum(axis=1) + noise)

    base, amounts = contributions.to_pounds(log_contributions, log_base, prices)

    assert np.abs(base + amounts.sum(axis=1) - prices).max() < PENNY_MILLIONTH
    assert np.array_equal(np.sign(amounts), np.sign(log_contributions))


def test_each_amount_keeps_its_sign_and_its_share_of_the_log_gap() -> None:
    log_contributions = np.array([[0.2, -0.1, 0.05, 0.0]])
    log_base = np.array([9.0])
    prices = np.exp(log_base + log_contributions.sum(axis=1))

    _base, amounts = contributions.to_pounds(log_contributions, log_base, prices)

    assert np.array_equal(np.sign(amounts), np.sign(log_contributions))
    assert amounts[0] / amounts[0, 0] == pytest.approx(log_contributions[0] / 0.2, rel=1e-12)


def test_a_price_at_the_base_is_the_limit_not_a_division_by_zero() -> None:
    log_contributions = np.array([[0.3, -0.3], [1e-12, -1e-12]])
    log_base = np.array([9.0, 9.0])
    prices = np.exp(log_base)

    base, amounts = contributions.to_pounds(log_contributions, log_base, prices)

    assert np.all(np.isfinite(amounts))
    assert amounts[0] == pytest.approx(np.exp(9.0) * np.array([0.3, -0.3]), rel=1e-12)
    assert np.abs(base + amounts.sum(axis=1) - prices).max() < PENNY_MILLIONTH


def test_the_scale_stays_between_the_base_and_the_price() -> None:
    """Stability: a pound per unit of log contribution is the logarithmic mean of the base
    and the price, never more than the larger of them however the features cancel."""
    log_contributions, log_base = random_rows(4)
    prices = np.exp(log_base + log_contributions.sum(axis=1))
    base, amounts = contributions.to_pounds(log_contributions, log_base, prices)
    moving = np.abs(log_contributions).sum(axis=1) > 0
    scale = amounts[moving, 0] / log_contributions[moving, 0]
    low = np.minimum(base, prices)[moving] * (1 - 1e-12)
    high = np.maximum(base, prices)[moving] * (1 + 1e-12)
    assert np.all((low <= scale) & (scale <= high))


def test_a_model_of_the_price_itself_keeps_its_contributions() -> None:
    raw = np.array([[100.0, -40.0], [0.0, 0.0]])
    base, amounts = contributions.in_pounds(raw, np.array([1000.0, 1000.0]), [1060.0, 1000.0])

    assert amounts.tolist() == raw.tolist() and base.tolist() == [1000.0, 1000.0]


def test_derived_inputs_are_credited_to_their_listing_feature() -> None:
    raw = np.arange(len(INPUT_NAMES), dtype=float)[None, :]

    per_feature = contributions.by_feature(raw, INPUT_NAMES, FEATURE_OF_INPUT, FEATURES)

    assert per_feature.shape == (1, len(FEATURES))
    mpg = FEATURES.index("mpg")
    assert per_feature[0, mpg] == INPUT_NAMES.index("mpg") + INPUT_NAMES.index(RELATIVE_MPG)
    assert per_feature.sum() == raw.sum()


# --- against a reference listing -----------------------------------------------------------


def toy_price(rows: list[dict]) -> np.ndarray:
    """Not additive: a and b interact, so per-row attributions of a and b depend on each other."""
    return np.array([1000.0 + 10.0 * r["a"] * r["b"] + 3.0 * r["c"] ** 2 for r in rows])


def brute_force_shapley(listing: dict, reference: dict, names: list[str]) -> list[float]:
    """Shapley values by averaging marginal gains over every order of the features."""
    orders = list(itertools.permutations(names))
    totals = dict.fromkeys(names, 0.0)
    for order in orders:
        row = dict(reference)
        before = toy_price([row])[0]
        for name in order:
            row[name] = listing[name]
            after = toy_price([row])[0]
            totals[name] += after - before
            before = after
    return [totals[name] / len(orders) for name in names]


def test_reference_decomposition_is_the_shapley_value() -> None:
    names = ["a", "b", "c"]
    listing, reference = {"a": 3.0, "b": 5.0, "c": 2.0}, {"a": 1.0, "b": -1.0, "c": 4.0}

    base, price, amounts = contributions.against_reference(toy_price, listing, reference, names)

    assert amounts.tolist() == pytest.approx(brute_force_shapley(listing, reference, names))
    assert (base, price) == (toy_price([reference])[0], toy_price([listing])[0])
    assert abs(base + amounts.sum() - price) < PENNY_MILLIONTH


def test_a_pair_differing_in_one_feature_puts_the_whole_difference_on_it() -> None:
    names = ["a", "b", "c"]
    reference = {"a": 3.0, "b": 5.0, "c": 2.0}
    listing = dict(reference, a=4.0)  # a interacts with b, yet b gets nothing

    base, price, amounts = contributions.against_reference(toy_price, listing, reference, names)

    assert amounts.tolist() == [price - base, 0.0, 0.0]
    assert price - base == 50.0


def test_identical_listings_have_nothing_to_explain() -> None:
    row = {"a": 1.0, "b": 2.0, "c": 3.0}

    base, price, amounts = contributions.against_reference(toy_price, row, dict(row), list(row))

    assert base == price and amounts.tolist() == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("players", [1, 2, 5, 8])
def test_shapley_weights_of_all_coalitions_sum_to_one(players: int) -> None:
    weights = contributions.shapley_weights(players)
    total = sum(math.comb(players - 1, k) * weights[k] for k in range(players))
    assert total == pytest.approx(1.0, rel=1e-15)


# --- in whole pounds, as a page shows them ---------------------------------------------------


def half_up(amount: float) -> int:
    return math.floor(amount + 0.5)


def test_whole_pounds_add_up_where_rounding_each_part_would_not() -> None:
    parts = [100.3, 0.45, 0.4]

    shown = contributions.whole_pounds(parts, sum(parts))

    assert sum(half_up(p) for p in parts) == 100, "each on its own: a pound short of 101"
    assert shown == [100, 1, 0], "the part nearest its ceiling takes the missing pound"


def test_whole_pounds_are_each_parts_floor_or_ceiling_and_add_up_to_the_shown_total() -> None:
    rng = np.random.default_rng(21)
    for _ in range(2_000):
        parts = [float(rng.uniform(5_000, 20_000)), *rng.normal(0, 800, 8).tolist()]
        total = sum(parts)

        shown = contributions.whole_pounds(parts, total)

        assert sum(shown) == half_up(total)
        assert all(math.floor(p) <= s <= math.ceil(p) for p, s in zip(parts, shown, strict=True))


def test_parts_that_do_not_add_up_to_the_total_are_refused() -> None:
    with pytest.raises(ValueError, match="cannot round"):
        contributions.whole_pounds([10.0, 2.0], 20.0)


# --- the real model ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def price_model(trained_model_tag):
    return load_price_model(trained_model_tag)


def test_explained_prices_are_the_served_prices_and_add_up(price_model) -> None:
    records = generate_listing_records(300, seed=15)

    explained = price_model.explain_records(records)

    assert np.array_equal(explained.prices, price_model.predict_records(records))
    total = explained.base + explained.amounts.sum(axis=1)
    assert np.abs(total - explained.prices).max() < PENNY_MILLIONTH
    assert explained.amounts.shape == (300, len(FEATURES))
    assert len(set(explained.base.tolist())) == 1, "the base is the model's, not the row's"


def test_an_explained_row_names_every_feature(price_model) -> None:
    row = price_model.explain_records(generate_listing_records(1, seed=16)).row(0)

    assert list(row["contributions"]) == list(FEATURES)
    assert row["base_price"] > 0


def test_no_records_explain_to_nothing(price_model) -> None:
    explained = price_model.explain_records([])

    assert explained.prices.shape == (0,) and explained.amounts.shape == (0, len(FEATURES))


def test_unknown_categories_and_engine_sizes_are_explained_too(price_model) -> None:
    record = dict(generate_listing_records(1, seed=17)[0], model="Capri", engineSize=None)

    explained = price_model.explain_records([record])

    assert abs(explained.base[0] + explained.amounts[0].sum() - explained.prices[0]) < 1e-6


def test_every_explained_price_shows_in_whole_pounds_that_add_up(price_model) -> None:
    explained = price_model.explain_records(generate_listing_records(300, seed=18))

    for base, amounts, price in zip(
        explained.base, explained.amounts, explained.prices, strict=True
    ):
        shown = contributions.whole_pounds([float(base), *amounts.tolist()], float(price))
        assert sum(shown) == half_up(float(price))
