"""Key-encryption key rotation and retirement: the fence that keeps replicas from wrapping under old keys.

``rotate_keys`` raises the deployment's fence to the keyring's active version and re-wraps every data
key under it (templates stay sealed as they are), and the key sections of backups too; ``retire_key``
destroys an old version once no data key and no backup's key section needs it, or, for a keyring held
in a secret store, says it is safe to destroy there.

Everything that changes the keyring file does it holding the fence row exclusively, and the keyring
reads its file again before changing it, so rotations on several hosts sharing one keyring file (the
operator's and the shredding schedule's, ``service.erasure.shred``) never undo each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.erasure.errors import BackupError
from service.erasure.sections import BackupKeys, SectionsRewrapped
from service.errors import Conflict
from service.protected import lock_fence, rewrap_all
from service.store.db import Database
from service.store.models import KEYRING_STATE_ID, DataKey, KeyringState
from service.trail.chain import append
from service.vault import Keyring


@dataclass(frozen=True)
class Rotation:
    active_version: int
    rewrapped: int
    backups: SectionsRewrapped | None = None


def rotate_keys(db: Database, keyring: Keyring, backups: BackupKeys | None = None) -> Rotation:
    with db.session() as session:
        rotation = rotate_under_fence(session, lock_fence(session, exclusive=True), keyring, backups)
        append(
            session,
            actor="operator",
            action="keys.rotate",
            outcome="rotated",
            details={"active_version": rotation.active_version, "data_keys_rewrapped": rotation.rewrapped},
        )
    return rotation


def rotate_under_fence(session: Session, fence: KeyringState, keyring: Keyring, backups: BackupKeys | None) -> Rotation:
    """With the fence row held exclusively: a new version (a keyring from BIOIDENT_KEYRING gets its new
    version in the secret store), every data key and every backup's key section re-wrapped under it.

    A rotation that fails leaves the data keys and the sections as they were. What can be checked (the
    sections' folder takes new files) is checked before a version is added to the keyring file; a version
    added stays even when a later step fails, as a replica may have loaded the file already and be about to
    wrap a data key under it. The sections go to temporary files first, renamed into place only once all
    of them and the data keys were re-wrapped."""
    if keyring.read_only and not secret_store_has_newer(keyring, fence):
        # Nothing to rotate to: the fence is already there, or the secret store holds no older version.
        raise Conflict(
            f"BIOIDENT_KEYRING has no version newer than {keyring.active_version}, which the deployment "
            "already uses; add one in the secret store and redeploy first"
        )
    if backups is not None:
        try:
            backups.check_writable()
        except BackupError as exc:
            raise BackupError(f"{exc.detail}; the rotation changed nothing (no new key version)") from None
    version = keyring.active_version if keyring.read_only else keyring.add_version()
    staged = None
    try:
        staged = None if backups is None else backups.stage_rewrap(keyring)
        count = rewrap_all(session, keyring)
        if staged is not None:
            staged.install()
    except BackupError as exc:
        added = "" if keyring.read_only else f"; key version {version}, added to the keyring file, wraps nothing yet"
        raise BackupError(f"{exc.detail}; no data key was re-wrapped{added}") from None
    finally:
        if staged is not None:
            staged.discard()  # what was not installed
    return Rotation(version, count, None if staged is None else staged.outcome)


def deployment_wrap_version(db: Database) -> int:
    """The key version the deployment's replicas wrap under at least (raised by every rotation)."""
    with db.session() as session:
        return session.get(KeyringState, KEYRING_STATE_ID).min_wrap_version


def secret_store_has_newer(keyring: Keyring, fence: KeyringState) -> bool:
    """Whether a keyring from a secret store holds a version to re-wrap under: newer than the one in use, with
    an older one to move away from."""
    version = keyring.active_version
    return fence.min_wrap_version < version and any(info.version < version for info in keyring.versions())


class Retirement(Enum):
    RETIRED = "retired"  # its material is gone from the keyring file now
    ALREADY_RETIRED = "already retired"  # nothing changed
    CLEARED = "cleared"  # its material lives in the secret store, where it may now be destroyed


def retire_key(
    db: Database, keyring: Keyring, version: int, backups: BackupKeys | None = None, *, actor: str = "operator"
) -> Retirement:
    """Retires ``version`` once no data key and no backup's key section is wrapped under it."""
    with db.session() as session:
        fence = lock_fence(session, exclusive=True)  # no data key is being wrapped while we count and retire
        in_use = session.execute(
            select(func.count()).select_from(DataKey).where(DataKey.kek_version == version)
        ).scalar_one()
        if in_use:
            raise Conflict(
                f"{in_use} data keys are still wrapped by version {version}; run 'bioident keys rotate' first"
            )
        in_backups = 0 if backups is None else backups.versions_in_use()[version]
        if in_backups:
            raise Conflict(
                f"{in_backups} data keys of backups are still wrapped by version {version}; "
                "run 'bioident keys rotate' first"
            )
        if keyring.read_only:  # its material lives in the secret store: say it is safe to destroy there
            known = {info.version for info in keyring.versions()}
            if version not in known or version >= fence.min_wrap_version:
                raise Conflict(
                    f"version {version} is "
                    + ("not in BIOIDENT_KEYRING" if version not in known else "still one replicas may wrap under")
                    + f"; only versions below {fence.min_wrap_version} (after 'bioident keys rotate') can go"
                )
            append(session, actor=actor, action="keys.retire", outcome="cleared", details={"version": version})
            return Retirement.CLEARED
        if not keyring.retire(version):
            return Retirement.ALREADY_RETIRED
        append(session, actor=actor, action="keys.retire", outcome="retired", details={"version": version})
    return Retirement.RETIRED
