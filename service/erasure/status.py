"""Where erasure stands: for ``bioident erasure status`` and the deployment report."""

from __future__ import annotations

from collections import Counter

from sqlalchemy.orm import Session

from service.erasure.errors import ErasureError
from service.erasure.ledger import DestructionLedger
from service.erasure.sections import BackupKeys
from service.erasure.shred import (
    SECRET_STORE_ROTATION,
    older_versions_with_material,
    secret_store_action,
    shred_reason,
)
from service.keys import secret_store_has_newer
from service.settings import ServiceSettings
from service.store.models import ERASURE_STATE_ID, KEYRING_STATE_ID, ErasureState, KeyringState, utcnow
from service.vault import Keyring


def erasure_status(session: Session, keyring: Keyring, settings: ServiceSettings) -> dict:
    """The shredding period and epoch, what may still be readable, the ledger, the backups' key sections, and
    what only the operator can do (with a keyring from a secret store, which this service cannot rotate)."""
    state = session.get(ErasureState, ERASURE_STATE_ID)
    fence = session.get(KeyringState, KEYRING_STATE_ID)
    active = next(info for info in keyring.versions() if info.version == keyring.active_version)
    older = older_versions_with_material(keyring)
    reason = shred_reason(keyring, state, fence, settings)
    ledger = DestructionLedger.of(settings, keyring)
    backups = BackupKeys.of(settings, ledger)
    sections, problems = backups.sections()
    by_version = Counter(key.kek_version for section in sections for key in section.keys)
    ledger_lines = None
    try:
        ledger_lines = len(ledger.read())
    except ErasureError as exc:
        problems.append(exc.detail)
    if ledger_lines is not None and ledger_lines < state.ledger_lines:
        problems.append(f"the ledger has {ledger_lines} lines, withdrawals appended {state.ledger_lines}: cut?")
    action = None
    if keyring.read_only:
        if reason is not None and not secret_store_has_newer(keyring, fence):
            action = SECRET_STORE_ROTATION
        elif below := [v for v in older if v < fence.min_wrap_version]:
            action = secret_store_action(below)
    return {
        "shredding_period_s": settings.shredding_period_s,
        "keyring": "BIOIDENT_KEYRING (read-only here)" if keyring.read_only else str(settings.resolved_keyring_file),
        "active_version": active.version,
        "active_version_age_s": int((utcnow() - active.created_at).total_seconds()),
        "older_versions_with_material": older,
        "destroyed_since_shred": state.destroyed_since_shred,
        "last_shred_at": None if state.last_shred_at is None else state.last_shred_at.isoformat(timespec="seconds"),
        # Residue of a destroyed data key opens while the version it was wrapped under keeps its material.
        "residue_may_be_readable": state.destroyed_since_shred > 0 or bool(older),
        "shred_due": reason is not None,
        "due_because": reason,
        "ledger": {
            "path": str(ledger.path),
            "lines": ledger_lines,
            "lines_appended_by_this_database": state.ledger_lines,
        },
        "backups": {
            "key_sections": str(backups.directory),
            "backups": len(sections),
            "data_keys_by_version": {str(v): n for v, n in sorted(by_version.items())},
        },
        "problems": problems,
        "operator_action": action,
    }
