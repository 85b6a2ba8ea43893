"""Unambiguous byte framing for everything the vault hashes or authenticates."""

from __future__ import annotations


def length_prefixed(*parts: bytes) -> bytes:
    """Each part behind its 4-byte big-endian length, so no two different part lists frame alike."""
    return b"".join(len(part).to_bytes(4, "big") + part for part in parts)
