"""Versioned key-encryption keys (KEKs) and the subject-token pepper.

A keyring is one JSON document::

    {"format": "bioident-keyring/1", "pepper": "<base64, 32 bytes>",
     "keks": [{"version": 1, "created_at": "...", "status": "retired", "retired_at": "..."},
              {"version": 2, "created_at": "...", "status": "active", "key": "<base64, 32 bytes>"}]}

It lives either in a file that only its owner can read (created 0600, refused when group or others
have any access), or in ``BIOIDENT_KEYRING`` (from a secret manager), which is read-only here.

Rotation is: ``add_version()``, rewrap every data key (``envelope.rewrap``), then ``retire(old)``.
Retiring destroys the version's material in the file and in this object, which crypto-shreds anything
still wrapped under it. Python cannot promise that old copies are wiped from memory, and the
filesystem or backups may keep old copies of the file: retire is only as strong as their handling.
The pepper is never rotated: every subject token depends on it.

The file is the truth: ``add_version`` and ``retire`` read it again before changing it, so an object
loaded before another process rotated never writes back versions that were retired since, nor drops
one added since. Callers that may run on several hosts at once hold the database's key-version fence
while they change the file (``service.keys``).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hmac
import json
import os
import secrets
import stat
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from service.vault.errors import (
    ActiveKeyRetirement,
    DecryptionError,
    KeyringInvalid,
    KeyringMissing,
    KeyringPermissionError,
    KeyringReadOnly,
    KeyVersionRetired,
    KeyVersionUnavailable,
)

ENV_VARIABLE = "BIOIDENT_KEYRING"
KEY_BYTES = 32
_FORMAT = "bioident-keyring/1"
_AUDIT_KEY_LABEL = b"bioident/audit-chain-hmac/1"
_LEDGER_KEY_LABEL = b"bioident/destruction-ledger-hmac/1"
_IDENTITY_LABEL = b"bioident/keyring-id/1"
_BACKUP_KEY_LABEL = b"bioident/backup-manifest-hmac/1"
MAX_KEY_VERSION = 2**31 - 1  # versions are stored as the databases' INTEGER columns


class KeyStatus(StrEnum):
    ACTIVE = "active"  # wraps new data keys
    DECRYPT_ONLY = "decrypt_only"  # unwraps data keys not yet rewrapped
    RETIRED = "retired"  # material destroyed; kept only as a record that it existed


@dataclass(frozen=True)
class KeyVersionInfo:
    version: int
    created_at: datetime
    status: KeyStatus
    retired_at: datetime | None = None


@dataclass(frozen=True)
class _Kek:
    info: KeyVersionInfo
    material: bytes | None = field(default=None, repr=False)


class Keyring:
    """Build with ``load_or_create``, ``from_env``, ``from_document`` or ``ephemeral``; not directly."""

    def __init__(
        self, pepper: bytes, keks: dict[int, _Kek], *, path: Path | None, source: str, read_only: bool
    ) -> None:
        self._pepper = pepper
        self._keks = keks
        self._path = path
        self._source = source
        self._read_only = read_only
        self._lock = threading.Lock()

    # --- construction ----------------------------------------------------------------------

    @classmethod
    def load_or_create(cls, path: str | os.PathLike[str]) -> Keyring:
        """Load the keyring file, or create it (mode 0600, one active KEK, a new pepper) when absent."""
        path = Path(path)
        try:
            return cls.load(path)
        except KeyringMissing:
            pass
        pepper, keks = _fresh_state()
        keyring = cls(pepper, keks, path=path, source="file", read_only=False)
        try:
            _write_private(path, _dump(pepper, keks), exclusive=True)
        except FileExistsError:  # another process created it first: use theirs
            return cls._load_file(path)
        return keyring

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Keyring:
        """Load an existing keyring file; its absence is ``KeyringMissing``, never a new keyring."""
        path = Path(path)
        try:
            return cls._load_file(path)
        except FileNotFoundError:
            raise KeyringMissing(
                f"no keyring at {path}: 'bioident serve' creates one for a new deployment; "
                "otherwise restore the deployment's keyring file there, or set BIOIDENT_KEYRING"
            ) from None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Keyring:
        """Read-only keyring from ``BIOIDENT_KEYRING``; rotation happens in the secret store."""
        environ = os.environ if environ is None else environ
        document = environ.get(ENV_VARIABLE)
        if not document:
            raise KeyringInvalid(f"{ENV_VARIABLE} is not set")
        return cls.from_document(document, origin=ENV_VARIABLE)

    @classmethod
    def from_document(cls, document: str | bytes, *, origin: str = ENV_VARIABLE) -> Keyring:
        """Read-only keyring from a JSON document held elsewhere (e.g. the ``keyring`` setting)."""
        pepper, keks = _parse(document, origin)
        return cls(pepper, keks, path=None, source="env", read_only=True)

    @classmethod
    def ephemeral(cls) -> Keyring:
        """A new in-memory keyring for tests and throwaway runs: its keys die with the process."""
        pepper, keks = _fresh_state()
        return cls(pepper, keks, path=None, source="memory", read_only=False)

    @classmethod
    def _load_file(cls, path: Path) -> Keyring:
        pepper, keks = _parse(_read_private(path), f"keyring file {path}")
        return cls(pepper, keks, path=path, source="file", read_only=False)

    # --- reading ---------------------------------------------------------------------------

    @property
    def pepper(self) -> bytes:
        """The secret for ``subject_token``; never log it."""
        return self._pepper

    def audit_key(self) -> bytes:
        """The HMAC key that signs audit entries: derived from the pepper, which never rotates.

        HKDF with its own label, so it reveals nothing about the pepper or the subject tokens.
        """
        return self._derive(_AUDIT_KEY_LABEL)

    def ledger_key(self) -> bytes:
        """The HMAC key that signs the destruction ledger's lines (its own label: unrelated to the audit key)."""
        return self._derive(_LEDGER_KEY_LABEL)

    def backup_key(self) -> bytes:
        """The HMAC key that signs backup manifests (its own label), so a backup altered anywhere is refused."""
        return self._derive(_BACKUP_KEY_LABEL)

    def _derive(self, label: bytes) -> bytes:
        return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=label).derive(self._pepper)

    def identity(self) -> str:
        """A public id of this keyring (32 hex digits), derived from the pepper: it reveals nothing of it."""
        return HKDF(algorithm=hashes.SHA256(), length=16, salt=None, info=_IDENTITY_LABEL).derive(self._pepper).hex()

    @property
    def active_version(self) -> int:
        return _active_of(self._keks).info.version

    @property
    def read_only(self) -> bool:
        return self._read_only

    def versions(self) -> list[KeyVersionInfo]:
        return [self._keks[v].info for v in sorted(self._keks)]

    # --- rotation --------------------------------------------------------------------------

    def add_version(self) -> int:
        """Create a new active KEK (the previous one stays for unwrapping) and save; return its version."""
        with self._lock:
            self._ensure_writable()
            self._read_file_again()
            version = max(self._keks) + 1
            keks = {
                v: replace(k, info=replace(k.info, status=KeyStatus.DECRYPT_ONLY))
                if k.info.status is KeyStatus.ACTIVE
                else k
                for v, k in self._keks.items()
            }
            keks[version] = _new_kek(version)
            self._commit(keks)
            return version

    def retire(self, version: int) -> bool:
        """Destroy a non-active version's material and save; anything still wrapped under it is lost.

        False when the version was retired already (nothing changed)."""
        with self._lock:
            self._ensure_writable()
            self._read_file_again()
            kek = self._keks.get(version)
            if kek is None:
                raise KeyVersionUnavailable(version)
            if kek.info.status is KeyStatus.ACTIVE:
                raise ActiveKeyRetirement(f"version {version} is active; add a new version before retiring it")
            if kek.info.status is KeyStatus.RETIRED:
                return False
            info = replace(kek.info, status=KeyStatus.RETIRED, retired_at=_now())
            self._commit({**self._keks, version: _Kek(info)})
            return True

    # --- wrapping: AES-256-GCM under a key-encryption key ------------------------------------

    def wrap(self, plaintext: bytes, *, aad: bytes) -> tuple[int, bytes]:
        """Encrypts under the active version; returns it with nonce + ciphertext + tag."""
        kek = _active_of(self._keks)  # one snapshot: version and material agree
        assert kek.material is not None
        nonce = os.urandom(NONCE_BYTES)
        return kek.info.version, nonce + AESGCM(kek.material).encrypt(nonce, plaintext, aad)

    def unwrap(self, version: int, blob: bytes, *, aad: bytes) -> bytes:
        """Decrypts what ``wrap`` made under ``version``: ``KeyVersionUnavailable`` if that version is
        unknown or retired, ``DecryptionError`` for any wrong byte or associated data."""
        kek = self._keks.get(version)
        if kek is None or kek.material is None:
            if (kek is not None or version < self.active_version) and version != self.active_version:
                raise KeyVersionRetired(version)
            raise KeyVersionUnavailable(version)
        return aead_open(AESGCM(kek.material), blob, aad)

    # --- internals -------------------------------------------------------------------------

    def _ensure_writable(self) -> None:
        if self._read_only:
            raise KeyringReadOnly(
                f"this keyring comes from {ENV_VARIABLE} and is read-only here; rotate keys in your "
                "secret store and redeploy"
            )

    def _read_file_again(self) -> None:
        """The versions as the file holds them now (another process may have rotated since we loaded it)."""
        if self._path is None:
            return
        try:
            pepper, keks = _parse(_read_private(self._path), f"keyring file {self._path}")
        except FileNotFoundError:
            raise KeyringMissing(f"no keyring at {self._path} any more; not writing a new one there") from None
        if not hmac.compare_digest(pepper, self._pepper):
            raise KeyringInvalid(f"keyring file {self._path} now holds another keyring; not changing it")
        self._keks = keks

    def _commit(self, keks: dict[int, _Kek]) -> None:
        if self._path is not None:
            _write_private(self._path, _dump(self._pepper, keks), exclusive=False)
        self._keks = keks

    def __repr__(self) -> str:
        where = f", path={str(self._path)!r}" if self._path is not None else ""
        return (
            f"Keyring(source={self._source!r}{where}, active_version={self.active_version}, "
            f"versions={sorted(self._keks)})"
        )


# --- the document ------------------------------------------------------------------------------


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def _new_kek(version: int) -> _Kek:
    return _Kek(KeyVersionInfo(version, _now(), KeyStatus.ACTIVE), AESGCM.generate_key(bit_length=256))


def _fresh_state() -> tuple[bytes, dict[int, _Kek]]:
    return secrets.token_bytes(KEY_BYTES), {1: _new_kek(1)}


def _active_of(keks: Mapping[int, _Kek]) -> _Kek:
    return next(k for k in keks.values() if k.info.status is KeyStatus.ACTIVE)


def _dump(pepper: bytes, keks: Mapping[int, _Kek]) -> bytes:
    entries = []
    for version in sorted(keks):
        kek = keks[version]
        entry: dict[str, Any] = {
            "version": version,
            "created_at": kek.info.created_at.isoformat(),
            "status": kek.info.status.value,
        }
        if kek.info.retired_at is not None:
            entry["retired_at"] = kek.info.retired_at.isoformat()
        if kek.material is not None:
            entry["key"] = base64.b64encode(kek.material).decode("ascii")
        entries.append(entry)
    document = {"format": _FORMAT, "pepper": base64.b64encode(pepper).decode("ascii"), "keks": entries}
    return (json.dumps(document, indent=2) + "\n").encode("utf-8")


def _parse(document: str | bytes, origin: str) -> tuple[bytes, dict[int, _Kek]]:
    try:
        data = json.loads(document)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError; their text is not repeated
        raise KeyringInvalid(f"{origin} is not valid JSON") from None
    if not isinstance(data, dict) or data.get("format") != _FORMAT:
        raise KeyringInvalid(f"{origin} is not a {_FORMAT} document")
    pepper = _decode_key(data.get("pepper"), f"{origin}: pepper")
    entries = data.get("keks")
    if not isinstance(entries, list) or not entries:
        raise KeyringInvalid(f"{origin}: 'keks' must be a non-empty list")
    keks: dict[int, _Kek] = {}
    for index, entry in enumerate(entries):
        kek = _parse_kek(entry, f"{origin}: keks[{index}]")
        if kek.info.version in keks:
            raise KeyringInvalid(f"{origin}: version {kek.info.version} appears twice")
        keks[kek.info.version] = kek
    active = [v for v, k in keks.items() if k.info.status is KeyStatus.ACTIVE]
    if len(active) != 1:
        raise KeyringInvalid(f"{origin}: exactly one version must be active, found {len(active)}")
    return pepper, keks


def _parse_kek(entry: object, where: str) -> _Kek:
    if not isinstance(entry, dict):
        raise KeyringInvalid(f"{where} must be an object")
    version = entry.get("version")
    if type(version) is not int or not 1 <= version <= MAX_KEY_VERSION:
        raise KeyringInvalid(f"{where}: 'version' must be an integer from 1 to {MAX_KEY_VERSION}")
    try:
        status = KeyStatus(entry.get("status"))
    except ValueError:
        raise KeyringInvalid(f"{where}: 'status' must be one of {[s.value for s in KeyStatus]}") from None
    created_at = _parse_time(entry.get("created_at"), f"{where}: created_at")
    retired_at = None if entry.get("retired_at") is None else _parse_time(entry["retired_at"], f"{where}: retired_at")
    if status is KeyStatus.RETIRED:
        if entry.get("key") is not None:
            raise KeyringInvalid(f"{where}: a retired version must not keep its key")
        material = None
    else:
        material = _decode_key(entry.get("key"), f"{where}: key")
    return _Kek(KeyVersionInfo(version, created_at, status, retired_at), material)


def _decode_key(value: object, where: str) -> bytes:
    if not isinstance(value, str):
        raise KeyringInvalid(f"{where} is missing")
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise KeyringInvalid(f"{where} is not valid base64") from None
    if len(raw) != KEY_BYTES:
        raise KeyringInvalid(f"{where} must decode to {KEY_BYTES} bytes")
    return raw


def _parse_time(value: object, where: str) -> datetime:
    if not isinstance(value, str):
        raise KeyringInvalid(f"{where} is missing")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise KeyringInvalid(f"{where} is not an ISO 8601 time") from None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


# --- the file ----------------------------------------------------------------------------------


def _read_private(path: Path) -> bytes:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:  # the mode is checked on the opened file, not the name (a directory opens too, and is refused here)
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise KeyringInvalid(f"keyring file {path} is not a regular file")
        if mode & 0o077:
            raise KeyringPermissionError(
                f"keyring file {path} is accessible to group or others (mode {stat.S_IMODE(mode):04o}); "
                f"run: chmod 600 {path}"
            )
        with open(fd, "rb", closefd=False) as file:
            return file.read()
    finally:
        os.close(fd)


def write_private_file(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically, mode 0600, synced (for the other files that hold key material)."""
    _write_private(path, data, exclusive=False)


def _write_private(path: Path, data: bytes, *, exclusive: bool) -> None:
    """Write ``data`` to ``path`` atomically with mode 0600; ``exclusive`` fails if ``path`` exists.

    The bytes go to a fresh 0600 temp file beside ``path`` first, so no reader ever sees a partial
    keyring; it is then linked in (exclusive create) or replaced over the old file (update).
    """
    temp = stage_private_file(path, data)
    try:
        if exclusive:
            os.link(temp, path)
        else:
            os.replace(temp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
    fsync_directory(path.parent)


def stage_private_file(path: Path, data: bytes) -> Path:
    """``data`` in a new 0600 file beside ``path`` (a hidden name no other file has), synced: to be linked or
    renamed into place by the caller. Nothing is left behind if writing it fails."""
    temp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
    try:
        with open(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return temp


def fsync_directory(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


NONCE_BYTES = 12
TAG_BYTES = 16


def aead_open(aead: AESGCM, blob: bytes, associated_data: bytes) -> bytes:
    """nonce + ciphertext + tag -> plaintext; ``DecryptionError`` for anything that does not authenticate."""
    if len(blob) < NONCE_BYTES + TAG_BYTES:
        raise DecryptionError()
    try:
        return aead.decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], associated_data)
    except InvalidTag:
        raise DecryptionError() from None
