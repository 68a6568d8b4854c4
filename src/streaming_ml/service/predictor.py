"""The predictor behind ``service.py``: the served arms, their prices, explanations and metrics."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import anyio

from streaming_ml.models.contributions import against_reference, largest_first
from streaming_ml.schema.fields import LISTING_ID_KEY
from streaming_ml.schema.listing import FEATURES

if TYPE_CHECKING:
    from starlette.responses import Response

    from streaming_ml.models.protocol import Explained, PriceModelProtocol
    from streaming_ml.service.lineup import Arm, Lineup, ServedModel
import bentoml
from starlette.responses import JSONResponse

from streaming_ml.service.api import (
    DEFAULT_MAX_EXPLAINED_ROWS,
    DEFAULT_MAX_ROWS,
    INLINE_MAX_ROWS,
    ArmExplanation,
    BatchPrediction,
    ExplainedPrice,
    ExplainRequest,
    FeatureContribution,
    ListingExplanation,
    PredictBatchRequest,
    PriceExplanation,
    ShadowPrediction,
    _ColumnsBody,
)
from streaming_ml.service.guard import _refuse
from streaming_ml.service.validation import (
    InvalidRequestError,
    listing_problems,
    validate_columns,
    validate_records,
)


class ArmMetrics:
    """Per-arm Prometheus metrics on the service's /metrics (BentoML's registry)."""

    def __init__(self) -> None:

        labels = ["arm", "model_tag"]
        self.rows = bentoml.metrics.Counter(
            name="sml_service_arm_rows", documentation="Rows priced per arm", labelnames=labels
        )
        self.requests = bentoml.metrics.Counter(
            name="sml_service_arm_requests",
            documentation="Requests that reached each arm",
            labelnames=labels,
        )
        self.errors = bentoml.metrics.Counter(
            name="sml_service_arm_errors",
            documentation="Model failures per arm",
            labelnames=labels,
        )
        self.latency = bentoml.metrics.Histogram(
            name="sml_service_arm_latency_seconds",
            documentation="Model time per request and arm",
            labelnames=labels,
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
        )
        self.refusals = bentoml.metrics.Counter(
            name="sml_service_model_refusals",
            documentation="Models refused by the hot swap: not signed by the registry's "
            "key (untrusted), failed to load (load) or failed the canary (canary)",
            labelnames=["model_tag", "cause"],
        )
        self.swaps = bentoml.metrics.Counter(
            name="sml_service_model_swaps", documentation="Lineup changes applied"
        )


class Predictor:
    """Validates requests and prices them with the current lineup (``streaming_ml.lineup``).

    Each request reads ``self.lineup`` once: a hot swap replaces the attribute, and a
    request already running finishes on the models it started with; so does its
    explanation, which comes from the very model that priced the row."""

    def __init__(
        self,
        lineup: Lineup,
        max_rows: int = DEFAULT_MAX_ROWS,
        metrics: ArmMetrics | None = None,
        status: Callable[[], Mapping[str, Any]] | None = None,
        max_explained_rows: int = DEFAULT_MAX_EXPLAINED_ROWS,
    ) -> None:
        self.lineup = lineup
        self.max_rows = max_rows
        self.max_explained_rows = max_explained_rows
        self.metrics = metrics
        self._status = status

    def swap(self, lineup: Lineup) -> None:
        self.lineup = lineup
        if self.metrics is not None:
            self.metrics.swaps.inc()

    @property
    def card(self) -> dict[str, Any]:
        """``/model_info``: the champion's card at the top level (as before experiments),
        every arm, and what the registry follower knows."""
        lineup = self.lineup
        info = {**lineup.champion.card, "arms": lineup.describe()}
        if self._status is not None:
            info["registry"] = dict(self._status())
        return info

    def _call(
        self,
        served: ServedModel,
        arm: str,
        records: Sequence[Mapping[str, Any]],
        work: Callable[[PriceModelProtocol, Sequence[Mapping[str, Any]]], Any],
    ) -> Any:
        """``work(model, records)`` with the arm's metrics around it."""
        labels = (arm, served.tag)
        started = time.perf_counter()
        try:
            result = work(served.model, records)
        except Exception:
            if self.metrics is not None:
                self.metrics.errors.labels(*labels).inc()
            raise
        if self.metrics is not None:
            self.metrics.latency.labels(*labels).observe(time.perf_counter() - started)
            self.metrics.requests.labels(*labels).inc()
            self.metrics.rows.labels(*labels).inc(len(records))
        return result

    def _price(
        self, served: ServedModel, arm: str, records: Sequence[Mapping[str, Any]], explain: bool
    ) -> tuple[list[float], list[PriceExplanation] | None]:
        """Prices, and with ``explain`` each row's explanation by the same model."""
        if not explain:
            prices = self._call(served, arm, records, _predict)
            return prices, None
        explained: Explained = self._call(served, arm, records, _explain)
        rows = [PriceExplanation(**explained.row(i)) for i in range(len(records))]
        return explained.prices.tolist(), rows

    def predict_columns(self, request: _ColumnsBody) -> list[float] | list[ExplainedPrice]:
        """``/predict``: one price per row of a PredictRequest, in row order (champion);
        with ``explain``, each price with its explanation."""
        columns = {name: getattr(request, name) for name in FEATURES}
        if validate_columns(columns) == 0:
            return []
        # Rows as dicts feed the model's record path; cheaper than a DataFrame for
        # the small requests this endpoint sees.
        rows = zip(*columns.values(), strict=True)
        records = [dict(zip(FEATURES, row, strict=True)) for row in rows]
        prices, explanations = self._price(
            self.lineup.champion, "champion", records, request.explain
        )
        if explanations is None:
            return prices
        return [
            ExplainedPrice(predicted_price=price, explanation=explanation)
            for price, explanation in zip(prices, explanations, strict=True)
        ]

    def predict_records(
        self, records: Sequence[Mapping[str, Any]], explain: bool = False
    ) -> list[BatchPrediction]:
        """``/predict_batch``: price, tag, name, version and arm per record, in order; with
        a shadow model, each item also carries the shadow's price under ``shadow``; with
        ``explain``, each price (the shadow's too) has its ``explanation``."""
        validate_records(records)
        if not records:
            return []
        lineup = self.lineup
        arms = [lineup.arm_of(record.get(LISTING_ID_KEY)) for record in records]
        prices: list[float] = [0.0] * len(records)
        explanations: list[PriceExplanation | None] = [None] * len(records)
        for arm in sorted(set(arms)):
            rows = [i for i, a in enumerate(arms) if a == arm]
            chosen = records if len(rows) == len(records) else [records[i] for i in rows]
            priced, explained = self._price(lineup.model_of(arm), arm, chosen, explain)
            for k, i in enumerate(rows):
                prices[i] = priced[k]
                explanations[i] = explained[k] if explained is not None else None
        answer = [
            BatchPrediction(
                predicted_price=price,
                model_tag=(served := lineup.model_of(arm)).tag,
                model_name=served.name,
                model_version=served.version,
                arm=arm,
            )
            for price, arm in zip(prices, arms, strict=True)
        ]
        if explain:
            for item, explanation in zip(answer, explanations, strict=True):
                assert explanation is not None
                item["explanation"] = explanation
        if lineup.shadow is not None:
            shadow_tag = lineup.shadow.tag
            priced, explained = self._price(lineup.shadow, "shadow", records, explain)
            for i, (item, price) in enumerate(zip(answer, priced, strict=True)):
                item["shadow"] = ShadowPrediction(predicted_price=price, model_tag=shadow_tag)
                if explained is not None:
                    item["shadow"]["explanation"] = explained[i]
        return answer

    def explain_listing(self, request: ExplainRequest) -> ListingExplanation:
        """``/explain``: the listing's decomposition by the model of its arm, then by the
        shadow; against ``request.reference`` when one is given."""
        listing = {name: request.listing.get(name) for name in FEATURES}
        problems = listing_problems(listing, "listing")
        reference = None
        if request.reference is not None:
            reference = {name: request.reference.get(name) for name in FEATURES}
            problems += listing_problems(reference, "reference")
        if problems:
            raise InvalidRequestError(problems)
        lineup = self.lineup
        arms: list[Arm] = [lineup.arm_of(request.listing_id)]
        if lineup.shadow is not None:
            arms.append("shadow")
        answer = ListingExplanation(
            listing=listing,
            listing_id=request.listing_id,
            explanations=[
                self._explain_arm(lineup.model_of(arm), arm, listing, reference) for arm in arms
            ],
        )
        if reference is not None:
            answer["reference"] = reference
        return answer

    def _explain_arm(
        self,
        served: ServedModel,
        arm: str,
        listing: dict[str, Any],
        reference: dict[str, Any] | None,
    ) -> ArmExplanation:
        if reference is None:
            explained: Explained = self._call(served, arm, [listing], _explain)
            base, price, amounts = explained.base[0], explained.prices[0], explained.amounts[0]
        else:

            def against(model: PriceModelProtocol, rows: Sequence[Mapping[str, Any]]) -> Any:
                return against_reference(model.predict_records, rows[0], reference, FEATURES)

            base, price, amounts = self._call(served, arm, [listing], against)
        ranked = largest_first(dict(zip(FEATURES, map(float, amounts), strict=True)))
        return ArmExplanation(
            arm=arm,
            model_tag=served.tag,
            model_name=served.name,
            model_version=served.version,
            predicted_price=float(price),
            base_price=float(base),
            method="tree_shap" if reference is None else "reference",
            contributions=[
                FeatureContribution(feature=name, value=listing[name], amount=amount)
                for name, amount in ranked
            ],
        )

    # The HTTP side. A small request costs less to price than a hop to a worker
    # thread, so it is priced on the event loop; a big one, or any explained one
    # (a few hundred times the work per row), goes to a thread so /readyz and
    # /metrics keep answering while it runs.

    async def handle_predict(self, request: _ColumnsBody) -> list[Any] | Response:
        rows = len(getattr(request, FEATURES[0]))
        return await self._answer(self.predict_columns, request, rows, request.explain)

    async def handle_predict_batch(self, request: PredictBatchRequest) -> list[Any] | Response:
        def price(records: list[dict[str, Any]]) -> list[BatchPrediction]:
            return self.predict_records(records, request.explain)

        return await self._answer(price, request.records, len(request.records), request.explain)

    async def handle_explain(self, request: ExplainRequest) -> ListingExplanation | Response:
        return await self._answer(self.explain_listing, request, 1, explain=True)

    async def _answer(
        self, price: Callable[[Any], Any], payload: Any, rows: int, explain: bool
    ) -> Any:
        if explain and self.max_explained_rows < self.max_rows:
            limit, what = self.max_explained_rows, "explained rows"
            setting = "SML_SERVICE_MAX_EXPLAINED_ROWS"
        else:
            limit, what, setting = self.max_rows, "rows", "SML_SERVICE_MAX_ROWS"
        if rows > limit:
            return _refuse(
                413,
                f"{rows} {what} is over the limit of {limit} per request ({setting}); "
                "split the request",
                {},
            )
        return await _answer(price, payload, inline=rows <= INLINE_MAX_ROWS and not explain)


def _predict(model: PriceModelProtocol, records: Sequence[Mapping[str, Any]]) -> list[float]:
    return model.predict_records(records).tolist()


def _explain(model: PriceModelProtocol, records: Sequence[Mapping[str, Any]]) -> Explained:
    return model.explain_records(records)


async def _answer(price: Callable[[Any], Any], payload: Any, inline: bool) -> Any:
    """``price(payload)``, or the 400 reply naming every bad field."""
    try:
        if inline:
            return price(payload)
        return await anyio.to_thread.run_sync(price, payload)
    except InvalidRequestError as error:
        return JSONResponse(error.to_json(), status_code=400)
