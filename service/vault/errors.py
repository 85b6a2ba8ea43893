"""Typed errors of the vault.

Every error has a stable machine-readable ``code``; the service maps codes to problem+json types
in one place. Messages name versions, paths and fields at most: never keys, peppers, references,
ciphertexts or template bytes.
"""

from __future__ import annotations


class VaultError(Exception):
    """Base of every error the vault raises on purpose."""

    code = "vault_error"
    status = 500  # HTTP status when it reaches the API: a server-side fault unless a subclass says otherwise
    # What an API client is told of a server-side fault (the message goes to the operator's log).
    public_detail = "the service could not use its keys; the operator's log names the cause"
    retry_after_s: int | None = None  # for a passing fault, when a client may try again (Retry-After)

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidReference(VaultError, ValueError):
    """A customer reference that cannot be tokenized (empty once surrounding whitespace is stripped)."""

    code = "subject_reference_invalid"
    status = 422


class DecryptionError(VaultError):
    """A ciphertext failed authentication: wrong key, wrong binding, or altered bytes.

    One error for every cause, on purpose: callers learn nothing about which part was wrong.
    """

    code = "vault_decryption_failed"

    def __init__(self, message: str = "ciphertext does not match its binding or key") -> None:
        super().__init__(message)


class KeyVersionUnavailable(VaultError):
    """A key-encryption key version that this keyring does not have, or whose material was destroyed."""

    code = "vault_key_version_unavailable"

    def __init__(self, version: int) -> None:
        super().__init__(f"key-encryption key version {version} is not available (unknown or retired)")
        self.version = version


class KeyVersionRetired(KeyVersionUnavailable):
    """An older version whose material is gone (retired, or dropped from the secret store): what it wraps opens
    for nobody, ever. (A version newer than the keyring's is a keyring to reload, not this.) Met when serving a
    database copied before a shred: that customer's data is as good as erased, and they enrol again (409)."""

    code = "data_unrecoverable"
    status = 409

    def __init__(self, version: int) -> None:
        super().__init__(version)
        self.message = (
            f"this data was wrapped under key-encryption key version {version}, retired since: it opens for nobody "
            "(a database older than a key shred?); the customer must enrol again"
        )


class KeyringError(VaultError):
    code = "keyring_error"


class KeyringInvalid(KeyringError):
    """The keyring document is missing or malformed; the message names the field, never its value."""

    code = "keyring_invalid"


class KeyringMissing(KeyringError):
    """No keyring where one is expected: creating a new one there would silently orphan existing data."""

    code = "keyring_missing"


class KeyringPermissionError(KeyringError):
    code = "keyring_permissions_too_open"


class KeyringMismatch(KeyringError):
    """A keyring other than the one the database was set up with."""

    code = "keyring_mismatch"


class KeyringOutdated(KeyringError):
    """This replica's keyring predates a rotation the database has recorded: it must not wrap new keys."""

    code = "keyring_outdated"
    status = 503
    public_detail = "this replica's keys are out of date after a rotation; retry shortly"
    retry_after_s = 5  # a replica reloads a changed keyring file on its next use of the keys

    def __init__(self, message: str, *, reloads: bool = True) -> None:
        super().__init__(message)
        if not reloads:  # from BIOIDENT_KEYRING: fixed until the replica is redeployed, so no retry hint
            self.public_detail = "this replica's keys are out of date after a rotation; the operator must redeploy it"
            self.retry_after_s = None


class KeyringReadOnly(KeyringError):
    code = "keyring_read_only"


class ActiveKeyRetirement(KeyringError):
    code = "keyring_cannot_retire_active"
