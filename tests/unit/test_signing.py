"""Signed model exports: what verifies, what is refused and why, and where the key comes from."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from pydantic import SecretStr

from streaming_ml.config import Settings
from streaming_ml.errors import RegistryError, UntrustedModelError
from streaming_ml.models import signing
from streaming_ml.models.registry import export_bytes
from streaming_ml.stack import secrets

KEY = b"k" * 64
OTHER_KEY = b"o" * 64


def stored_model(name: str) -> str:
    """A small model in the test store (a real BentoML export, nothing trained)."""
    import bentoml

    with bentoml.models.create(name, metadata={"note": "signing test"}) as model:
        Path(model.path_of("weights.txt")).write_text("1 2 3")
    return str(model.tag)


@pytest.fixture(scope="module")
def exported() -> tuple[str, bytes]:
    tag = stored_model("sml_signing_test")
    return tag, export_bytes(tag)


def test_a_signed_export_verifies_to_its_archive_and_names_its_tag(
    exported: tuple[str, bytes],
) -> None:
    tag, archive = exported
    assert signing.archive_tag(archive) == tag
    assert signing.verify(KEY, tag, signing.sign(KEY, tag, archive)) == archive


def test_an_unsigned_export_is_refused(exported: tuple[str, bytes]) -> None:
    tag, archive = exported
    with pytest.raises(UntrustedModelError, match="is not signed"):
        signing.verify(KEY, tag, archive)


@pytest.mark.parametrize("where", [0, 19, 40, -1], ids=["magic", "digest", "archive", "last"])
def test_a_changed_byte_anywhere_is_refused(exported: tuple[str, bytes], where: int) -> None:
    tag, archive = exported
    signed = bytearray(signing.sign(KEY, tag, archive))
    signed[where] ^= 0x01
    with pytest.raises(UntrustedModelError, match=r"not signed|signature does not match"):
        signing.verify(KEY, tag, bytes(signed))


def test_a_truncated_or_extended_export_is_refused(exported: tuple[str, bytes]) -> None:
    tag, archive = exported
    signed = signing.sign(KEY, tag, archive)
    for changed in (signed[:-1], signed + b"\0", signed[: len(signing.MAGIC) + 5]):
        with pytest.raises(UntrustedModelError):
            signing.verify(KEY, tag, changed)


def test_an_export_signed_with_another_key_is_refused(exported: tuple[str, bytes]) -> None:
    tag, archive = exported
    with pytest.raises(UntrustedModelError, match="signature does not match"):
        signing.verify(KEY, tag, signing.sign(OTHER_KEY, tag, archive))


def test_a_signed_export_moved_to_another_tag_is_refused(exported: tuple[str, bytes]) -> None:
    tag, archive = exported
    with pytest.raises(UntrustedModelError, match="signature does not match"):
        signing.verify(KEY, "ford_price:other", signing.sign(KEY, tag, archive))


def test_an_archive_signed_under_a_tag_it_does_not_hold_is_refused(
    exported: tuple[str, bytes],
) -> None:
    tag, archive = exported
    claimed = "ford_price:v2"
    with pytest.raises(UntrustedModelError, match=f"holds model {tag}, not {claimed}"):
        signing.verify(KEY, claimed, signing.sign(KEY, claimed, archive))


def test_a_signed_archive_that_is_no_export_is_refused() -> None:
    junk = b"not a tar archive at all"
    with pytest.raises(UntrustedModelError, match="cannot be read"):
        signing.verify(KEY, "m:1", signing.sign(KEY, "m:1", junk))


def test_the_state_dir_key_is_made_once_private_and_read_from_there(tmp_path: Path) -> None:
    secrets.ensure_signing_key(tmp_path)
    path = secrets.signing_key_path(tmp_path)
    first = path.read_text()
    secrets.ensure_signing_key(tmp_path)
    assert path.read_text() == first and len(first.strip()) == 64
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert signing.signing_key(Settings(state_dir=tmp_path)) == first.strip().encode()
    secrets.ensure_signing_key(tmp_path / "other")
    assert secrets.signing_key_path(tmp_path / "other").read_text() != first


def test_the_key_setting_and_key_file_setting_come_before_the_state_dir(tmp_path: Path) -> None:
    secrets.ensure_signing_key(tmp_path)
    given = tmp_path / "given.key"
    given.write_text("f" * 40 + "\n")
    from_file = Settings(state_dir=tmp_path, model_signing_key_file=given)
    assert signing.signing_key(from_file) == b"f" * 40
    from_value = from_file.model_copy(update={"model_signing_key": SecretStr("v" * 32)})
    assert signing.signing_key(from_value) == b"v" * 32
    assert "v" * 32 not in repr(from_value)


def test_a_missing_or_short_key_is_an_error_saying_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="stack up"):
        signing.signing_key(Settings(state_dir=tmp_path))
    with pytest.raises(RegistryError, match="too short"):
        signing.signing_key(Settings(state_dir=tmp_path, model_signing_key=SecretStr("abc")))
