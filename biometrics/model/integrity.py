from __future__ import annotations

import hashlib
from pathlib import Path

from biometrics.errors import ModelFileMissing, ModelHashMismatch


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_file(path: Path, expected_sha256: str) -> str:
    """Checks a weight file against its pinned hash; returns the hash. Nothing is loaded before this."""
    if not path.is_file():
        raise ModelFileMissing(
            f"model file {path.name} not found at {path.parent} (expected SHA-256 {expected_sha256})"
        )
    actual = sha256_file(path)
    if actual != expected_sha256:
        raise ModelHashMismatch(
            f"model file {path} has SHA-256 {actual}, expected {expected_sha256}; refusing to load it"
        )
    return actual
