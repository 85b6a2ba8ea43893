"""Protected templates: per-subject data keys wrapped by the keyring, templates sealed under them.

Plaintext exists only in memory inside a use case. Destroying a subject's data key row makes every
ciphertext sealed under it unrecoverable (crypto-shredding): ``destroy_data_key`` is the one place
that does it.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from service.store.models import KEYRING_STATE_ID, KeyringState, Template, utcnow
from service.store.models import DataKey as DataKeyRow
from service.vault import (
    DataKey,
    Keyring,
    KeyringOutdated,
    TemplateBinding,
    WrappedKey,
    data_key_context,
    new_data_key,
    rewrap,
    unwrap_data_key,
    wrap_data_key,
)


def data_key(session: Session, keyring: Keyring, subject_token: str, modality: str, *, create: bool) -> DataKey | None:
    """The subject's data key for ``modality``; with ``create``, a new one is wrapped and stored when it has none."""
    row = _data_key_row(session, subject_token, modality)
    if row is not None:
        return unwrap_row(keyring, row)
    if not create:
        return None
    fence = lock_fence(session, exclusive=False)
    if keyring.active_version < fence.min_wrap_version:
        raise KeyringOutdated(
            f"this replica's keyring is older than the deployment's (active key version {keyring.active_version}, "
            f"the deployment's is {fence.min_wrap_version}): reload the keyring or restart the replica",
            reloads=not keyring.read_only,
        )
    key = new_data_key()
    wrapped = wrap_data_key(keyring, key, context=data_key_context(subject_token, modality))
    session.add(
        DataKeyRow(
            subject_token=subject_token, modality=modality, kek_version=wrapped.kek_version, wrapped=wrapped.blob
        )
    )
    session.flush()
    return key


def _data_key_row(session: Session, subject_token: str, modality: str, *, lock: bool = False) -> DataKeyRow | None:
    query = select(DataKeyRow).where(DataKeyRow.subject_token == subject_token, DataKeyRow.modality == modality)
    if lock:  # as it is now, held until the transaction ends
        query = query.with_for_update().execution_options(populate_existing=True)
    return session.execute(query).scalar_one_or_none()


def lock_data_keys(session: Session, subject_token: str) -> None:
    """Holds the subject's data key rows (PostgreSQL) in id order, the order a rotation re-wraps them in, so
    that an erasure destroying several and a rotation never wait on each other crosswise (a deadlock)."""
    query = select(DataKeyRow.id).where(DataKeyRow.subject_token == subject_token).order_by(DataKeyRow.id)
    session.execute(query.with_for_update()).all()


@dataclass(frozen=True)
class DestroyedKey:
    key_id: str
    kek_version: int


def destroy_data_key(session: Session, subject_token: str, modality: str) -> DestroyedKey | None:
    """Crypto-shreds the subject's data for ``modality``: once its data key is gone, nothing sealed under
    it can be opened again. None when the subject had no such key.

    Copies of the wrapped key outside this row (PostgreSQL's dead rows and WAL, backups) open with the
    key version it was wrapped under until that version is retired: the destruction ledger and the
    shredding schedule (``service.erasure``) see to those."""
    # Locked as read: a rotation re-wrapping it commits first, and the ledger names the version it went under.
    row = _data_key_row(session, subject_token, modality, lock=True)
    if row is None:
        return None
    destroyed = DestroyedKey(row.key_id, row.kek_version)
    session.delete(row)
    session.flush()
    return destroyed


def unwrap_row(keyring: Keyring, row: DataKeyRow) -> DataKey:
    context = data_key_context(row.subject_token, row.modality)
    return unwrap_data_key(keyring, WrappedKey(row.kek_version, row.wrapped), context=context)


def binding(template: Template) -> TemplateBinding:
    return TemplateBinding(template.subject_token, template.modality, template.id, template.model_fingerprint)


def seal_into(template: Template, key: DataKey, plaintext: bytes) -> None:
    template.sealed = key.seal(plaintext, aad=binding(template))
    template.updated_at = utcnow()


def open_template(template: Template, key: DataKey) -> bytes:
    return key.open(template.sealed, aad=binding(template))


def lock_fence(session: Session, *, exclusive: bool) -> KeyringState:
    """The keyring state row, locked until the transaction ends (shared, or exclusive to raise its fence)."""
    query = select(KeyringState).where(KeyringState.id == KEYRING_STATE_ID).with_for_update(read=not exclusive)
    return session.execute(query).scalar_one()


def rewrap_all(session: Session, keyring: Keyring) -> int:
    """Fences off older key versions and re-wraps every data key under the active one (templates stay sealed).

    Raising the fence first waits for data keys being wrapped elsewhere and refuses replicas whose
    keyring predates this one; the re-wrap then sees every data key there will be under older versions.
    A withdrawal does not wait for the fence: a key it destroys meanwhile (PostgreSQL) is skipped, as there
    is nothing left to re-wrap, rather than failing the whole rotation. Returns the keys re-wrapped.
    """
    fence = lock_fence(session, exclusive=True)
    fence.min_wrap_version = max(fence.min_wrap_version, keyring.active_version)
    session.flush()
    count = 0
    older = select(
        DataKeyRow.id, DataKeyRow.subject_token, DataKeyRow.modality, DataKeyRow.kek_version, DataKeyRow.wrapped
    ).where(DataKeyRow.kek_version != keyring.active_version).order_by(DataKeyRow.id)  # the order erasures lock in
    for row_id, token, modality, version, wrapped in session.execute(older).all():
        fresh = rewrap(keyring, WrappedKey(version, wrapped), context=data_key_context(token, modality))
        still_there = (DataKeyRow.id == row_id) & (DataKeyRow.kek_version == version)
        result = session.execute(
            update(DataKeyRow).where(still_there).values(kek_version=fresh.kek_version, wrapped=fresh.blob)
        )
        count += result.rowcount
    return count
