"""A person inserts a listing through Adminer in a real browser; it gets priced."""

from __future__ import annotations

import random

import pytest

from streaming_ml.config import Settings
from tests.fixtures.adminer import KUGA, insert_through_adminer
from tests.integration.pipeline import (
    direct_prices,
    dsn_of,
    listings,
    pipeline_settings,
    query,
    running_bridge,
    wait_for_predictions,
    wait_until,
)

pytestmark = pytest.mark.integration


def test_row_inserted_in_adminer_gets_a_prediction(
    stack_settings: Settings, prediction_service: str
) -> None:
    from streaming_ml.stack.secrets import APP_ROLE, load_passwords

    settings = pipeline_settings(stack_settings, prediction_service)
    dsn = dsn_of(settings)
    server = f"{settings.host}:{settings.postgres_port}"
    adminer = f"http://{settings.host}:{settings.adminer_port}/"
    mileage = random.randint(10_000, 99_999)
    listing = {**KUGA, "mileage": str(mileage)}

    # Only a row newer than this can be the one typed in the browser (the mileage alone
    # could match an earlier test's row on a reused stack).
    before = query(dsn, f"SELECT coalesce(max(id), 0) AS id FROM public.{settings.listings_table}")
    last_id_before = int(before[0]["id"])

    with running_bridge(settings):
        login = (APP_ROLE, load_passwords(settings.state_dir)[APP_ROLE])
        insert_through_adminer(
            adminer, server, login, settings.database, settings.listings_table, listing
        )
        found = wait_until(
            lambda: query(
                dsn,
                f"SELECT id FROM public.{settings.listings_table} "
                "WHERE id > %s AND mileage = %s AND model = 'Kuga'",
                (last_id_before, mileage),
            ),
            30,
            "the row inserted through Adminer",
        )
        assert len(found) == 1, f"expected one new row from Adminer, found {found}"
        listing_id = int(found[0]["id"])
        prediction = wait_for_predictions(dsn, settings.predictions_table, [listing_id])
    row = listings(dsn, settings.listings_table, [listing_id])[listing_id]
    assert prediction[listing_id]["predicted_price"] == direct_prices(prediction_service, [row])[0]
