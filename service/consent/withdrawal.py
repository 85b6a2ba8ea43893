"""Withdrawal of consent: the last consent for a modality gone, the subject's data for it is crypto-shredded."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

from sqlalchemy.orm import Session

from service.auth import Principal
from service.consent import registry
from service.consent.records import active_consents, subject_in_tenant
from service.context import ServiceContext
from service.errors import Conflict, NotFound
from service.modality import Modality
from service.protected import destroy_data_key
from service.store.models import Consent, utcnow
from service.trail.chain import record_event


@dataclass(frozen=True)
class WithdrawalReceipt:
    receipt_id: str
    subject_token: str
    consent_id: str
    modality: str
    purpose: str
    withdrawn_at: str
    destroyed: dict = field(default_factory=dict)
    receipt_sha256: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def withdraw(ctx: ServiceContext, actor: Principal, token: str, consent_id: str) -> WithdrawalReceipt:
    with ctx.db.session() as session:
        return withdraw_consent(session, actor, token, consent_id)


def withdraw_consent(session: Session, actor: Principal, token: str, consent_id: str) -> WithdrawalReceipt:
    """Withdraws one consent. When no consent for that modality remains, the subject's data key for it
    is destroyed and its sealed data (``service.consent.registry``) deleted, in this same transaction."""
    subject_in_tenant(session, actor.tenant_id, token)
    consent = session.get(Consent, consent_id)
    if consent is None or consent.subject_token != token:
        raise NotFound("no such consent for this subject")
    if consent.withdrawn_at is not None:
        raise Conflict("this consent was already withdrawn")
    now = utcnow()
    consent.withdrawn_at = now
    session.flush()
    destroyed = _shred(session, token, Modality(consent.modality))
    body = {
        "receipt_id": f"rcp_{consent.id.removeprefix('con_')}",
        "subject_token": token,
        "consent_id": consent.id,
        "modality": consent.modality,
        "purpose": consent.purpose,
        "withdrawn_at": now.isoformat(timespec="seconds"),
        "destroyed": destroyed,
    }
    digest = hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    record_event(
        session,
        actor,
        action="consent.withdraw",
        outcome="withdrawn",
        subject_token=token,
        details={
            "consent_id": consent.id,
            "modality": consent.modality,
            "receipt_sha256": digest,
            "data_key_destroyed": destroyed["data_key"],
            "templates_deleted": len(destroyed["templates"]),
        },
    )
    return WithdrawalReceipt(**body, receipt_sha256=digest)


def _shred(session: Session, token: str, modality: Modality) -> dict:
    """What was destroyed: nothing while another consent for the modality stands."""
    if active_consents(session, token, str(modality)):
        return {"data_key": False, "data_key_kek_version": None, **registry.nothing_erased(modality)}
    erased = registry.erase(session, token, modality)
    key = destroy_data_key(session, token, str(modality))
    return {"data_key": key is not None, "data_key_kek_version": None if key is None else key.kek_version, **erased}
