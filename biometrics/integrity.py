"""Weight files are checked against their pinned SHA-256 before anything is loaded (voice and fingerprint)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from biometrics.errors import ModelFileMissing, ModelHashMismatch


def sha256_file(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _require(path: Path, expected_sha256: str, actual: str) -> None:
    if actual != expected_sha256:
        raise ModelHashMismatch(
            f"model file {path} has SHA-256 {actual}, expected {expected_sha256}; refusing to load it"
        )


def _require_file(path: Path, expected_sha256: str) -> None:
    if not path.is_file():
        raise ModelFileMissing(
            f"model file {path.name} not found at {path.parent} (expected SHA-256 {expected_sha256})"
        )


def verify_file(path: Path, expected_sha256: str) -> str:
    """Checks a weight file against its pinned hash; returns the hash. Nothing is loaded before this."""
    _require_file(path, expected_sha256)
    actual = sha256_file(path)
    _require(path, expected_sha256, actual)
    return actual


def read_verified(path: Path, expected_sha256: str) -> bytes:
    """A weight file's bytes, checked against its pinned hash: load these, not the path, so that a file
    replaced after its check is never what gets loaded."""
    _require_file(path, expected_sha256)
    data = path.read_bytes()
    _require(path, expected_sha256, hashlib.sha256(data).hexdigest())
    return data
