"""Key-encryption key rotation and retirement: the fence that keeps replicas from wrapping under old keys.

``rotate_keys`` raises the deployment's fence to the keyring's active version and re-wraps every data
key under it (templates stay sealed as they are); ``retire_key`` destroys an old version once no data
key needs it, or, for a keyring held in a secret store, says it is safe to destroy there.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select

from service.errors import Conflict
from service.protected import lock_fence, rewrap_all
from service.store.db import Database
from service.store.models import DataKey
from service.trail.chain import append
from service.vault import Keyring


@dataclass(frozen=True)
class Rotation:
    active_version: int
    rewrapped: int


def rotate_keys(db: Database, keyring: Keyring) -> Rotation:
    # A keyring from BIOIDENT_KEYRING gets its new version in the secret store; this re-wraps under it.
    version = keyring.active_version if keyring.read_only else keyring.add_version()
    with db.session() as session:
        # Nothing to rotate to: the fence is already there, or the secret store holds no older version.
        if keyring.read_only and (
            lock_fence(session, exclusive=True).min_wrap_version >= version
            or not any(info.version < version for info in keyring.versions())
        ):
            raise Conflict(
                f"BIOIDENT_KEYRING has no version newer than {version}, which the deployment "
                "already uses; add one in the secret store and redeploy first"
            )
        count = rewrap_all(session, keyring)
        append(
            session,
            actor="operator",
            action="keys.rotate",
            outcome="rotated",
            details={"active_version": version, "data_keys_rewrapped": count},
        )
    return Rotation(version, count)


def retire_key(db: Database, keyring: Keyring, version: int) -> bool:
    """Retires ``version``; False when its material lives in the secret store, where it may now be destroyed."""
    with db.session() as session:
        fence = lock_fence(session, exclusive=True)  # no data key is being wrapped while we count and retire
        in_use = session.execute(
            select(func.count()).select_from(DataKey).where(DataKey.kek_version == version)
        ).scalar_one()
        if in_use:
            raise Conflict(
                f"{in_use} data keys are still wrapped by version {version}; run 'bioident keys rotate' first"
            )
        if keyring.read_only:  # its material lives in the secret store: say it is safe to destroy there
            known = {info.version for info in keyring.versions()}
            if version not in known or version >= fence.min_wrap_version:
                raise Conflict(
                    f"version {version} is "
                    + ("not in BIOIDENT_KEYRING" if version not in known else "still one replicas may wrap under")
                    + f"; only versions below {fence.min_wrap_version} (after 'bioident keys rotate') can go"
                )
            append(session, actor="operator", action="keys.retire", outcome="cleared", details={"version": version})
            return False
        keyring.retire(version)
        append(session, actor="operator", action="keys.retire", outcome="retired", details={"version": version})
    return True
