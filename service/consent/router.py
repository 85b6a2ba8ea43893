"""Consent records and what is held about a subject (portal role; the IVR may record voice consent)."""

from __future__ import annotations

import hashlib

from fastapi import APIRouter, Depends
from sqlalchemy import select

from service.api.deps import get_ctx, id_path, require
from service.api.schemas import ConsentIn, ConsentOut, LookupIn
from service.auth import Principal, Role
from service.consent.records import (
    ConsentTerms,
    Modality,
    record_consent,
    subject_in_tenant,
    withdraw_consent,
)
from service.context import ServiceContext
from service.errors import Forbidden, ServiceError
from service.store.models import Consent, EnrolmentSession, Template

router = APIRouter(prefix="/v1", tags=["consent"])
portal = require(Role.PORTAL)
recorder = require(Role.PORTAL, Role.IVR, Role.TERMINAL)
MODALITY_OF_ROLE = {Role.IVR: Modality.VOICE, Role.TERMINAL: Modality.FINGERPRINT}


def consent_out(c: Consent) -> ConsentOut:
    return ConsentOut(
        id=c.id, subject_token=c.subject_token, modality=c.modality, purpose=c.purpose,
        notice_version=c.notice_version, notice_sha256=c.notice_sha256, channel=c.channel,
        evidence_ref=c.evidence_ref, recorded_by=c.recorded_by, granted_at=c.granted_at,
        withdrawn_at=c.withdrawn_at, active=c.withdrawn_at is None,
    )  # fmt: skip


@router.post("/consents", status_code=201, response_model=ConsentOut)
def grant_consent(
    body: ConsentIn, ctx: ServiceContext = Depends(get_ctx), actor: Principal = Depends(recorder)
) -> ConsentOut:
    if actor.role in MODALITY_OF_ROLE and body.modality is not MODALITY_OF_ROLE[actor.role]:
        raise Forbidden(f"the {actor.role} role records {MODALITY_OF_ROLE[actor.role]} consent only")
    if (body.notice_text is None) == (body.notice_sha256 is None):
        raise ServiceError("send exactly one of notice_text and notice_sha256")
    notice_sha256 = body.notice_sha256 or hashlib.sha256(body.notice_text.encode()).hexdigest()
    terms = ConsentTerms(
        body.modality, body.purpose, body.notice_version, notice_sha256, body.channel, body.evidence_ref
    )
    token = ctx.token(actor.tenant_id, body.reference)
    with ctx.db.session() as session:
        consent = record_consent(session, actor, token, terms)
        return consent_out(consent)


@router.post("/subjects:lookup")
def lookup_subject(body: LookupIn, ctx: ServiceContext = Depends(get_ctx), actor: Principal = Depends(portal)) -> dict:
    token = ctx.token(actor.tenant_id, body.reference)
    with ctx.db.session() as session:
        subject_in_tenant(session, actor.tenant_id, token)
    return {"subject_token": token}


@router.get("/subjects/{token}/consents", response_model=list[ConsentOut])
def list_consents(
    token: str = id_path(), ctx: ServiceContext = Depends(get_ctx), actor: Principal = Depends(portal)
) -> list[ConsentOut]:
    with ctx.db.session() as session:
        subject_in_tenant(session, actor.tenant_id, token)
        rows = session.execute(select(Consent).where(Consent.subject_token == token).order_by(Consent.granted_at))
        return [consent_out(c) for c in rows.scalars()]


@router.post("/subjects/{token}/consents/{consent_id}:withdraw")
def withdraw(
    token: str = id_path(),
    consent_id: str = id_path(),
    ctx: ServiceContext = Depends(get_ctx),
    actor: Principal = Depends(portal),
) -> dict:
    with ctx.db.session() as session:
        return withdraw_consent(session, actor, token, consent_id).as_dict()


@router.get("/subjects/{token}")
def what_is_held(
    token: str = id_path(), ctx: ServiceContext = Depends(get_ctx), actor: Principal = Depends(portal)
) -> dict:
    """Everything held about a subject, as the customer may see it: never template contents."""
    with ctx.db.session() as session:
        subject = subject_in_tenant(session, actor.tenant_id, token)
        consents = session.execute(select(Consent).where(Consent.subject_token == token)).scalars()
        templates = session.execute(select(Template).where(Template.subject_token == token)).scalars()
        sessions = session.execute(select(EnrolmentSession).where(EnrolmentSession.subject_token == token)).scalars()
        return {
            "subject_token": subject.token,
            "created_at": subject.created_at,
            "consents": [consent_out(c).model_dump() for c in consents],
            "templates": [
                {
                    "id": t.id,
                    "modality": t.modality,
                    "model": t.model_fingerprint,
                    "samples": t.sample_count,
                    "created_at": t.created_at,
                    "updated_at": t.updated_at,
                    "protection": "AES-256-GCM envelope",
                }
                for t in templates
            ],
            "enrolment_sessions": [{"id": s.id, "status": s.status, "created_at": s.created_at} for s in sessions],
        }
