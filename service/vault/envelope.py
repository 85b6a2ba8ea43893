"""Envelope encryption: templates sealed under a per-subject data key, data keys wrapped under a KEK.

Both layers are AES-256-GCM with a random 96-bit nonce. What a ciphertext belongs to is authenticated
as associated data, so bytes copied to another row fail to open:

- a wrapped data key is bound to its ``context`` (e.g. subject token + modality);
- a sealed template is bound to its ``TemplateBinding`` (subject, modality, template id, model).

Rotating KEKs rewraps data keys only; sealed templates are never decrypted for it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from service.vault.errors import DecryptionError
from service.vault.framing import length_prefixed
from service.vault.keyring import Keyring

DATA_KEY_BYTES = 32
_NONCE_BYTES = 12
_TAG_BYTES = 16
_SEAL_FORMAT = b"\x01"
_WRAP_DOMAIN = b"bioident/data-key/v1"
_SEAL_DOMAIN = b"bioident/template/v1"


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


def new_data_key() -> bytes:
    return AESGCM.generate_key(bit_length=DATA_KEY_BYTES * 8)


def wrap_data_key(keyring: Keyring, data_key: bytes, *, context: bytes) -> WrappedKey:
    """Encrypt ``data_key`` under the active KEK, bound to ``context``."""
    _check_data_key(data_key)
    version, aead = keyring._active_aead()
    nonce = os.urandom(_NONCE_BYTES)
    return WrappedKey(version, nonce + aead.encrypt(nonce, data_key, _wrap_aad(context)))


def unwrap_data_key(keyring: Keyring, wrapped: WrappedKey, *, context: bytes) -> bytes:
    """Decrypt a wrapped data key; ``KeyVersionUnavailable`` if its KEK is unknown or retired."""
    aead = keyring._aead(wrapped.kek_version)
    data_key = _open(aead, wrapped.blob, _wrap_aad(context))
    if len(data_key) != DATA_KEY_BYTES:
        raise DecryptionError()
    return data_key


def rewrap(keyring: Keyring, wrapped: WrappedKey, *, context: bytes) -> WrappedKey:
    """Unwrap under the key's own KEK version and wrap again under the active one (for ``keys rotate``)."""
    return wrap_data_key(keyring, unwrap_data_key(keyring, wrapped, context=context), context=context)


def seal(data_key: bytes, plaintext: bytes, *, aad: TemplateBinding) -> bytes:
    """Encrypt a template: format byte + nonce + ciphertext + tag."""
    _check_data_key(data_key)
    nonce = os.urandom(_NONCE_BYTES)
    return _SEAL_FORMAT + nonce + AESGCM(data_key).encrypt(nonce, plaintext, _seal_aad(aad))


def open_sealed(data_key: bytes, sealed: bytes, *, aad: TemplateBinding) -> bytes:
    """Decrypt a sealed template; ``DecryptionError`` for any wrong key, binding or byte."""
    _check_data_key(data_key)
    if sealed[:1] != _SEAL_FORMAT:
        raise DecryptionError()
    return _open(AESGCM(data_key), sealed[1:], _seal_aad(aad))


def _open(aead: AESGCM, blob: bytes, associated_data: bytes) -> bytes:
    if len(blob) < _NONCE_BYTES + _TAG_BYTES:
        raise DecryptionError()
    try:
        return aead.decrypt(blob[:_NONCE_BYTES], blob[_NONCE_BYTES:], associated_data)
    except InvalidTag:
        raise DecryptionError() from None


def _wrap_aad(context: bytes) -> bytes:
    if not context:
        raise ValueError("context must not be empty: it is what binds a wrapped key to its owner")
    return _WRAP_DOMAIN + length_prefixed(context)


def _seal_aad(binding: TemplateBinding) -> bytes:
    if not isinstance(binding, TemplateBinding):
        raise TypeError("aad must be a TemplateBinding")
    return _SEAL_FORMAT + binding.to_bytes()


def _check_data_key(data_key: bytes) -> None:
    if not isinstance(data_key, bytes | bytearray) or len(data_key) != DATA_KEY_BYTES:
        raise ValueError(f"data key must be {DATA_KEY_BYTES} bytes")
