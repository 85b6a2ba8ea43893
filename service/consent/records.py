"""Explicit, recorded consent per subject, modality and purpose; nothing biometric happens without it."""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass
from enum import StrEnum

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.auth import Principal, Role
from service.context import ServiceContext
from service.errors import ConsentRequired, Forbidden, NotFound, ReconsentRequired, ServiceError
from service.modality import Modality
from service.store.models import Consent, Subject
from service.trail.chain import record_event

# Clients that record consent at the point of capture record it for their own modality only.
MODALITY_OF_ROLE = {Role.IVR: Modality.VOICE, Role.TERMINAL: Modality.FINGERPRINT}


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


def notice_digest(notice_text: str | None, notice_sha256: str | None) -> str:
    """The SHA-256 of the notice the customer was shown: sent as such, or of its text (never stored)."""
    if (notice_text is None) == (notice_sha256 is None):
        raise ServiceError("send exactly one of notice_text and notice_sha256")
    return notice_sha256 or hashlib.sha256(notice_text.encode()).hexdigest()


def grant_consent(ctx: ServiceContext, actor: Principal, reference: str, terms: ConsentTerms) -> Consent:
    """Records a customer's consent: checks that this client may record it, then stores and audits it."""
    if actor.role in MODALITY_OF_ROLE and terms.modality is not MODALITY_OF_ROLE[actor.role]:
        raise Forbidden(f"the {actor.role} role records {MODALITY_OF_ROLE[actor.role]} consent only")
    token = ctx.token(actor.tenant_id, reference)
    with ctx.db.session() as session:
        return record_consent(session, actor, token, terms)


def lookup_subject(ctx: ServiceContext, actor: Principal, reference: str) -> str:
    """The token of a customer of this tenant who has a record here."""
    token = ctx.token(actor.tenant_id, reference)
    with ctx.db.session() as session:
        subject_in_tenant(session, actor.tenant_id, token)
    return token


def consents_of(ctx: ServiceContext, actor: Principal, token: str) -> list[Consent]:
    """Every consent of a subject of this tenant, oldest first, withdrawn ones included."""
    with ctx.db.session() as session:
        subject_in_tenant(session, actor.tenant_id, token)
        query = select(Consent).where(Consent.subject_token == token).order_by(Consent.granted_at)
        return list(session.execute(query).scalars())


def subject_in_tenant(session: Session, tenant_id: str, token: str) -> Subject:
    """The subject, if it belongs to this tenant; another tenant's subject is simply not found."""
    subject = session.get(Subject, token)
    if subject is None or subject.tenant_id != tenant_id:
        raise NotFound("no such subject")
    return subject


def lock_subject(session: Session, token: str) -> None:
    """Holds the subject's row until the transaction ends (PostgreSQL; SQLite writes one at a time anyway), so
    that a withdrawal and an enrolment, or two verifications counting failures, never interleave."""
    session.execute(select(Subject).where(Subject.token == token).with_for_update()).scalar_one_or_none()


def require_consent_to_enrol(session: Session, tenant_id: str, token: str, modality: Modality, purpose: str) -> Consent:
    """Consent before an enrolment: a customer with no record here is told to give consent first."""
    subject = session.get(Subject, token)
    if subject is None or subject.tenant_id != tenant_id:
        raise ConsentRequired(
            f"no {modality} consent is recorded for this customer: record it first (POST /v1/consents)"
        )
    return require_consent(session, token, modality, purpose)


def require_fresh_consent(
    session: Session, token: str, modality: Modality, purpose: str, since: dt.datetime
) -> Consent:
    """An active consent for the purpose given after ``since``: what replacing an enrolled template needs."""
    for consent in active_consents(session, token, str(modality)):
        if consent.purpose == purpose and consent.granted_at > since:
            return consent
    raise ReconsentRequired(
        f"replacing an enrolled {modality} template needs consent recorded after it was last changed: "
        "record the customer's consent again first"
    )


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
