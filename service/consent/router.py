"""Consent records and what is held about a subject (portal role; the IVR and terminals record their own modality)."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from service.auth import Principal, Role
from service.consent.held import what_is_held
from service.consent.receipts import SigningKey
from service.consent.records import (
    ConsentTerms,
    consents_of,
    grant_consent,
    lookup_subject,
    notice_digest,
    set_never_enrol,
)
from service.consent.schemas import (
    ConsentIn,
    ConsentOut,
    HeldOut,
    LookupIn,
    NeverEnrolOut,
    ReceiptKeys,
    SubjectRef,
    WithdrawalReceiptOut,
)
from service.consent.withdrawal import withdraw
from service.context import ServiceContext
from service.deps import get_ctx, id_path, require

router = APIRouter(prefix="/v1", tags=["consent"])
portal = require(Role.PORTAL)
recorder = require(Role.PORTAL, Role.IVR, Role.TERMINAL)


@router.post("/consents", status_code=201, response_model=ConsentOut)
def record(body: ConsentIn, ctx: ServiceContext = Depends(get_ctx), actor: Principal = Depends(recorder)) -> ConsentOut:
    terms = ConsentTerms(
        body.modality,
        body.purpose,
        body.notice_version,
        notice_digest(body.notice_text, body.notice_sha256),
        body.channel,
        body.evidence_ref,
        body.language,
    )
    return ConsentOut.of(grant_consent(ctx, actor, body.reference, terms))


@router.post("/subjects:lookup", response_model=SubjectRef)
def lookup(body: LookupIn, ctx: ServiceContext = Depends(get_ctx), actor: Principal = Depends(portal)) -> SubjectRef:
    return SubjectRef(subject_token=lookup_subject(ctx, actor, body.reference))


@router.get("/subjects/{token}/consents", response_model=list[ConsentOut])
def list_consents(
    token: str = id_path(), ctx: ServiceContext = Depends(get_ctx), actor: Principal = Depends(portal)
) -> list[ConsentOut]:
    return [ConsentOut.of(c) for c in consents_of(ctx, actor, token)]


@router.post("/subjects/{token}/consents/{consent_id}:withdraw", response_model=WithdrawalReceiptOut)
def withdraw_one(
    token: str = id_path(),
    consent_id: str = id_path(),
    ctx: ServiceContext = Depends(get_ctx),
    actor: Principal = Depends(portal),
) -> WithdrawalReceiptOut:
    return WithdrawalReceiptOut(**withdraw(ctx, actor, token, consent_id).as_dict())


@router.get("/subjects/{token}", response_model=HeldOut)
def held(token: str = id_path(), ctx: ServiceContext = Depends(get_ctx), actor: Principal = Depends(portal)) -> HeldOut:
    """Everything held about a subject, as the customer may see it: never template contents."""
    return HeldOut.of(what_is_held(ctx, actor, token))


@router.post("/subjects:never-enrol", response_model=NeverEnrolOut)
def never_enrol(
    body: LookupIn, ctx: ServiceContext = Depends(get_ctx), actor: Principal = Depends(portal)
) -> NeverEnrolOut:
    """The customer asked never to be enrolled: every enrolment of any modality is refused (403 ``opted_out``)
    until the customer lifts it in the portal. A customer with no record here gets one, holding only the flag."""
    token = ctx.token(actor.tenant_id, body.reference)
    with ctx.db.session() as session:
        subject = set_never_enrol(session, actor, token, never=True)
        return NeverEnrolOut(subject_token=token, never_enrol_since=subject.never_enrol_at)


@router.get("/receipts/keys", response_model=ReceiptKeys)
def receipt_keys(ctx: ServiceContext = Depends(get_ctx)) -> ReceiptKeys:
    """The public keys that verify this deployment's consent receipts (a JWK set; no API key needed)."""
    return ReceiptKeys(keys=[SigningKey.from_audit_key(ctx.db.audit_key).jwk()])
