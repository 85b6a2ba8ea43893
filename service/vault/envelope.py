"""Envelope encryption: templates sealed under a per-subject data key, data keys wrapped under a KEK.

Both layers are AES-256-GCM with a random 96-bit nonce. What a ciphertext belongs to is authenticated
as associated data, so bytes copied to another row fail to open:

- a wrapped data key is bound to its ``context`` (e.g. subject token + modality);
- a sealed template is bound to its ``TemplateBinding`` (subject, modality, template id, model).

Rotating KEKs rewraps data keys only; sealed templates are never decrypted for it.

Callers hold a data key as an opaque ``DataKey`` (``seal`` / ``open``), in the manner of
pyca/cryptography's Fernet: its bytes are never handed out, printed or compared in variable time.
"""

from __future__ import annotations

import hmac
import os
from dataclasses import dataclass, field, fields

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from service.vault.errors import DecryptionError
from service.vault.framing import length_prefixed
from service.vault.keyring import NONCE_BYTES, Keyring, aead_open

DATA_KEY_BYTES = 32
_SEAL_FORMAT = b"\x01"
_WRAP_DOMAIN = b"bioident/data-key/v1"
_SEAL_DOMAIN = b"bioident/template/v1"


class DataKey:
    """A subject's data key for one modality: seals and opens that subject's templates."""

    __slots__ = ("_material",)

    def __init__(self, material: bytes) -> None:
        if not isinstance(material, bytes | bytearray) or len(material) != DATA_KEY_BYTES:
            raise ValueError(f"data key must be {DATA_KEY_BYTES} bytes")
        self._material = bytes(material)

    def seal(self, plaintext: bytes, *, aad: TemplateBinding) -> bytes:
        """Encrypt a template: format byte + nonce + ciphertext + tag."""
        nonce = os.urandom(NONCE_BYTES)
        return _SEAL_FORMAT + nonce + AESGCM(self._material).encrypt(nonce, plaintext, _seal_aad(aad))

    def open(self, sealed: bytes, *, aad: TemplateBinding) -> bytes:
        """Decrypt a sealed template; ``DecryptionError`` for any wrong key, binding or byte."""
        if sealed[:1] != _SEAL_FORMAT:
            raise DecryptionError()
        return aead_open(AESGCM(self._material), sealed[1:], _seal_aad(aad))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DataKey) and hmac.compare_digest(self._material, other._material)

    def __hash__(self) -> int:
        return id(self)

    def __repr__(self) -> str:
        return "DataKey(<secret>)"


@dataclass(frozen=True)
class WrappedKey:
    """A data key encrypted under KEK ``kek_version``; ``blob`` is nonce + ciphertext + tag."""

    kek_version: int
    blob: bytes = field(repr=False)

    def __repr__(self) -> str:
        return f"WrappedKey(kek_version={self.kek_version}, blob=<{len(self.blob)} bytes>)"


@dataclass(frozen=True)
class TemplateBinding:
    """The row a sealed template belongs to; authenticated with it so it cannot be moved elsewhere."""

    subject_token: str
    modality: str
    template_id: str
    model_fingerprint: str

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, str) or not value:
                raise ValueError(f"TemplateBinding.{f.name} must be a non-empty string")

    def to_bytes(self) -> bytes:
        """Canonical encoding: a domain tag, then each field length-prefixed, in declaration order."""
        return _SEAL_DOMAIN + length_prefixed(*(getattr(self, f.name).encode("utf-8") for f in fields(self)))


def data_key_context(subject_token: str, modality: str) -> bytes:
    """The canonical ``context`` for a subject's data key of one modality (fields length-prefixed)."""
    if not subject_token or not modality:
        raise ValueError("subject_token and modality must not be empty")
    return length_prefixed(subject_token.encode("utf-8"), modality.encode("utf-8"))


def new_data_key() -> DataKey:
    return DataKey(AESGCM.generate_key(bit_length=DATA_KEY_BYTES * 8))


def wrap_data_key(keyring: Keyring, data_key: DataKey, *, context: bytes) -> WrappedKey:
    """Encrypt ``data_key`` under the active KEK, bound to ``context``."""
    _check_data_key(data_key)
    return WrappedKey(*keyring.wrap(data_key._material, aad=_wrap_aad(context)))


def unwrap_data_key(keyring: Keyring, wrapped: WrappedKey, *, context: bytes) -> DataKey:
    """Decrypt a wrapped data key; ``KeyVersionUnavailable`` if its KEK is unknown or retired."""
    material = keyring.unwrap(wrapped.kek_version, wrapped.blob, aad=_wrap_aad(context))
    if len(material) != DATA_KEY_BYTES:
        raise DecryptionError()
    return DataKey(material)


def rewrap(keyring: Keyring, wrapped: WrappedKey, *, context: bytes) -> WrappedKey:
    """Unwrap under the key's own KEK version and wrap again under the active one (for ``keys rotate``)."""
    return wrap_data_key(keyring, unwrap_data_key(keyring, wrapped, context=context), context=context)


def seal(data_key: DataKey, plaintext: bytes, *, aad: TemplateBinding) -> bytes:
    _check_data_key(data_key)
    return data_key.seal(plaintext, aad=aad)


def open_sealed(data_key: DataKey, sealed: bytes, *, aad: TemplateBinding) -> bytes:
    _check_data_key(data_key)
    return data_key.open(sealed, aad=aad)


def _wrap_aad(context: bytes) -> bytes:
    if not context:
        raise ValueError("context must not be empty: it is what binds a wrapped key to its owner")
    return _WRAP_DOMAIN + length_prefixed(context)


def _seal_aad(binding: TemplateBinding) -> bytes:
    if not isinstance(binding, TemplateBinding):
        raise TypeError("aad must be a TemplateBinding")
    return _SEAL_FORMAT + binding.to_bytes()


def _check_data_key(data_key: object) -> None:
    if not isinstance(data_key, DataKey):
        raise ValueError("a data key is a DataKey (from new_data_key or unwrap_data_key)")
