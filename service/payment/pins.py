"""Optional till PINs: 4-6 digits, stored only as an argon2id hash.

A PIN has at most a million values, so a hash of it alone falls to a brute force by anyone holding the
database. Before hashing, the PIN is keyed with the keyring's pepper (which never leaves the keyring)
and bound to the subject: the argon2id hash is of that HMAC, so the database alone reveals nothing, and a
hash copied to another subject never verifies. The pepper carries the secrecy; argon2id (at OWASP's
recommended minimum: 19 MiB, 2 passes, 1 lane, a few tens of ms) is defence in depth should the pepper
leak too, cheap enough that a till can check a PIN against a few candidates while the customer waits.
"""

from __future__ import annotations

import hashlib
import hmac
import re

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from service.errors import ServiceError
from service.vault.framing import length_prefixed

_DOMAIN = b"bioident/till-pin/v1"
_PIN = re.compile(r"[0-9]{4,6}")
_hasher = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)  # argon2id


class InvalidPin(ServiceError):
    status, code, title = 422, "invalid_pin", "A PIN is 4 to 6 digits"


def check_pin_format(pin: str) -> str:
    if not _PIN.fullmatch(pin):
        raise InvalidPin("a PIN is 4 to 6 digits")
    return pin


def _keyed(pepper: bytes, subject_token: str, pin: str) -> str:
    message = _DOMAIN + length_prefixed(subject_token.encode(), pin.encode())
    return hmac.new(pepper, message, hashlib.sha256).hexdigest()


def hash_pin(pepper: bytes, subject_token: str, pin: str) -> str:
    """The argon2id hash (PHC string) of the subject's peppered PIN."""
    return _hasher.hash(_keyed(pepper, subject_token, check_pin_format(pin)))


def pin_matches(pepper: bytes, subject_token: str, pin: str, stored: str) -> bool:
    """Whether ``pin`` is the subject's PIN (False for a malformed PIN or hash, never an exception)."""
    if not _PIN.fullmatch(pin):
        return False
    try:
        return _hasher.verify(stored, _keyed(pepper, subject_token, pin))
    except (VerificationError, InvalidHashError):
        return False
