"""The seeded synthetic listing generator, calibrated on the real training split."""

from __future__ import annotations

import datetime as dt
import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from streaming_ml.datasets.csv import listing_records, with_schema_dtypes
from streaming_ml.errors import DataError
from streaming_ml.schema.listing import FEATURE_COLUMNS, MIN_YEAR, max_year

SNAPSHOT_YEAR = 2020  # the listings were scraped in 2020: ages are counted from it


@dataclass(frozen=True)
class _ModelProfile:
    share: int  # listings of this model in the calibration data
    first_year: int  # registration years seen for the model
    last_year: int
    automatic: float  # share of Automatic; Semi-Auto next, Manual the rest
    semi_auto: float
    log_price_base: float  # model effect in the log-price regression below


# fmt: off
_PROFILES: dict[str, _ModelProfile] = {
    # model:                       share  years       auto  semi  base
    "Fiesta":               _ModelProfile(5242, 1998, 2020, .028, .042, 9.548),
    "Focus":                _ModelProfile(3690, 2003, 2020,  .09, .037, 9.715),
    "Kuga":                 _ModelProfile(1785, 2009, 2020, .118, .098, 9.844),
    "EcoSport":             _ModelProfile( 899, 2014, 2020, .055, .074, 9.638),
    "C-MAX":                _ModelProfile( 429, 2007, 2019, .091, .072, 9.618),
    "Mondeo":               _ModelProfile( 423, 2002, 2020,  .24, .063, 9.671),
    "Ka+":                  _ModelProfile( 417, 2016, 2020,    0,    0, 9.193),
    "B-MAX":                _ModelProfile( 280, 2012, 2018, .069, .195, 9.496),
    "S-MAX":                _ModelProfile( 236, 2006, 2020, .205, .171, 9.998),
    "Grand C-MAX":          _ModelProfile( 201, 2011, 2019, .139, .075, 9.696),
    "Galaxy":               _ModelProfile( 184, 2005, 2019, .147, .201, 10.019),
    "Edge":                 _ModelProfile( 167, 2016, 2019, .299, .335, 10.122),
    "KA":                   _ModelProfile( 149, 2006, 2019,    0,    0, 9.208),
    "Tourneo Custom":       _ModelProfile(  63, 2015, 2019, .127,    0, 10.029),
    "Puma":                 _ModelProfile(  62, 2019, 2020,    0,    0, 9.871),
    "Grand Tourneo Connect":_ModelProfile(  51, 2014, 2020,  .26,    0, 9.857),
    "Mustang":              _ModelProfile(  49, 2016, 2020, .429, .286, 9.625),
    "Tourneo Connect":      _ModelProfile(  26, 2015, 2020, .308,    0, 9.806),
    "Fusion":               _ModelProfile(  15, 2004, 2011, .267,    0, 9.415),
    "Streetka":             _ModelProfile(   2, 2005, 2006,    0,    0, 9.558),
    "Ranger":               _ModelProfile(   1, 2013, 2013,    0,    0, 10.12),
    "Escort":               _ModelProfile(   1, 1996, 1996,    0,    0, 10.6),
}


# Registration years per model, % of its listings in 2020, 2019, ..., 2013. Real
# listings peak at 2017 and thin out fast after it (2020 is a part year: the data was
# scraped in 2020), which a per-model normal cannot follow. The rest of a model's
# listings are older, one year fewer per step back in the ratio _OLDER_YEAR_RATIO, from
# 2012 (or the model's last year) down to its first year. (Puma's two 2002 listings, the
# old coupe, are left out: the Puma of today is a 2019 car.)
_RECENT_YEARS = tuple(range(SNAPSHOT_YEAR, 2012, -1))


_YEAR_SHARES: dict[str, tuple[float, ...]] = {
    # model:                  2020  2019  2018  2017  2016  2015  2014  2013
    "Fiesta":                 (1.4, 14.1, 27.3, 24.1, 13.2,  7.5,  5.6,  4.4),
    "Focus":                  (1.3, 23.2, 22.0, 24.9, 10.9,  8.2,  3.3,  3.1),
    "Kuga":                   (0.5, 22.8, 18.2, 34.5,  9.4,  7.5,  3.8,  2.8),
    "EcoSport":               (2.4, 23.1, 27.6, 30.4,  9.9,  5.5,  1.1,    0),
    "C-MAX":                  (  0,  5.4,  7.9, 36.9, 26.4,  7.5,  6.8,  4.4),
    "Mondeo":                 (3.4, 11.8, 10.6, 18.6, 23.4, 19.3,  2.9,  1.9),
    "Ka+":                    (0.2, 23.5, 41.3, 32.8,  2.2,    0,    0,    0),
    "B-MAX":                  (  0,    0,  2.9, 35.4, 19.1,  9.4, 15.2, 16.6),
    "S-MAX":                  (1.3, 13.7,  4.7, 38.9, 24.8,  6.8,  1.7,  2.6),
    "Grand C-MAX":            (  0,  3.0, 10.9, 36.3, 34.3,  7.5,  2.0,  3.0),
    "Galaxy":                 (  0, 12.5, 14.1, 32.6, 29.9,  0.5,  1.6,  4.3),
    "Edge":                   (  0, 17.7, 15.9, 45.7, 20.7,    0,    0,    0),
    "KA":                     (  0,  3.4,  4.7,  6.1, 10.1, 19.6, 20.3, 12.8),
    "Tourneo Custom":         (  0, 38.1, 23.8, 20.6, 15.9,  1.6,    0,    0),
    "Puma":                   (63.3, 36.7,   0,    0,    0,    0,    0,    0),
    "Grand Tourneo Connect":  (2.0, 24.0, 10.0, 30.0, 22.0, 10.0,  2.0,    0),
    "Mustang":                (18.4, 24.5, 26.5, 20.4, 10.2,   0,    0,    0),
    "Tourneo Connect":        (3.8, 19.2,  3.8, 23.1, 34.6, 15.4,    0,    0),
    "Fusion":                 (  0,    0,    0,    0,    0,    0,    0,    0),
    "Streetka":               (  0,    0,    0,    0,    0,    0,    0,    0),
    "Ranger":                 (  0,    0,    0,    0,    0,    0,    0,  100),
    "Escort":                 (  0,    0,    0,    0,    0,    0,    0,    0),
}


# Listings per year fall by about a quarter with each year older than 2013.
_OLDER_YEAR_RATIO = 0.75


# Variants per model: (engine litres, fuel, share of the model's listings with a known
# engine size, mpg figures). Engine and fuel go together (a Fiesta diesel is a 1.5, never
# a 1.0). Real mpg is lumpy, a handful of official figures per variant, and no formula
# gives its deciles, so mpg is drawn from the variant's own figures ({mpg: % of its
# listings}: the most common ones covering 90 %, at most five). Variants below 1 % of
# their model are left out (a model keeps at least its most common one); shares are
# renormalised. A variant with 10-29 listings keeps only its most common figure, one
# with fewer ({}) takes mpg from the _MPG regression below. Within a variant mpg does not
# follow the year (real figures from 2019 on are WLTP ones, a little lower).
_VARIANTS: dict[str, tuple[tuple[float, str, float, dict[float, int]], ...]] = {
    "Fiesta": (
        (1.0, "Petrol", .654, {65.7: 57, 58.9: 12, 62.8: 9, 56.5: 7, 60.1: 4}),
        (1.2, "Petrol", .140, {54.3: 93}),
        (1.1, "Petrol", .083, {64.2: 66, 55.4: 20, 48.7: 14}),
        (1.5, "Diesel", .053, {78.5: 43, 88.3: 26, 76.4: 19, 58.9: 7}),
        (1.6, "Petrol", .042, {47.9: 97}),
        (1.5, "Petrol", .012, {40.3: 95}),
    ),
    "Focus": (
        (1.0, "Petrol", .474, {60.1: 48, 58.9: 12, 57.7: 11, 61.4: 11, 51.4: 8}),
        (1.5, "Diesel", .225, {74.3: 84, 80.7: 7}),
        (2.0, "Petrol", .088, {41.5: 92}),
        (2.0, "Diesel", .084, {67.3: 59, 64.2: 18, 70.6: 6, 61.4: 4, 50.4: 4}),
        (1.6, "Diesel", .038, {67.3: 90}),
        (1.6, "Petrol", .038, {44.8: 31, 47.9: 28, 42.2: 13, 44.1: 10, 47.1: 4}),
        (1.5, "Petrol", .035, {51.4: 38, 46.3: 26, 50.4: 12, 47.9: 6, 39.8: 5}),
        (2.3, "Petrol", .014, {34.5: 71, 36.7: 29}),
    ),
    "Kuga": (
        (2.0, "Diesel", .612, {60.1: 33, 54.3: 31, 47.9: 12, 38.2: 5, 53.3: 4}),
        (1.5, "Petrol", .199, {45.6: 27, 38.2: 24, 39.2: 19, 35.3: 14, 34.4: 7}),
        (1.5, "Diesel", .177, {64.2: 61, 54.3: 24, 58.9: 9}),
    ),
    "EcoSport": (
        (1.0, "Petrol", .769, {53.3: 28, 52.3: 25, 54.3: 24, 51.4: 12, 45.6: 7}),
        (1.5, "Diesel", .132, {64.2: 60, 68.9: 15, 67.3: 9, 61.4: 9}),
        (1.5, "Petrol", .097, {44.8: 98}),
    ),
    "C-MAX": (
        (1.5, "Diesel", .458, {68.9: 72, 64.2: 20}),
        (1.0, "Petrol", .287, {55.4: 82, 48.7: 11}),
        (1.6, "Petrol", .089, {44.1: 68, 42.8: 29}),
        (1.6, "Diesel", .077, {61.4: 73, 62.8: 21}),
        (2.0, "Diesel", .056, {58.9: 29}),
        (1.5, "Petrol", .014, {}),
        (1.8, "Petrol", .014, {}),
    ),
    "Mondeo": (
        (2.0, "Diesel", .651, {65.7: 21, 64.2: 14, 68.9: 12, 58.9: 9, 62.8: 9}),
        (1.5, "Diesel", .119, {78.5: 90, 74.3: 8}),
        (1.5, "Petrol", .087, {48.7: 47, 44.8: 31, 43.5: 14}),
        (2.0, "Petrol", .051, {38.2: 38}),
        (2.0, "Hybrid", .031, {47.1: 31}),
        (1.6, "Diesel", .019, {}),
    ),
    "Ka+": (
        (1.2, "Petrol", .998, {57.7: 61, 47.9: 20, 43.5: 13}),
    ),
    "B-MAX": (
        (1.0, "Petrol", .404, {55.4: 57, 57.7: 37}),
        (1.6, "Petrol", .264, {44.1: 100}),
        (1.5, "Diesel", .152, {74.4: 57, 74.3: 29, 68.9: 14}),
        (1.4, "Petrol", .116, {47.1: 97}),
        (1.6, "Diesel", .065, {70.6: 100}),
    ),
    "S-MAX": (
        (2.0, "Diesel", .825, {56.5: 47, 52.3: 17, 51.4: 14, 54.3: 9, 47.1: 5}),
        (1.5, "Petrol", .073, {43.5: 76}),
        (2.0, "Petrol", .051, {35.8: 100}),
        (1.6, "Diesel", .021, {}),
        (2.2, "Diesel", .017, {}),
    ),
    "Grand C-MAX": (
        (1.5, "Diesel", .552, {64.2: 70, 58.9: 23}),
        (1.0, "Petrol", .289, {54.3: 79, 47.9: 10, 47.1: 10}),
        (2.0, "Diesel", .090, {48.7: 39}),
        (1.6, "Diesel", .055, {60.1: 91}),
        (1.6, "Petrol", .015, {}),
    ),
    "Galaxy": (
        (2.0, "Diesel", .918, {56.5: 53, 52.3: 24, 55.4: 8, 47.1: 4, 54.3: 4}),
        (1.5, "Petrol", .022, {}),
        (1.6, "Diesel", .016, {}),
        (1.8, "Diesel", .016, {}),
        (2.0, "Petrol", .016, {}),
    ),
    "Edge": (
        (2.0, "Diesel", 1.000, {48.7: 48, 47.9: 32, 37.2: 19}),
    ),
    "KA": (
        (1.2, "Petrol", .939, {57.7: 85, 55.4: 10}),
        (1.3, "Petrol", .054, {}),
    ),
    "Tourneo Custom": (
        (2.0, "Diesel", .984, {44.8: 31, 32.5: 18, 31.7: 15, 30.1: 10, 35.3: 10}),
        (2.2, "Diesel", .016, {}),
    ),
    "Puma": (
        (1.0, "Petrol", .967, {50.4: 73, 49.6: 14, 51.4: 14}),
        (1.6, "Petrol", .016, {}),
        (1.7, "Petrol", .016, {}),
    ),
    "Grand Tourneo Connect": (
        (1.5, "Diesel", .900, {61.4: 36, 64.2: 31, 56.6: 29}),
        (1.6, "Diesel", .100, {}),
    ),
    "Mustang": (
        (5.0, "Petrol", .735, {23.5: 31, 22.1: 28, 20.9: 19, 20.8: 8, 22.6: 3}),
        (2.3, "Petrol", .265, {30.7: 46}),
    ),
    "Tourneo Connect": (
        (1.5, "Diesel", .846, {64.2: 41}),
        (1.6, "Diesel", .077, {}),
        (1.0, "Petrol", .038, {}),
        (1.6, "Petrol", .038, {}),
    ),
    "Fusion": (
        (1.6, "Petrol", .467, {}),
        (1.4, "Petrol", .400, {}),
        (1.4, "Diesel", .133, {}),
    ),
    "Streetka": (
        (1.6, "Petrol", 1.000, {}),
    ),
    "Ranger": (
        (3.2, "Diesel", 1.000, {}),
    ),
    "Escort": (
        (1.8, "Petrol", 1.000, {}),
    ),
}


# log(price) = model base + these terms + N(0, _LOG_PRICE_NOISE); ordinary least squares
# on the calibration data (R^2 ~ 0.9; the age^2 term makes depreciation level off).
_LOG_PRICE = {
    "age": -0.1022, "age2": -0.0024, "log_kmiles": -0.1024, "engine": 0.2675,
    "Automatic": 0.0576, "Semi-Auto": 0.0565, "Diesel": -0.1005, "Hybrid": 0.0111,
}  # fmt: skip


_LOG_PRICE_NOISE = 0.132


# Share of listings whose engine size the export records as 0 (unknown): 36 of 14,372
# in the calibration data. The price still follows the car's real engine.
_ENGINE_UNKNOWN_SHARE = 0.0025


# Mileage by age in years: (mean miles, coefficient of variation); older = last row.
_MILEAGE_BY_AGE = (
    (1_300, 1.2), (7_200, 0.7), (15_700, 0.58), (22_700, 0.54), (29_900, 0.56), (39_700, 0.52),
    (41_500, 0.42), (47_700, 0.4), (60_200, 0.39), (70_800, 0.35), (80_000, 0.33),
)  # fmt: skip


# mpg of the rare variants without figures in _VARIANTS: intercept + engine + diesel +
# age + automatic terms + N(0, sd); OLS fit on all listings.
_MPG = {"intercept": 76.6, "engine": -18.0, "Diesel": 17.5, "age": 0.29, "auto": -6.7, "sd": 6.6}


# Road tax: cars registered from 2017 pay a flat rate; older ones pay by CO2 band,
# which tracks fuel economy. (mpg upper edge, {tax: share}).
_TAX_FLAT = {145: 0.70, 150: 0.14, 125: 0.05, 0: 0.05, 20: 0.03, 30: 0.03}


_TAX_FLAT_HYBRID = {135: 0.6, 140: 0.27, 145: 0.07, 0: 0.06}


_TAX_BY_MPG = (
    (40.0, {235: 0.45, 260: 0.3, 240: 0.1, 300: 0.15}),
    (45.0, {160: 0.45, 200: 0.35, 165: 0.2}),
    (50.0, {145: 0.5, 200: 0.2, 150: 0.2, 160: 0.1}),
    (55.0, {125: 0.5, 30: 0.3, 145: 0.2}),
    (60.0, {30: 0.6, 125: 0.3, 0: 0.1}),
    (65.0, {20: 0.5, 30: 0.3, 125: 0.2}),
    (70.0, {0: 0.67, 20: 0.33}),
    (math.inf, {0: 0.95, 20: 0.05}),
)


FLAT_TAX_FROM_YEAR = 2017


def _choose(rng: np.random.Generator, shares: Mapping[Any, float], size: int) -> np.ndarray:
    keys = np.asarray(list(shares), dtype=object)
    weights = np.asarray(list(shares.values()), dtype=float)
    return keys[rng.choice(len(keys), size=size, p=weights / weights.sum())]


def _split_shares(u: np.ndarray, first: np.ndarray, second: np.ndarray, names: tuple) -> np.ndarray:
    """Per row: ``names[0]`` with probability ``first``, ``names[1]`` with ``second``,
    else ``names[2]`` (``u`` is one uniform draw per row)."""
    return np.where(u < first, names[0], np.where(u < first + second, names[1], names[2]))


@dataclass(frozen=True)
class Shift:
    """A change of the world for scenarios: ``mileage_scale`` moves a feature's
    distribution (prices still follow the same rule), ``price_factors`` moves the true
    price of some models (the features stay as they were)."""

    mileage_scale: float = 1.0
    price_factors: Mapping[str, float] = field(default_factory=dict)


def _pick(rng: np.random.Generator, shares: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """One column per row: row ``i`` picks a column of ``shares[rows[i]]`` with
    probability proportional to its weight (``shares`` is a table whose rows are
    zero-padded weights, so rows of different lengths are drawn in one go)."""
    cumulative = np.cumsum(shares, axis=1)
    # Dividing by the row's total makes its last edge exactly 1: no draw falls past it.
    cumulative /= cumulative[:, -1:]
    return (rng.random(len(rows))[:, None] >= cumulative[rows]).sum(axis=1)


def _draw_years(rng: np.random.Generator, index: np.ndarray, names: list[str]) -> np.ndarray:
    """Registration years for rows of the models ``names[index]`` (``_YEAR_SHARES``)."""
    recent = np.array([_YEAR_SHARES[name] for name in names])
    older = np.clip(100 - recent.sum(axis=1), 0, None)
    column = _pick(rng, np.column_stack([recent, older]), index)
    first = np.array([_PROFILES[name].first_year for name in names])[index]
    last = np.array([_PROFILES[name].last_year for name in names])[index]
    steps_back = rng.geometric(1 - _OLDER_YEAR_RATIO, len(index)) - 1
    older_year = np.maximum(np.minimum(last, _RECENT_YEARS[-1] - 1) - steps_back, first)
    recent_year = SNAPSHOT_YEAR - np.minimum(column, len(_RECENT_YEARS) - 1)
    return np.where(column < len(_RECENT_YEARS), recent_year, older_year).astype(np.int64)


@dataclass(frozen=True)
class _VariantTable:
    """``_VARIANTS`` as arrays. Variant ``v`` has ``engine[v]``, ``fuel[v]`` and mpg
    ``mpg_values[v, j]`` with weight ``mpg_shares[v, j]`` (NaN when it has none: the
    regression prices it); model ``m``'s variants are ``ids[m, j]``, weighted ``shares[m, j]``.
    """

    ids: np.ndarray
    shares: np.ndarray
    engine: np.ndarray
    fuel: np.ndarray
    mpg_values: np.ndarray
    mpg_shares: np.ndarray


@functools.cache
def _variant_table(names: tuple[str, ...]) -> _VariantTable:
    variants = [v for name in names for v in _VARIANTS[name]]
    widest = max(len(_VARIANTS[name]) for name in names)
    ids = np.zeros((len(names), widest), dtype=np.intp)
    shares = np.zeros((len(names), widest))
    first = 0
    for m, name in enumerate(names):
        count = len(_VARIANTS[name])
        ids[m, :count] = np.arange(first, first + count)
        shares[m, :count] = [share for _, _, share, _ in _VARIANTS[name]]
        first += count
    most_values = max(len(mpg) for *_, mpg in variants)
    mpg_values = np.full((len(variants), most_values), np.nan)
    mpg_shares = np.zeros((len(variants), most_values))
    mpg_shares[:, 0] = 1.0  # variants without values: one NaN "value"
    for v, (*_, mpg) in enumerate(variants):
        mpg_values[v, : len(mpg)] = list(mpg)
        mpg_shares[v, : len(mpg)] = list(mpg.values())
    return _VariantTable(
        ids=ids,
        shares=shares,
        engine=np.array([engine for engine, *_ in variants]),
        fuel=np.array([fuel for _, fuel, *_ in variants], dtype=object),
        mpg_values=mpg_values,
        mpg_shares=mpg_shares,
    )


def _draw_mpg(
    rng: np.random.Generator,
    table: _VariantTable,
    variant: np.ndarray,
    age: np.ndarray,
    automatic: np.ndarray,
) -> np.ndarray:
    """The variant's own mpg figures; the _MPG regression for the rare variants that
    have none (too few listings to say which figures they have)."""
    listed = table.mpg_values[variant, _pick(rng, table.mpg_shares, variant)]
    engine, fuel = table.engine[variant], table.fuel[variant]
    fitted = (
        _MPG["intercept"] + _MPG["engine"] * engine + _MPG["Diesel"] * (fuel == "Diesel")
        + _MPG["age"] * age + _MPG["auto"] * automatic
        + rng.normal(0, _MPG["sd"], len(variant)) + 10 * (fuel == "Hybrid")
    )  # fmt: skip
    return np.where(np.isnan(listed), np.round(np.clip(fitted, 20.0, 95.0), 1), listed)


def _valid_listings(rng: np.random.Generator, n: int, shift: Shift | None = None) -> pd.DataFrame:
    """``n`` valid listings, drawn column by column (vectorised: ~100x faster than per row)."""
    shift = shift or Shift()
    names = list(_PROFILES)
    profiles = [_PROFILES[m] for m in names]

    def per_row(field: str) -> np.ndarray:
        return np.array([getattr(p, field) for p in profiles], dtype=float)[index]

    index = rng.choice(len(names), size=n, p=_model_shares(profiles))
    model = np.asarray(names, dtype=object)[index]
    year = _draw_years(rng, index, names)
    age = SNAPSHOT_YEAR - year
    transmission = _split_shares(
        rng.random(n), per_row("automatic"), per_row("semi_auto"),
        ("Automatic", "Semi-Auto", "Manual"),
    )  # fmt: skip
    variants = _variant_table(tuple(names))
    variant = variants.ids[index, _pick(rng, variants.shares, index)]
    engine, fuel = variants.engine[variant], variants.fuel[variant]
    mileage_table = np.array(_MILEAGE_BY_AGE)
    mean_miles, cv = mileage_table[np.minimum(age, len(_MILEAGE_BY_AGE) - 1)].T
    shape = 1 / cv**2
    mileage = np.maximum(1, np.rint(rng.gamma(shape, mean_miles / shape)) * shift.mileage_scale)
    mileage = np.rint(np.minimum(mileage, 999_999)).astype(np.int64)
    is_diesel, is_hybrid = fuel == "Diesel", fuel == "Hybrid"
    mpg = _draw_mpg(rng, variants, variant, age, transmission != "Manual")
    tax = np.empty(n, dtype=np.int64)
    flat = year >= FLAT_TAX_FROM_YEAR
    for rows, shares in ((flat & is_hybrid, _TAX_FLAT_HYBRID), (flat & ~is_hybrid, _TAX_FLAT)):
        tax[rows] = _choose(rng, shares, int(rows.sum())).astype(np.int64)
    band = np.searchsorted([edge for edge, _ in _TAX_BY_MPG], mpg, side="right")
    for b, (_, shares) in enumerate(_TAX_BY_MPG):
        rows = ~flat & (band == b)
        tax[rows] = _choose(rng, shares, int(rows.sum())).astype(np.int64)
    k = _LOG_PRICE
    log_price = (
        per_row("log_price_base") + k["age"] * age + k["age2"] * np.minimum(age, 15) ** 2
        + k["log_kmiles"] * np.log1p(mileage / 1000) + k["engine"] * engine
        + k["Automatic"] * (transmission == "Automatic")
        + k["Semi-Auto"] * (transmission == "Semi-Auto")
        + k["Diesel"] * is_diesel + k["Hybrid"] * is_hybrid
        + rng.normal(0, _LOG_PRICE_NOISE, n)
    )  # fmt: skip
    factor = np.array([shift.price_factors.get(m, 1.0) for m in names])[index]
    price = np.maximum(495, np.rint(np.exp(log_price) * factor / 5) * 5).astype(np.int64)
    engine = np.where(rng.random(n) < _ENGINE_UNKNOWN_SHARE, 0.0, engine)
    columns = {
        "model": model, "year": year, "price": price, "transmission": transmission,
        "mileage": mileage, "fuelType": fuel, "tax": tax, "mpg": mpg, "engineSize": engine,
    }  # fmt: skip
    return pd.DataFrame(columns)


def _model_shares(profiles: list[_ModelProfile]) -> np.ndarray:
    shares = np.array([p.share for p in profiles], dtype=float)
    return shares / shares.sum()


# Ways a listing arrives broken in the wild; each breaks at least one feature so
# feature_problems() flags it (the price is the target, not a feature). A null or 0
# engine size is not among them: it is valid and means "unknown".
_REQUIRED_FEATURES = tuple(c.name for c in FEATURE_COLUMNS if not c.nullable)


# fmt: off
_CORRUPTIONS: tuple[tuple[str, Any], ...] = (
    ("null feature", lambda r, rng, today: r.update(
        {_REQUIRED_FEATURES[rng.integers(len(_REQUIRED_FEATURES))]: None})),
    ("negative mileage", lambda r, rng, today: r.update(mileage=-int(rng.integers(1, 50_000)))),
    ("future year", lambda r, rng, today: r.update(year=max_year(today) + int(rng.integers(1, 40)))),  # noqa: E501
    ("engineSize in cc", lambda r, rng, today: r.update(engineSize=float(rng.integers(998, 2300)))),
    ("blank model", lambda r, rng, today: r.update(model=" " * int(rng.integers(0, 3)))),
    ("ancient year", lambda r, rng, today: r.update(year=int(rng.integers(1900, MIN_YEAR)))),
    ("negative tax", lambda r, rng, today: r.update(tax=-int(rng.integers(1, 300)))),
    ("zero mpg", lambda r, rng, today: r.update(mpg=0.0)),
    ("blank fuelType", lambda r, rng, today: r.update(fuelType="")),
    ("huge mileage", lambda r, rng, today: r.update(mileage=int(rng.integers(10**6 + 1, 10**7)))),
)


# fmt: on
CORRUPTION_KINDS: tuple[str, ...] = tuple(name for name, _ in _CORRUPTIONS)


def generate_listings(
    n: int, seed: int, invalid: int = 0, today: dt.date | None = None, shift: Shift | None = None
) -> pd.DataFrame:
    """``n`` realistic Ford listings (schema columns), reproducible for a given seed.

    ``invalid`` of them (at random positions) are broken in rotating ways (see
    ``CORRUPTION_KINDS``) so that ``feature_problems`` flags each one; the others are
    all valid. Integer columns become nullable ``Int64`` only when a null was injected.
    """
    if n < 0 or not 0 <= invalid <= n:
        raise DataError(f"need 0 <= invalid <= n and n >= 0, got n={n}, invalid={invalid}")
    rng = np.random.default_rng(seed)
    frame = _valid_listings(rng, n, shift)
    if not invalid:
        return with_schema_dtypes(frame)
    broken = sorted(int(b) for b in rng.choice(n, size=invalid, replace=False))
    records = frame.astype(object).to_dict("records")
    for i, row in enumerate(broken):
        _CORRUPTIONS[i % len(_CORRUPTIONS)][1](records[row], rng, today)
    return with_schema_dtypes(pd.DataFrame.from_records(records))


def generate_listing_records(
    n: int, seed: int, invalid: int = 0, today: dt.date | None = None, shift: Shift | None = None
) -> list[dict[str, Any]]:
    """``generate_listings`` as plain Python dicts (None for nulls), e.g. for INSERTs."""
    return listing_records(generate_listings(n, seed, invalid, today, shift))
