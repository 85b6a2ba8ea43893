"""Protected templates: per-subject data keys wrapped by the keyring, templates sealed under them.

Plaintext exists only in memory inside a use case. Destroying a subject's data key row makes every
ciphertext sealed under it unrecoverable (crypto-shredding).
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.store.models import KEYRING_STATE_ID, DataKey, KeyringState, Template, utcnow
from service.vault import (
    Keyring,
    KeyringOutdated,
    TemplateBinding,
    WrappedKey,
    data_key_context,
    new_data_key,
    open_sealed,
    rewrap,
    seal,
    unwrap_data_key,
    wrap_data_key,
)


def data_key(session: Session, keyring: Keyring, subject_token: str, modality: str, *, create: bool) -> bytes | None:
    row = session.execute(
        select(DataKey).where(DataKey.subject_token == subject_token, DataKey.modality == modality)
    ).scalar_one_or_none()
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
        DataKey(subject_token=subject_token, modality=modality, kek_version=wrapped.kek_version, wrapped=wrapped.blob)
    )
    session.flush()
    return key


def unwrap_row(keyring: Keyring, row: DataKey) -> bytes:
    context = data_key_context(row.subject_token, row.modality)
    return unwrap_data_key(keyring, WrappedKey(row.kek_version, row.wrapped), context=context)


def binding(template: Template) -> TemplateBinding:
    return TemplateBinding(template.subject_token, template.modality, template.id, template.model_fingerprint)


def seal_into(template: Template, key: bytes, plaintext: bytes) -> None:
    template.sealed = seal(key, plaintext, aad=binding(template))
    template.updated_at = utcnow()


def open_template(template: Template, key: bytes) -> bytes:
    return open_sealed(key, template.sealed, aad=binding(template))


def lock_fence(session: Session, *, exclusive: bool) -> KeyringState:
    """The keyring state row, locked until the transaction ends (shared, or exclusive to raise its fence)."""
    query = select(KeyringState).where(KeyringState.id == KEYRING_STATE_ID).with_for_update(read=not exclusive)
    return session.execute(query).scalar_one()


def rewrap_all(session: Session, keyring: Keyring) -> int:
    """Fences off older key versions and re-wraps every data key under the active one (templates stay sealed).

    Raising the fence first waits for data keys being wrapped elsewhere and refuses replicas whose
    keyring predates this one; the re-wrap then sees every data key there will be under older versions.
    """
    fence = lock_fence(session, exclusive=True)
    fence.min_wrap_version = max(fence.min_wrap_version, keyring.active_version)
    session.flush()
    count = 0
    for row in session.execute(select(DataKey)).scalars():
        if row.kek_version == keyring.active_version:
            continue
        fresh = rewrap(
            keyring, WrappedKey(row.kek_version, row.wrapped), context=data_key_context(row.subject_token, row.modality)
        )
        row.kek_version, row.wrapped = fresh.kek_version, fresh.blob
        count += 1
    session.flush()
    return count
