"""The key sections of backups: each backup's data keys, kept beside the ledger, never inside the backup.

A backup made with ``bioident backup`` holds the database without its data keys; its data keys go to
one file here per backup, wrapped under the keyring like the database's own. Every rotation re-wraps
them under the new key version and drops the keys the destruction ledger names, before the old version
is retired. So a backup stays restorable for every live subject across rotations, while a destroyed
subject's key is in no section (and every older copy of a section opens with a retired version only).
"""

from __future__ import annotations

import base64
import json
import logging
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from service.erasure.errors import BackupError
from service.erasure.ledger import DestructionLedger
from service.settings import ServiceSettings
from service.vault import Keyring, VaultError, WrappedKey, data_key_context, rewrap, unwrap_data_key
from service.vault.keyring import write_private_file

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
        destroyed = self._destroyed()
        kept = Section(
            section.backup_id, section.keyring_id, tuple(k for k in section.keys if k.key_id not in destroyed)
        )
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        document = {
            "format": SECTION_FORMAT,
            "backup_id": kept.backup_id,
            "keyring_id": kept.keyring_id,
            "keys": [k.to_json() for k in kept.keys],
        }
        write_private_file(self.path(kept.backup_id), (json.dumps(document, indent=1) + "\n").encode())
        return kept

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

    def rewrap(self, keyring: Keyring) -> SectionsRewrapped:
        """Every section under the keyring's active version, without the keys the ledger names."""
        destroyed = self._destroyed()
        rewrapped = dropped = lost = 0
        sections, problems = self.sections()
        for problem in problems:
            log.warning("backup key section left as it is: %s", problem)
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
            self.write(Section(section.backup_id, section.keyring_id, tuple(keys)))
        return SectionsRewrapped(len(sections), rewrapped, dropped, lost, len(problems))

    def versions_in_use(self) -> Counter[int]:
        """How many section keys each key version wraps (a version in use must not be retired)."""
        return Counter(key.kek_version for section in self.sections()[0] for key in section.keys)

    def _destroyed(self) -> set[str]:
        return {destruction.key_id for destruction in self.ledger.read()}
