"""Explicit, recorded consent per subject, modality and purpose; nothing biometric happens without it."""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass
from enum import StrEnum

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.auth import Principal, Role
from service.consent.receipts import ReceiptKind, issue_receipt, service_entry
from service.context import ServiceContext
from service.errors import ConsentRequired, Forbidden, NotFound, OptedOut, ReconsentRequired, ServiceError
from service.modality import Modality
from service.store.models import Consent, Receipt, Subject, WatchlistEntry, utcnow
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
    language: str | None = None  # of the notice shown, the receipt's; None: the customer's so far


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
    """The subject, if it belongs to this tenant; another tenant's subject is simply not found, and neither is a
    fraudster watchlist entry's row (it only owns the entry's data key: no customer)."""
    subject = session.get(Subject, token)
    if subject is None or subject.tenant_id != tenant_id or session.get(WatchlistEntry, token) is not None:
        raise NotFound("no such subject")
    return subject


def lock_subject(session: Session, token: str) -> None:
    """Holds the subject's row until the transaction ends (PostgreSQL; SQLite writes one at a time anyway), so
    that a withdrawal and an enrolment, or two verifications counting failures, never interleave."""
    session.execute(select(Subject).where(Subject.token == token).with_for_update()).scalar_one_or_none()


def require_consent_to_enrol(session: Session, tenant_id: str, token: str, modality: Modality, purpose: str) -> Consent:
    """Consent before an enrolment of any modality: a customer with no record here is told to give consent
    first, and a customer who asked never to be enrolled is refused whatever consent stands."""
    subject = session.get(Subject, token)
    if subject is None or subject.tenant_id != tenant_id:
        raise ConsentRequired(
            f"no {modality} consent is recorded for this customer: record it first (POST /v1/consents)"
        )
    refuse_if_opted_out(session, token)
    return require_consent(session, token, modality, purpose)


def refuse_if_opted_out(session: Session, token: str) -> None:
    """Every enrolment (start, and storing a template) calls this: "never enrol me" holds until the customer
    lifts it in the portal."""
    subject = session.get(Subject, token)
    if subject is not None and subject.never_enrol_at is not None:
        raise OptedOut("the customer asked never to be enrolled; only they can lift that, in the portal")


def set_never_enrol(session: Session, actor: Principal, token: str, *, never: bool) -> Subject:
    """Sets (the customer or the portal client) or lifts (the customer, in the portal) "never enrol me"."""
    subject = ensure_subject(session, actor.tenant_id, token)
    if subject.tenant_id != actor.tenant_id:
        raise NotFound("no such subject")
    if never and subject.never_enrol_at is None:
        subject.never_enrol_at = utcnow()
    elif not never:
        subject.never_enrol_at = None
    session.flush()
    record_event(
        session, actor, action="subject.never_enrol", outcome="set" if never else "lifted", subject_token=token
    )
    return subject


def note_activity(session: Session, token: str) -> None:
    """The customer interacted (gave consent, was verified): retention counts from now."""
    subject = session.get(Subject, token)
    if subject is not None:
        subject.last_active_at = utcnow()
        session.flush()


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
    """Stores, audits and gives a signed receipt for a consent (whoever records it: a client or the portal)."""
    return record_consent_with_receipt(session, actor, token, terms)[0]


def record_consent_with_receipt(
    session: Session, actor: Principal, token: str, terms: ConsentTerms
) -> tuple[Consent, Receipt]:
    """``record_consent``, and the signed receipt it stored."""
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
    note_activity(session, token)
    receipt = issue_receipt(
        session,
        kind=ReceiptKind.GRANT,
        subject_token=token,
        tenant_id=actor.tenant_id,
        channel=consent.channel,
        services=[service_entry(consent.modality, consent.purpose, notice_version=consent.notice_version)],
        event={
            "consent_id": consent.id,
            "state": "given",
            "notice_sha256": consent.notice_sha256,
            "recorded_by": consent.recorded_by,
        },
        language=terms.language,
    )
    return consent, receipt


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
