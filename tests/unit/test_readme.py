"""The README is the user's manual: it must name every setting and both Quick start commands."""

from streaming_ml.config import REPO_ROOT, Settings

README = (REPO_ROOT / "README.md").read_text()


def test_every_setting_is_documented() -> None:
    missing = [
        f"SML_{name.upper()}"
        for name in Settings.model_fields
        if f"`SML_{name.upper()}`" not in README
    ]
    assert missing == [], f"add these settings to the README's table: {missing}"


def test_quick_start_has_demo_and_test() -> None:
    quick_start = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    assert "make demo" in quick_start
    assert "make test" in quick_start


def test_documented_pages_exist() -> None:
    for page in ("docs/model.md", "docs/performance.md", "docs/compose.md"):
        assert page in README
        assert (REPO_ROOT / page).is_file(), page
