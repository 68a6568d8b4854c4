"""Per-feature contributions to a price, in pounds, that add up to the price exactly.

Two decompositions, both pure numpy (docs/model.md, "Explaining a price", says why):

- ``to_pounds``: XGBoost's TreeSHAP contributions (``pred_contribs``) live in the model's
  output space, log price, and sum to the margin. Their pounds version splits the gap
  ``price - exp(base)`` in proportion to the log contributions, which is what integrating
  the price along the straight path from the base to the listing gives each feature
  (Aumann-Shapley): exact, every amount keeps its log contribution's sign, and the scale
  factor stays between ``exp(base)`` and the price, so it never blows up.
- ``against_reference``: the Shapley value of the game "price of the listing with the
  features in S taken from it and the rest from a reference listing", computed exactly
  over the features that differ. It explains a price difference between two listings,
  and a feature on which they agree gets exactly nothing.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np


def by_feature(
    contributions: np.ndarray, inputs: Sequence[str], feature_of: Mapping[str, str],
    features: Sequence[str],
) -> np.ndarray:  # fmt: skip
    """``(rows, len(features))``: each input's column added to the feature it belongs to."""
    owner = np.zeros((len(inputs), len(features)))
    for row, name in enumerate(inputs):
        owner[row, features.index(feature_of[name])] = 1.0
    return np.asarray(contributions, dtype=np.float64) @ owner


def _reconciled(contributions: np.ndarray, totals: np.ndarray) -> np.ndarray:
    """``contributions`` moved by the least that makes each row sum to its total.

    XGBoost sums contributions and margins in float32, so they disagree by ~1e-6 of the
    margin; the served price is the truth. The difference is spread in proportion to
    each contribution's size, which keeps every sign while it is smaller than their sum.
    """
    contributions = np.asarray(contributions, dtype=np.float64)
    residual = totals - contributions.sum(axis=1)
    size = np.abs(contributions)
    scale = size.sum(axis=1, keepdims=True)
    even = np.full_like(contributions, 1.0 / max(contributions.shape[1], 1))
    weights = np.divide(size, scale, out=even, where=scale > 0)
    return contributions + residual[:, None] * weights


def to_pounds(
    log_contributions: np.ndarray, log_base: np.ndarray, prices: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Base prices ``(rows,)`` and pounds ``(rows, features)`` from log-price contributions,
    so that ``base + amounts.sum(axis=1) == prices`` (to float64 rounding).

    Each row's log gap ``L = log(price) - base`` is shared in proportion to the
    contributions: ``amount_j = c_j * exp(base) * expm1(L) / L``, so the amounts sum to
    ``exp(base) * expm1(L) = price - exp(base)``.
    """
    log_base = np.asarray(log_base, dtype=np.float64)
    prices = np.asarray(prices, dtype=np.float64)
    gaps = np.log(prices) - log_base
    shares = _reconciled(log_contributions, gaps)
    base = np.exp(log_base)
    # The divided difference of exp between base and log(price): no cancellation near
    # a zero gap (expm1), and its limit exp(base) at exactly zero.
    growth = np.divide(np.expm1(gaps), gaps, out=np.ones_like(gaps), where=gaps != 0)
    return base, shares * (base * growth)[:, None]


def in_pounds(
    contributions: np.ndarray, base: np.ndarray, prices: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """As ``to_pounds`` for a model whose output is the price itself (no transform)."""
    base = np.asarray(base, dtype=np.float64)
    prices = np.asarray(prices, dtype=np.float64)
    return base, _reconciled(contributions, prices - base)


def largest_first(amounts: Mapping[str, float]) -> list[tuple[str, float]]:
    """``(feature, amount)`` pairs by magnitude, largest first; equal magnitudes keep
    their order in ``amounts`` (the sort is stable), so /explain and the stream agree."""
    return sorted(amounts.items(), key=lambda item: -abs(item[1]))


def whole_pounds(parts: Sequence[float], total: float) -> list[int]:
    """``parts`` (a base and its amounts, adding up to ``total``) in whole pounds that add
    up to ``total`` rounded half up, as a page shows a price.

    Rounding each part on its own can miss the rounded total by up to half a pound a part,
    so a chart of ten would not add up as shown. Each part goes to its floor or its
    ceiling instead, and the parts nearest their ceiling take it (largest remainder);
    equal remainders go in the order given.
    """
    floors = [math.floor(part) for part in parts]
    short = math.floor(total + 0.5) - sum(floors)
    if not 0 <= short <= len(parts):
        raise ValueError(f"parts adding up to {sum(parts)} cannot round to a total of {total}")
    nearest_ceiling = sorted(range(len(parts)), key=lambda i: floors[i] - parts[i])
    for i in nearest_ceiling[:short]:
        floors[i] += 1
    return floors


def shapley_weights(players: int) -> np.ndarray:
    """``w[k] = k! (n - k - 1)! / n!``: the weight of a coalition of k others."""
    return np.array(
        [
            math.factorial(k) * math.factorial(players - k - 1) / math.factorial(players)
            for k in range(players)
        ]
    )


def against_reference(
    price: Callable[[list[dict[str, Any]]], np.ndarray],
    listing: Mapping[str, Any],
    reference: Mapping[str, Any],
    features: Sequence[str],
) -> tuple[float, float, np.ndarray]:
    """(reference price, listing price, pounds per feature) with
    ``reference price + amounts.sum() == listing price``.

    ``price`` prices a list of listings (the model's record path, so derived inputs are
    rebuilt for every mixed listing). Only the features that differ play: a feature on
    which the two listings agree is a null player, whose Shapley value is zero and whose
    absence leaves the others' values unchanged, so it gets exactly 0.0.
    """
    players = [i for i, name in enumerate(features) if listing.get(name) != reference.get(name)]
    n = len(players)  # 2^n listings to price: 256 at most for the 8 listing features
    # Coalition c takes player k from the listing when bit k of c is set.
    coalitions = (np.arange(2**n)[:, None] >> np.arange(n)) & 1
    mixed = []
    for bits in coalitions:
        row = {name: reference.get(name) for name in features}
        for bit in np.flatnonzero(bits):
            name = features[players[bit]]
            row[name] = listing.get(name)
        mixed.append(row)
    values = np.asarray(price(mixed), dtype=np.float64)
    amounts = np.zeros(len(features))
    weights = shapley_weights(n) if n else np.zeros(0)
    sizes = coalitions.sum(axis=1)
    for k, feature in enumerate(players):
        without = np.flatnonzero(coalitions[:, k] == 0)
        gains = values[without | (1 << k)] - values[without]
        amounts[feature] = float(np.dot(weights[sizes[without]], gains))
    return float(values[0]), float(values[-1]), amounts
