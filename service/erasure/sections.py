"""The key sections of backups: each backup's data keys, kept beside the ledger, never inside the backup.

A backup made with ``bioident backup`` holds the database without its data keys; its data keys go to
one file here per backup, wrapped under the keyring like the database's own. Every rotation re-wraps
them under the new key version and drops the keys the destruction ledger names, before the old version
is retired. So a backup stays restorable for every live subject across rotations, while a destroyed
subject's key is in no section (and every older copy of a section opens with a retired version only).

A rotation checks first that the folder takes new sections (``check_writable``), then writes every
re-wrapped section to a temporary file beside it (``stage_rewrap``) and renames them into place only
once all were written (``StagedSections.install``): a rotation that fails leaves the sections as they were.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from service.erasure.errors import BackupError
from service.erasure.ledger import DestructionLedger
from service.settings import ServiceSettings
from service.vault import Keyring, VaultError, WrappedKey, data_key_context, rewrap, unwrap_data_key
from service.vault.keyring import fsync_directory, stage_private_file, write_private_file

log = logging.getLogger("bioident.erasure")

SECTION_FORMAT = "bioident-backup-keys/1"
BACKUP_ID = re.compile(r"bkp_[0-9a-f]{32}")


@dataclass(frozen=True)
class SectionKey:
    """One data key of a backup, wrapped as the database wraps it."""

    key_id: str
    subject_token: str
    modality: str
    kek_version: int
    wrapped: bytes

    def to_json(self) -> dict[str, object]:
        return {
            "key_id": self.key_id,
            "subject_token": self.subject_token,
            "modality": self.modality,
            "kek_version": self.kek_version,
            "wrapped": base64.b64encode(self.wrapped).decode("ascii"),
        }

    def to_row(self) -> dict[str, object]:
        """The ``data_keys`` row it came from (but its id and creation time)."""
        return {**self.to_json(), "wrapped": self.wrapped}

    def opens(self, keyring: Keyring) -> bool:
        """Whether the keyring unwraps it (under a version it holds, for its subject and modality, unaltered)."""
        try:
            unwrap_data_key(keyring, WrappedKey(self.kek_version, self.wrapped), context=self.context)
        except VaultError:
            return False
        return True

    @property
    def context(self) -> bytes:
        return data_key_context(self.subject_token, self.modality)

    @classmethod
    def from_json(cls, entry: dict) -> SectionKey:
        return cls(
            str(entry["key_id"]),
            str(entry["subject_token"]),
            str(entry["modality"]),
            int(entry["kek_version"]),
            base64.b64decode(entry["wrapped"], validate=True),
        )


@dataclass(frozen=True)
class Section:
    backup_id: str
    keyring_id: str
    keys: tuple[SectionKey, ...]


@dataclass(frozen=True)
class SectionsRewrapped:
    sections: int
    rewrapped: int  # keys now under the active version
    dropped: int  # keys of destroyed subjects, taken out
    lost: int  # keys under a version retired already (a section that missed a rotation): unreadable anyway
    unreadable: int = 0  # damaged section files, left as they are


@dataclass
class StagedSections:
    """Re-wrapped sections in temporary files beside the ones they replace: nothing changed until ``install``."""

    directory: Path
    outcome: SectionsRewrapped
    files: list[tuple[Path, Path]] = field(default_factory=list)  # (temporary file, the section it replaces)

    def install(self) -> None:
        """Renames every staged file over its section (in one folder: it fails only where the folder does)."""
        total, installed = len(self.files), 0
        try:
            for temp, path in self.files:
                os.replace(temp, path)
                installed += 1
        except OSError as exc:
            raise BackupError(
                f"the backup key section {path} cannot be replaced ({_reason(exc)}): {installed} of {total} "
                "sections were re-wrapped before it, the others are as they were"
            ) from None
        finally:
            del self.files[:installed]
            self.discard()
            if installed:
                fsync_directory(self.directory)

    def discard(self) -> None:
        """Removes the staged files not installed (a rotation that failed)."""
        _remove(temp for temp, _ in self.files)
        self.files.clear()


class BackupKeys:
    """The directory of key sections (``BIOIDENT_BACKUP_KEYS_DIR``); ``ledger`` says which keys must go."""

    def __init__(self, directory: Path, ledger: DestructionLedger) -> None:
        self.directory = directory
        self.ledger = ledger

    @classmethod
    def of(cls, settings: ServiceSettings, ledger: DestructionLedger) -> BackupKeys:
        return cls(settings.resolved_backup_keys_dir, ledger)

    def path(self, backup_id: str) -> Path:
        if not BACKUP_ID.fullmatch(backup_id):
            raise BackupError(f"{backup_id!r} is not a backup id")
        return self.directory / f"{backup_id}.json"

    def backup_ids(self) -> list[str]:
        if not self.directory.is_dir():
            return []
        return sorted(p.stem for p in self.directory.glob("bkp_*.json") if BACKUP_ID.fullmatch(p.stem))

    def write(self, section: Section) -> Section:
        """Stores a section without the keys the ledger names; returns what was stored."""
        kept = self._kept(section)
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_private_file(self.path(kept.backup_id), _document(kept))
        return kept

    def _kept(self, section: Section) -> Section:
        destroyed = self._destroyed()
        return Section(
            section.backup_id, section.keyring_id, tuple(k for k in section.keys if k.key_id not in destroyed)
        )

    def read(self, backup_id: str) -> Section:
        path = self.path(backup_id)
        try:
            document = json.loads(path.read_bytes())
            if not isinstance(document, dict):
                raise ValueError
            if document.get("format") != SECTION_FORMAT or document.get("backup_id") != backup_id:
                raise ValueError
            return Section(backup_id, str(document["keyring_id"]), tuple(map(SectionKey.from_json, document["keys"])))
        except FileNotFoundError:
            raise BackupError(
                f"the key section of backup {backup_id} is not at {path}: without it the backup's templates "
                "cannot be opened (point BIOIDENT_BACKUP_KEYS_DIR at the deployment's backup keys)"
            ) from None
        except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError):  # a folder, null, a list...
            raise BackupError(f"{path} is not the key section of backup {backup_id}") from None

    def sections(self) -> tuple[list[Section], list[str]]:
        """The readable sections, and what is wrong with the others: a damaged section holds up no rotation
        (erasure goes first); its backup cannot be restored anyway."""
        readable, problems = [], []
        for backup_id in self.backup_ids():
            try:
                readable.append(self.read(backup_id))
            except BackupError as exc:
                problems.append(exc.detail)
        return readable, problems

    def check_writable(self) -> None:
        """Whether re-wrapped sections can replace the present ones: the folder takes a new file as large as
        all of them together. A rotation asks before it adds a key version, so one that cannot finish adds none."""
        paths = [self.path(backup_id) for backup_id in self.backup_ids()]
        if not paths:
            return
        try:
            size = sum(path.stat().st_size for path in paths if path.is_file())
            stage_private_file(self.directory / "probe", bytes(size)).unlink()
        except OSError as exc:
            raise BackupError(
                f"the backups' key sections in {self.directory} cannot be rewritten ({_reason(exc)})"
            ) from None

    def stage_rewrap(self, keyring: Keyring) -> StagedSections:
        """Every section under the keyring's active version, without the keys the ledger names, written to a
        temporary file beside it; ``install`` puts them in place. Damaged sections are left as they are."""
        destroyed = self._destroyed()
        rewrapped = dropped = lost = 0
        sections, problems = self.sections()
        for problem in problems:
            log.warning("backup key section left as it is: %s", problem)
        files: list[tuple[Path, Path]] = []
        try:
            for section in sections:
                keys = []
                for key in section.keys:
                    if key.key_id in destroyed:
                        dropped += 1
                        continue
                    if key.kek_version != keyring.active_version:
                        try:
                            fresh = rewrap(keyring, WrappedKey(key.kek_version, key.wrapped), context=key.context)
                        except VaultError:  # under a retired version already, or altered: opens for nobody
                            lost += 1
                            continue
                        key = SectionKey(key.key_id, key.subject_token, key.modality, fresh.kek_version, fresh.blob)
                        rewrapped += 1
                    keys.append(key)
                path = self.path(section.backup_id)
                kept = self._kept(Section(section.backup_id, section.keyring_id, tuple(keys)))
                files.append((stage_private_file(path, _document(kept)), path))
        except BaseException as exc:
            _remove(temp for temp, _ in files)
            if not isinstance(exc, OSError):
                raise
            raise BackupError(
                f"the backups' key sections in {self.directory} cannot be rewritten ({_reason(exc)}): "
                "they are as they were"
            ) from None
        return StagedSections(
            self.directory, SectionsRewrapped(len(sections), rewrapped, dropped, lost, len(problems)), files
        )

    def versions_in_use(self) -> Counter[int]:
        """How many section keys each key version wraps (a version in use must not be retired)."""
        return Counter(key.kek_version for section in self.sections()[0] for key in section.keys)

    def _destroyed(self) -> set[str]:
        return {destruction.key_id for destruction in self.ledger.read()}


def _document(section: Section) -> bytes:
    document = {
        "format": SECTION_FORMAT,
        "backup_id": section.backup_id,
        "keyring_id": section.keyring_id,
        "keys": [k.to_json() for k in section.keys],
    }
    return (json.dumps(document, indent=1) + "\n").encode()


def _remove(temps: Iterable[Path]) -> None:
    for temp in temps:
        temp.unlink(missing_ok=True)


def _reason(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__
