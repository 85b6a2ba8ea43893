"""Protected templates: per-subject data keys wrapped by the keyring, templates sealed under them.

Plaintext exists only in memory inside a use case. Destroying a subject's data key row makes every
ciphertext sealed under it unrecoverable (crypto-shredding).
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.store.models import DataKey, Template, utcnow
from service.vault import (
    Keyring,
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


def rewrap_all(session: Session, keyring: Keyring) -> int:
    """Re-wraps every data key under the active key version; templates are not decrypted."""
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
