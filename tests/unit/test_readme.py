"""The README is the user's manual: it must name every setting and both Quick start commands."""

import re
from pathlib import Path

from streaming_ml.config import REPO_ROOT, Settings

README = (REPO_ROOT / "README.md").read_text()


def test_every_setting_is_documented() -> None:
    missing = [
        f"SML_{name.upper()}"
        for name in Settings.model_fields
        if f"`SML_{name.upper()}`" not in README
    ]
    assert missing == [], f"add these settings to the README's table: {missing}"


def test_documented_defaults_match_settings() -> None:
    documented = dict(re.findall(r"^\| `SML_(\w+)` \| `([^`]*)` \|", README, flags=re.MULTILINE))
    wrong = {}
    for name, field in Settings.model_fields.items():
        default = field.default
        if default is None:
            continue  # derived at run time; the README explains how
        if isinstance(default, Path):
            default = default.relative_to(REPO_ROOT)
        expected = str(default).lower() if isinstance(default, bool) else str(default)
        if documented.get(name.upper()) != expected:
            wrong[f"SML_{name.upper()}"] = (documented.get(name.upper()), expected)
    assert wrong == {}, f"README default differs from Settings (README, code): {wrong}"


def test_quick_start_has_demo_and_test() -> None:
    quick_start = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    assert "make demo" in quick_start
    assert "make test" in quick_start


def test_every_docs_page_is_linked_from_the_readme_and_every_link_exists() -> None:
    pages = {path.relative_to(REPO_ROOT).as_posix() for path in (REPO_ROOT / "docs").glob("*.md")}
    linked = set(re.findall(r"docs/[\w-]+\.md", README))
    assert pages - linked == set(), "pages nothing in the README links to"
    assert linked - pages == set(), "links to pages that do not exist"


def test_the_layout_names_every_module_of_every_wing() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    layout = readme.split("\nsrc/streaming_ml/\n", 1)[1].split("\n```", 1)[0]
    # Each wing's entry runs from its "name/" to the next line that starts another entry.
    entries = re.split(r"\n  (?=\S)", "\n" + layout)
    package = REPO_ROOT / "src" / "streaming_ml"
    unnamed = []
    for wing in sorted(p for p in package.iterdir() if (p / "__init__.py").exists()):
        text = next((e for e in entries if e.startswith(f"{wing.name}/")), None)
        assert text is not None, f"the README's layout has no entry for {wing.name}/"
        words = set(re.findall(r"[a-z_]+", text))
        unnamed += [
            f"{wing.name}/{module.stem}"
            for module in wing.glob("*.py")
            if module.stem != "__init__" and module.stem not in words
        ]
    top = [p.name for p in package.glob("*.py") if p.stem not in ("__init__", "__main__")]
    unnamed += [name for name in top if name not in layout]
    assert not unnamed, f"modules the README's layout does not name: {unnamed}"


def test_the_explain_example_adds_up_to_the_price_it_explains() -> None:
    """The README shows `streaming-ml explain`'s chart: its amounts are whole pounds that
    add up to the price, as the command's are (tests/unit/test_dashboard.py holds that)."""
    pounds = r"([+-]?)£([\d,]+)"

    def amount(sign: str, digits: str) -> int:
        return (-1 if sign == "-" else 1) * int(digits.replace(",", ""))

    charts = re.findall(r"^Why £([\d,]+):.*?\n(.*?)^= price +£([\d,]+)$", README, re.M | re.S)
    assert charts, "no explain chart in the README"
    for headline, body, total in charts:
        base, *features = re.findall(r"^\S.*? " + pounds, body, re.M)
        assert body.startswith("base price")
        assert amount(*base) + sum(amount(*f) for f in features) == amount("", total)
        assert total == headline
