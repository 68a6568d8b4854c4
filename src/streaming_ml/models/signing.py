"""Signed model exports: only a holder of the registry's key can publish a loadable model.

A model on the models topic is a BentoML export, and an online model's export holds a
pickle, which runs code when it is loaded. So the bytes on the topic are trusted only
once they carry a valid HMAC-SHA256 of the registry's signing key, computed over the
model's tag and its archive: without the key, a model can neither be forged nor moved
to another tag (its Kafka key). The signature is checked before a single byte of the
archive is extracted or unpickled, and the tag written inside the archive must equal
the tag it was published under.

The key is 32 random bytes, hex-encoded, generated on the first ``stack up`` into the
state dir's secrets (0600, like the database passwords); other deployments give it
through ``SML_MODEL_SIGNING_KEY`` or a file named by ``SML_MODEL_SIGNING_KEY_FILE``.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import tarfile

import yaml  # type: ignore[import-untyped]  # PyYAML ships no types; stubs are not locked

from streaming_ml.config import Settings
from streaming_ml.errors import RegistryError, UntrustedModelError
from streaming_ml.stack.secrets import signing_key_path

# Marks a signed export: a model published before exports were signed has no such prefix.
MAGIC = b"sml-signed-model/1\n"
DIGEST_BYTES = hashlib.sha256().digest_size
# In the archive BentoML's export writes (tar, xz-compressed).
MODEL_YAML = "model.yaml"


def signing_key(settings: Settings) -> bytes:
    """The registry's key: ``SML_MODEL_SIGNING_KEY``, else the file
    ``SML_MODEL_SIGNING_KEY_FILE``, else the state dir's; a RegistryError if none."""
    if settings.model_signing_key is not None:
        text = settings.model_signing_key.get_secret_value()
        where = "SML_MODEL_SIGNING_KEY"
    else:
        path = settings.model_signing_key_file or signing_key_path(settings.state_dir)
        where = f"the key file {path.name} (SML_MODEL_SIGNING_KEY_FILE)"
        try:
            text = path.read_text()
        except OSError as error:
            raise RegistryError(
                f"no model signing key readable at {path} ({error.strerror}): models from "
                "the registry cannot be checked or published. `streaming-ml stack up` "
                "creates it; elsewhere set SML_MODEL_SIGNING_KEY or "
                "SML_MODEL_SIGNING_KEY_FILE to the registry's key."
            ) from error
    key = text.strip().encode()
    if len(key) < 32:
        raise RegistryError(
            f"the model signing key from {where} is too short ({len(key)} characters, at "
            "least 32): use the key `streaming-ml stack up` generated."
        )
    return key


def _digest(key: bytes, tag: str, archive: bytes) -> bytes:
    mac = hmac.new(key, MAGIC, hashlib.sha256)
    name = tag.encode()
    # The tag's length first, so no tag/archive split of the same bytes signs twice.
    mac.update(len(name).to_bytes(4, "big"))
    mac.update(name)
    mac.update(archive)
    return mac.digest()


def sign(key: bytes, tag: str, archive: bytes) -> bytes:
    """What goes on the models topic under ``tag``: the archive with its signature."""
    return MAGIC + _digest(key, tag, archive) + archive


def verify(key: bytes, tag: str, signed: bytes) -> bytes:
    """The archive published under ``tag`` once its signature and inner tag are checked;
    ``UntrustedModelError`` with the reason otherwise. Nothing is extracted before the
    signature matches."""
    if not signed.startswith(MAGIC) or len(signed) < len(MAGIC) + DIGEST_BYTES:
        raise UntrustedModelError(
            f"{tag} is not signed: it was not published by `streaming-ml` with the "
            "registry's key; publish it again with `streaming-ml model promote`"
        )
    digest = signed[len(MAGIC) : len(MAGIC) + DIGEST_BYTES]
    archive = signed[len(MAGIC) + DIGEST_BYTES :]
    if not hmac.compare_digest(digest, _digest(key, tag, archive)):
        raise UntrustedModelError(
            f"{tag}: the signature does not match (bytes changed, another tag, or signed "
            "with another key than this registry's)"
        )
    inner = archive_tag(archive)
    if inner != tag:
        raise UntrustedModelError(f"{tag}: the archive holds model {inner}, not {tag}")
    return archive


def archive_tag(archive: bytes) -> str:
    """``name:version`` as written in an export's model.yaml, read in memory."""

    try:
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r:*") as tar:
            member = next((m for m in tar.getmembers() if m.name.lstrip("./") == MODEL_YAML), None)
            source = tar.extractfile(member) if member is not None else None
            if source is None:
                raise UntrustedModelError(f"the archive has no {MODEL_YAML}")
            info = yaml.safe_load(source.read())
    except (tarfile.TarError, EOFError, OSError, yaml.YAMLError) as error:
        raise UntrustedModelError(f"the archive cannot be read: {error}") from error
    if not isinstance(info, dict):
        raise UntrustedModelError(f"the archive's {MODEL_YAML} is not a mapping")
    return f"{info.get('name')}:{info.get('version')}"
