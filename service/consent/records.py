"""Explicit, recorded consent per subject, modality and purpose; nothing biometric happens without it."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from enum import StrEnum

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from service.audit.chain import record_event
from service.auth import Principal
from service.errors import ConsentRequired, NotFound
from service.store.models import Consent, DataKey, EnrolmentSample, EnrolmentSession, Subject, Template, utcnow


class Modality(StrEnum):
    VOICE = "voice"
    FINGERPRINT = "fingerprint"


class ConsentChannel(StrEnum):
    IVR = "ivr"
    TERMINAL = "terminal"
    PORTAL = "portal"
    AGENT = "agent"


@dataclass(frozen=True)
class ConsentTerms:
    modality: Modality
    purpose: str
    notice_version: str
    notice_sha256: str
    channel: ConsentChannel
    evidence_ref: str


def subject_in_tenant(session: Session, tenant_id: str, token: str) -> Subject:
    """The subject, if it belongs to this tenant; another tenant's subject is simply not found."""
    subject = session.get(Subject, token)
    if subject is None or subject.tenant_id != tenant_id:
        raise NotFound("no such subject")
    return subject


def ensure_subject(session: Session, tenant_id: str, token: str) -> Subject:
    subject = session.get(Subject, token)
    if subject is None:
        subject = Subject(token=token, tenant_id=tenant_id)
        session.add(subject)
        session.flush()
    return subject


def record_consent(session: Session, actor: Principal, token: str, terms: ConsentTerms) -> Consent:
    ensure_subject(session, actor.tenant_id, token)
    consent = Consent(
        subject_token=token,
        modality=str(terms.modality),
        purpose=terms.purpose,
        notice_version=terms.notice_version,
        notice_sha256=terms.notice_sha256,
        channel=str(terms.channel),
        evidence_ref=terms.evidence_ref,
        recorded_by=actor.client_id,
    )
    session.add(consent)
    session.flush()
    record_event(
        session,
        actor,
        action="consent.grant",
        outcome="granted",
        subject_token=token,
        details={
            "consent_id": consent.id,
            "modality": consent.modality,
            "purpose": consent.purpose,
            "notice_version": consent.notice_version,
            "channel": consent.channel,
        },
    )
    return consent


def active_consents(session: Session, token: str, modality: str | None = None) -> list[Consent]:
    query = select(Consent).where(Consent.subject_token == token, Consent.withdrawn_at.is_(None))
    if modality is not None:
        query = query.where(Consent.modality == modality)
    return list(session.execute(query).scalars())


def require_consent(session: Session, token: str, modality: Modality, purpose: str) -> Consent:
    for consent in active_consents(session, token, str(modality)):
        if consent.purpose == purpose:
            return consent
    raise ConsentRequired(f"the subject has no active {modality} consent for purpose '{purpose}'")


@dataclass(frozen=True)
class Shredded:
    """What a withdrawal destroyed for one modality (nothing, while another consent for it stands)."""

    data_key: bool = False
    data_key_kek_version: int | None = None
    templates: list[str] = field(default_factory=list)
    enrolment_sessions: int = 0


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


def withdraw_consent(session: Session, actor: Principal, token: str, consent_id: str) -> WithdrawalReceipt:
    """Withdraws one consent. When no consent for that modality remains, the subject's data key for it
    is destroyed and its templates and enrolment samples deleted, in this same transaction."""
    subject_in_tenant(session, actor.tenant_id, token)
    consent = session.get(Consent, consent_id)
    if consent is None or consent.subject_token != token:
        raise NotFound("no such consent for this subject")
    if consent.withdrawn_at is not None:
        raise NotFound("this consent was already withdrawn")
    now = utcnow()
    consent.withdrawn_at = now
    session.flush()
    shredded = (
        Shredded() if active_consents(session, token, consent.modality) else _shred(session, token, consent.modality)
    )
    destroyed = asdict(shredded)
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
    receipt = WithdrawalReceipt(**body, receipt_sha256=digest)
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
            "data_key_destroyed": shredded.data_key,
            "templates_deleted": len(shredded.templates),
        },
    )
    return receipt


def _shred(session: Session, token: str, modality: str) -> Shredded:
    key = session.execute(
        select(DataKey).where(DataKey.subject_token == token, DataKey.modality == modality)
    ).scalar_one_or_none()
    template_ids = list(
        session.execute(
            select(Template.id).where(Template.subject_token == token, Template.modality == modality)
        ).scalars()
    )
    session_ids = list(
        session.execute(
            select(EnrolmentSession.id).where(
                EnrolmentSession.subject_token == token, EnrolmentSession.modality == modality
            )
        ).scalars()
    )
    session.execute(delete(EnrolmentSample).where(EnrolmentSample.session_id.in_(session_ids)))
    session.execute(delete(EnrolmentSession).where(EnrolmentSession.id.in_(session_ids)))
    session.execute(delete(Template).where(Template.id.in_(template_ids)))
    if key is not None:
        session.delete(key)
    session.flush()
    return Shredded(key is not None, None if key is None else key.kek_version, template_ids, len(session_ids))
