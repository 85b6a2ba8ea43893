"""Which keyring a deployment uses: loading it, creating it for a new deployment, binding it to the database.

A keyring is created only for a database that holds nothing made with one, and the first keyring
loaded against a database is bound to it (``keyring_state.keyring_id``). Any other keyring is
refused afterwards, so a host with a missing or different keyring file gets a clear error instead
of a keyring that can open none of the data and makes an intact audit trail look tampered with.
"""

from __future__ import annotations

import hmac
from pathlib import Path

from sqlalchemy import exists, select, update
from sqlalchemy.orm import Session

from service.settings import ServiceSettings
from service.store.db import Database
from service.store.models import KEYRING_STATE_ID, AuditEntry, AuditHead, DataKey, KeyringState, Subject
from service.vault import Keyring, KeyringMismatch, KeyringMissing


def load_keyring(settings: ServiceSettings, db: Database | None = None, *, create: bool = False) -> Keyring:
    """``BIOIDENT_KEYRING``, else the keyring file; checked against (or bound to) ``db`` when given.

    With ``create``, a missing file is created while ``db`` holds nothing made with a keyring.
    """
    if settings.keyring:
        keyring, created = Keyring.from_document(settings.keyring), None
    else:
        keyring, created = _from_file(settings.resolved_keyring_file, db if create else None)
    origin = keyring_origin(settings)
    if db is not None:
        try:
            bind_keyring(db, keyring, origin)
        except KeyringMismatch:
            if created is not None:  # ours, made a moment ago: leave nothing behind for the next start
                created.unlink(missing_ok=True)
            raise
    return keyring


def keyring_origin(settings: ServiceSettings) -> str:
    """Where the deployment's keyring comes from, as messages name it."""
    return "BIOIDENT_KEYRING" if settings.keyring else str(settings.resolved_keyring_file)


def _from_file(path: Path, create_for: Database | None) -> tuple[Keyring, Path | None]:
    try:
        return Keyring.load(path), None
    except KeyringMissing:
        if create_for is None:
            raise
    if holds_keyring_made_data(create_for):
        raise KeyringMissing(
            f"no keyring at {path}, and the database holds data made with one (subjects, data keys or "
            "signed audit entries): restore the deployment's keyring file there, or set BIOIDENT_KEYRING; "
            "a new keyring could open none of it"
        )
    return Keyring.load_or_create(path), path


def holds_keyring_made_data(db: Database) -> bool:
    with db.session() as session:
        return any(
            session.execute(select(exists().where(condition))).scalar_one()
            for condition in (Subject.token.is_not(None), DataKey.id.is_not(None), AuditEntry.entry_mac.is_not(None))
        )


def bind_keyring(db: Database, keyring: Keyring, origin: str) -> None:
    """Binds ``keyring`` to a database that has none yet; refuses it where another one is bound."""
    query = select(KeyringState.keyring_id).where(KeyringState.id == KEYRING_STATE_ID)
    with db.session() as session:
        bound = session.execute(query).scalar_one()
        if bound is None:  # written only once, so a read-only role can verify a bound database
            if not _opens_existing_data(session, keyring):
                raise KeyringMismatch(
                    f"the keyring from {origin} (id {keyring.identity()[:12]}) does not open this database's "
                    "data (its signed audit head or its data keys): point BIOIDENT_KEYRING_FILE or "
                    "BIOIDENT_KEYRING at the deployment's keyring"
                )
            session.execute(
                update(KeyringState)
                .where(KeyringState.id == KEYRING_STATE_ID, KeyringState.keyring_id.is_(None))
                .values(keyring_id=keyring.identity())
            )
            bound = session.execute(query).scalar_one()
    require_same_keyring(keyring, bound, origin)


def _opens_existing_data(session: Session, keyring: Keyring) -> bool:
    """For a database made before keyrings were bound: the keyring verifies its head or opens a data key."""
    from service.protected import unwrap_row
    from service.trail.chain import HEAD_ID, head_mac
    from service.vault import VaultError

    head = session.get(AuditHead, HEAD_ID)
    if head is not None and head.last_mac is not None:
        return hmac.compare_digest(head.last_mac, head_mac(keyring.audit_key(), head.last_seq, head.last_hash))
    row = session.execute(select(DataKey).limit(1)).scalar_one_or_none()
    if row is None:
        return True  # nothing a keyring could prove itself against (at most subjects)
    try:
        unwrap_row(keyring, row)
    except VaultError:
        return False
    return True


def require_same_keyring(keyring: Keyring, bound_id: str, origin: str) -> None:
    ours = keyring.identity()
    if ours != bound_id:
        raise KeyringMismatch(
            f"the keyring from {origin} (id {ours[:12]}) is not the one this database was set up with "
            f"(id {bound_id[:12]}): point BIOIDENT_KEYRING_FILE or BIOIDENT_KEYRING at the deployment's keyring"
        )
