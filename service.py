"""BentoML service pricing Ford listings with the trained XGBoost model.

Serve it from the repository root with ``bentoml serve`` (or
``streaming-ml serve``). Validation and the predict glue live in
``streaming_ml.serving``; this file only wires them to HTTP routes.
"""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

import bentoml
from bentoml.validators import ContentType

from streaming_ml.config import Settings
from streaming_ml.log import configure_package_logging
from streaming_ml.models.store import check_servable, get_bento_model
from streaming_ml.service.api import (
    BatchPrediction,
    ExplainedPrice,
    ExplainRequest,
    ListingExplanation,
    PredictBatchRequest,
    PredictRequest,
)
from streaming_ml.service.guard import RequestGuard
from streaming_ml.service.lineup import initial_lineup
from streaming_ml.service.predictor import ArmMetrics, Predictor

# service.py is an entry point: the only place the service reads the environment.
SETTINGS = Settings()
configure_package_logging(SETTINGS.log_level, SETTINGS.log_json)
if not SETTINGS.model_follow:
    # A pinned model that is not stored (or takes other inputs) stops `bentoml serve` here,
    # at import, with the `streaming-ml train` hint; in a worker it would crash and be
    # restarted in a loop.
    check_servable(get_bento_model(SETTINGS.model_tag))

T = TypeVar("T")
# A declared media type spares BentoML from deriving it from the output's JSON
# schema on every response (an eighth of a one-row /predict's CPU time).
JSON = Annotated[T, ContentType("application/json")]


# One worker leaves the second core to the bridge; the APIs are async and
# offload big batches to threads themselves (see serving.Predictor). Plain
# `bentoml serve` binds the configured loopback address, never 0.0.0.0.
@bentoml.service(
    workers=1,
    traffic={"timeout": 30},
    http={"host": SETTINGS.host, "port": SETTINGS.service_port},
)
class PricePredictor:
    def __init__(self) -> None:
        # Loaded once per worker, never per request; the registry follower (if any)
        # loads new models on its own thread and swaps them in between requests.
        metrics = ArmMetrics()
        lineup, follower = initial_lineup(SETTINGS)
        self.predictor = Predictor(
            lineup,
            max_rows=SETTINGS.service_max_rows,
            max_explained_rows=SETTINGS.service_max_explained_rows,
            metrics=metrics,
            status=follower.status if follower is not None else None,
        )
        if follower is not None:
            follower.on_swap = self.predictor.swap
            follower.on_refused = lambda refusal: metrics.refusals.labels(
                refusal.tag, refusal.cause
            ).inc()
            follower.start()

    # The positional-only parameter makes the whole JSON body one request model
    # (BentoML would otherwise map each top-level key to a parameter), so the
    # model's extra="ignore" drops `price` and any other extra key.
    @bentoml.api(route="/predict")
    async def predict(
        self,
        request: PredictRequest,  # type: ignore[valid-type]
        /,
    ) -> JSON[list[float] | list[ExplainedPrice]]:
        """Price listings sent as columns; returns one price (GBP) per row, in row order
        (with `"explain": true`, each price with its base and per-feature contributions)."""
        return await self.predictor.handle_predict(request)

    @bentoml.api(route="/predict_batch")
    async def predict_batch(self, request: PredictBatchRequest, /) -> JSON[list[BatchPrediction]]:
        """Price listings sent as records (the bridge's micro-batches), in input order
        (with `"explain": true`, each price, the shadow's too, with its explanation)."""
        return await self.predictor.handle_predict_batch(request)

    @bentoml.api(route="/explain")
    async def explain(self, request: ExplainRequest, /) -> JSON[ListingExplanation]:
        """Why one listing costs what it does: its price by every model that prices it
        (its arm, the shadow), as a base price plus one amount in GBP per feature."""
        return await self.predictor.handle_explain(request)

    @bentoml.api(route="/model_info")
    async def model_info(self) -> JSON[dict[str, Any]]:
        """The champion's tag, creation time, labels and metadata; every arm; and the
        registry follower's state (refused models with their reasons)."""
        return self.predictor.card


PricePredictor.add_asgi_middleware(
    RequestGuard,
    max_body_bytes=SETTINGS.service_max_body_bytes,
    max_concurrency=SETTINGS.service_max_concurrency,
)
