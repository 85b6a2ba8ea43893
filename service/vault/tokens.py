"""Tokenized subject IDs: a keyed HMAC of tenant + customer reference, so the reference is never stored.

Normalisation is deliberately minimal: surrounding whitespace is stripped (``str.strip()``), nothing
else. Case, inner spaces and Unicode form are significant, because folding them could merge two real
customers into one subject. Callers that need more (e.g. upper-casing account numbers) do it before.
"""

from __future__ import annotations

import hashlib
import hmac
import re

from service.vault.errors import InvalidReference
from service.vault.framing import length_prefixed

SUBJECT_TOKEN_PREFIX = "sub_"
MIN_PEPPER_BYTES = 32

_DOMAIN = b"bioident/subject-token/v1"
_TOKEN_PATTERN = re.compile(r"sub_[0-9a-f]{64}")


def subject_token(pepper: bytes, tenant_id: str, reference: str) -> str:
    """Return ``sub_<64 hex>``, the same for the same (pepper, tenant, reference), unlinkable without the pepper."""
    if len(pepper) < MIN_PEPPER_BYTES:
        raise ValueError(f"pepper must be at least {MIN_PEPPER_BYTES} bytes")
    if not tenant_id:
        raise ValueError("tenant_id must not be empty")
    normalised = reference.strip()
    if not normalised:
        raise InvalidReference("customer reference is empty")
    message = _DOMAIN + length_prefixed(tenant_id.encode("utf-8"), normalised.encode("utf-8"))
    return SUBJECT_TOKEN_PREFIX + hmac.new(pepper, message, hashlib.sha256).hexdigest()


def is_subject_token(value: str) -> bool:
    """Whether ``value`` has the shape of a subject token (for validating path parameters)."""
    return _TOKEN_PATTERN.fullmatch(value) is not None
