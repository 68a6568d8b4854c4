"""A person inserts a listing through Adminer in a real browser; it gets priced."""

from __future__ import annotations

import random
import shutil

import pytest

from streaming_ml.config import Settings
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

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


def test_row_inserted_in_adminer_gets_a_prediction(
    stack_settings: Settings, prediction_service: str
) -> None:
    assert shutil.which(CHROMIUM), "chromium is installed by `streaming-ml stack install`"
    from playwright.sync_api import sync_playwright

    from streaming_ml.stack.secrets import APP_ROLE, load_passwords

    settings = pipeline_settings(stack_settings, prediction_service)
    dsn = dsn_of(settings)
    server = f"{settings.host}:{settings.postgres_port}"
    adminer = f"http://{settings.host}:{settings.adminer_port}/"
    mileage = random.randint(10_000, 99_999)
    listing = {
        "model": "Kuga", "year": "2018", "price": "17250", "transmission": "Automatic",
        "mileage": str(mileage), "fuelType": "Diesel", "tax": "145", "mpg": "54.3",
        "engineSize": "2.0",
    }  # fmt: skip

    # Only a row newer than this can be the one typed in the browser (the mileage alone
    # could match an earlier test's row on a reused stack).
    before = query(dsn, f"SELECT coalesce(max(id), 0) AS id FROM public.{settings.listings_table}")
    last_id_before = int(before[0]["id"])

    with running_bridge(settings), sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page()
            page.set_default_timeout(30_000)
            page.goto(adminer)
            page.select_option("select[name='auth[driver]']", "pgsql")
            page.fill("input[name='auth[server]']", server)
            page.fill("input[name='auth[username]']", APP_ROLE)
            page.fill("input[name='auth[password]']", load_passwords(settings.state_dir)[APP_ROLE])
            page.fill("input[name='auth[db]']", settings.database)
            page.click("input[type=submit][value=Login]")
            page.wait_for_selector("#logins, #tables, p.logout, #menu", state="attached")
            assert "Invalid credentials" not in page.content()

            page.goto(
                f"{adminer}?pgsql={server}&username={APP_ROLE}&db={settings.database}"
                f"&ns=public&edit={settings.listings_table}"
            )
            for name, value in listing.items():
                field = page.locator(f"[name='fields[{name}]']")
                field.fill(value)
                # Leaving the field fires "change", which flips Adminer's per-field
                # function select from NULL to the typed value, as it does for a person.
                field.press("Tab")
            page.click("input[type=submit][value=Save]")
            page.wait_for_selector("div.message, div.error", state="attached")
            assert not page.query_selector("div.error"), page.inner_text("div.error")
        finally:
            browser.close()

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
