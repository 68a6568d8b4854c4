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


def test_documented_pages_exist() -> None:
    for page in ("docs/model.md", "docs/models.md", "docs/performance.md", "docs/compose.md"):
        assert page in README
        assert (REPO_ROOT / page).is_file(), page


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
