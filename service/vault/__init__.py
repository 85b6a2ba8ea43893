"""The vault: tokenized subject IDs, a versioned keyring, and envelope encryption of templates.

Typical use::

    keyring = Keyring.load_or_create(settings.resolved_keyring_file)
    token = subject_token(keyring.pepper, tenant_id, reference)
    data_key = new_data_key()  # an opaque DataKey
    wrapped = wrap_data_key(keyring, data_key, context=data_key_context(token, "voice"))
    sealed = data_key.seal(template_bytes, aad=TemplateBinding(token, "voice", template_id, fingerprint))
"""

from service.vault.envelope import (
    DataKey,
    TemplateBinding,
    WrappedKey,
    data_key_context,
    new_data_key,
    open_sealed,
    rewrap,
    seal,
    unwrap_data_key,
    wrap_data_key,
)
from service.vault.errors import (
    ActiveKeyRetirement,
    DecryptionError,
    InvalidReference,
    KeyringError,
    KeyringInvalid,
    KeyringMismatch,
    KeyringMissing,
    KeyringOutdated,
    KeyringPermissionError,
    KeyringReadOnly,
    KeyVersionRetired,
    KeyVersionUnavailable,
    VaultError,
)
from service.vault.keyring import Keyring, KeyStatus, KeyVersionInfo
from service.vault.tokens import SUBJECT_TOKEN_PREFIX, is_subject_token, subject_token

__all__ = [
    "SUBJECT_TOKEN_PREFIX",
    "ActiveKeyRetirement",
    "DataKey",
    "DecryptionError",
    "InvalidReference",
    "KeyStatus",
    "KeyVersionInfo",
    "KeyVersionRetired",
    "KeyVersionUnavailable",
    "Keyring",
    "KeyringError",
    "KeyringInvalid",
    "KeyringMismatch",
    "KeyringMissing",
    "KeyringOutdated",
    "KeyringPermissionError",
    "KeyringReadOnly",
    "TemplateBinding",
    "VaultError",
    "WrappedKey",
    "data_key_context",
    "is_subject_token",
    "new_data_key",
    "open_sealed",
    "rewrap",
    "seal",
    "subject_token",
    "unwrap_data_key",
    "wrap_data_key",
]
