"""What `streaming-ml explain` shows (streaming_ml.explain), from a made-up answer."""

from typing import Any

import pytest
from rich.console import Console

from streaming_ml.errors import ServiceUnavailableError
from streaming_ml.service.explain import BAR_WIDTH, ExplainedListing, render, request_explanation
from tests.fixtures.explain import arm_explanation
from tests.fixtures.ports import free_port

LISTING = {
    "id": 42, "model": "Focus", "year": 2018, "price": 12495, "transmission": "Manual",
    "mileage": 20000, "fuelType": "Petrol", "tax": 145, "mpg": 55.4, "engineSize": None,
}  # fmt: skip


def explanation(arm: str, tag: str, amounts: dict[str, float]) -> dict[str, Any]:
    return arm_explanation(arm, tag, 11_000.0, amounts, LISTING)


AMOUNTS = {"year": 1500.0, "mileage": -750.0, "engineSize": 0.0, "model": 20.0}


def shown(explained: ExplainedListing) -> str:
    console = Console(record=True, width=80, color_system=None)
    console.print(render(explained))
    return console.export_text()


def words(text: str) -> str:
    """The text with line wraps undone."""
    return " ".join(text.split())


def test_each_feature_gets_a_bar_on_its_side_of_the_axis_scaled_to_the_largest() -> None:
    answer = {"explanations": [explanation("champion", "ford_price:a", AMOUNTS)]}
    written = {"champion": {"predicted_price": 11_770.0, "model_tag": "ford_price:a"}}

    text = shown(ExplainedListing(42, LISTING, written, answer))

    lines = {line.split()[0]: line for line in text.splitlines() if line.strip()}
    assert "+£1,500" in lines["year"] and "│" + "█" * BAR_WIDTH in lines["year"]
    assert "-£750" in lines["mileage"] and "█" * (BAR_WIDTH // 2) + "│" in lines["mileage"]
    assert "│▏" in lines["model"], "a small amount still shows"
    assert "unknown" in lines["engineSize"] and "█" not in lines["engineSize"]
    assert "£11,000" in lines["base"] and "£11,770" in text
    assert "Listing 42" in text and "asking £12,495" in text and "mileage 20,000" in text


def test_price_table_flags_a_price_written_by_another_model_and_a_missing_arm() -> None:
    answer = {
        "explanations": [
            explanation("champion", "ford_price:new", AMOUNTS),
            explanation("shadow", "ford_price:s", AMOUNTS),
        ]
    }
    written = {"champion": {"predicted_price": 10_000.0, "model_tag": "ford_price:old"}}

    text = shown(ExplainedListing(42, LISTING, written, answer))

    assert "£10,000 *" in text
    assert "written by ford_price:old" in text and "ford_price:new now" in words(text)
    shadow_row = next(line for line in text.splitlines() if line.strip("│ ").startswith("shadow"))
    assert "not yet" in shadow_row
    assert text.count("Why £11,770") == 2


def test_a_written_arm_that_is_no_longer_served_is_still_listed() -> None:
    answer = {"explanations": [explanation("champion", "ford_price:a", AMOUNTS)]}
    written = {
        "champion": {"predicted_price": 11_770.0, "model_tag": "ford_price:a"},
        "challenger": {"predicted_price": 9_000.0, "model_tag": "ford_price:b"},
    }

    text = shown(ExplainedListing(42, LISTING, written, answer))

    assert "no challenger is served now" in words(text)


def test_a_reference_explanation_starts_from_the_other_listing() -> None:
    against = dict(explanation("champion", "ford_price:a", {"mileage": -750.0}), method="reference")
    text = shown(ExplainedListing(42, LISTING, {}, {"explanations": [against]}, reference_id=7))

    assert "Against listing 7" in words(text)
    assert any(line.strip().startswith("listing 7") for line in text.splitlines())


def test_a_service_that_is_not_there_is_named_with_the_fix() -> None:
    url = f"http://127.0.0.1:{free_port()}"

    with pytest.raises(ServiceUnavailableError, match=r"not answering.*streaming-ml serve"):
        request_explanation(url, {"listing": {}}, timeout_s=2, what="listing 1")


def test_the_whole_pounds_shown_add_up_to_the_price_shown() -> None:
    # Each amount rounded on its own would give 11,000 + 3 x 1 = 11,003 for a price of
    # £11,002 (11,001.5 rounds up): the chart must add up as printed.
    amounts = {"year": 0.5, "mileage": 0.5, "model": 0.5}
    answer = {"explanations": [explanation("champion", "ford_price:a", amounts)]}
    written = {"champion": {"predicted_price": 11_001.5, "model_tag": "ford_price:a"}}

    text = shown(ExplainedListing(42, LISTING, written, answer))

    lines = {line.split()[0]: line for line in text.splitlines() if line.strip()}
    printed = [int(lines[name].split("£")[1].split()[0].replace(",", "")) for name in amounts]
    base = int(lines["base"].split("£")[1].split()[0].replace(",", ""))
    price = int(lines["="].split("£")[1].split()[0].replace(",", ""))
    assert base + sum(printed) == price == 11_002
