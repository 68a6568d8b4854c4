"""Loading a stored model as the price model of its kind (XGBoost or online)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from streaming_ml.models import online
from streaming_ml.models.booster import PriceModel
from streaming_ml.models.protocol import PriceModelProtocol
from streaming_ml.models.store import check_servable, get_bento_model

if TYPE_CHECKING:
    import bentoml

logger = logging.getLogger(__name__)


def from_bento_model(bento_model: bentoml.Model) -> PriceModelProtocol:
    """The stored model behind the price model's interface: an XGBoost ``PriceModel``, or
    an ``online.OnlinePriceModel`` for a model of kind ``online``."""

    check_servable(bento_model)
    if online.is_online(bento_model):
        return online.OnlinePriceModel.from_bento_model(bento_model)
    return PriceModel.from_bento_model(bento_model)


def load_price_model(tag: str) -> PriceModelProtocol:
    model = from_bento_model(get_bento_model(tag))
    logger.info("loaded price model", extra={"model_tag": model.tag})
    return model
