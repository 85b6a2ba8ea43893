"""Withdrawal of consent: the last consent for a modality gone, the subject's data for it is crypto-shredded."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.auth import Principal
from service.consent import registry
from service.consent.receipts import ReceiptKind, issue_receipt, service_entry
from service.consent.records import active_consents, lock_subject, subject_in_tenant
from service.context import ServiceContext
from service.erasure.destruction import record_destruction
from service.erasure.ledger import DestructionLedger
from service.erasure.shred import shred_after_withdrawal
from service.errors import Conflict, NotFound
from service.modality import Modality
from service.protected import destroy_data_key, lock_data_keys
from service.store.models import Consent, Receipt, utcnow
from service.trail.chain import record_event
from service.voice.identification import voice_gallery


@dataclass(frozen=True)
class WithdrawalReceipt:
    receipt_id: str
    subject_token: str
    consent_id: str
    modality: str
    purpose: str
    withdrawn_at: str
    destroyed: dict = field(default_factory=dict)
    also_withdrawn: list[str] = field(default_factory=list)  # other consents for the same modality and purpose
    receipt_sha256: str = ""
    signed_receipt_id: str = ""  # the stored, signed receipt (``service.consent.receipts``)

    def as_dict(self) -> dict:
        return asdict(self)


def withdraw(
    ctx: ServiceContext, actor: Principal, token: str, consent_id: str, *, language: str | None = None
) -> WithdrawalReceipt:
    """``language``: the receipt's (the portal's); without one, that of the customer's latest receipt."""
    ledger = DestructionLedger.of(ctx.settings, ctx.keyring)
    with ctx.db.session() as session:
        receipt = withdraw_consent(session, actor, token, consent_id, ledger=ledger, language=language)
    if receipt.destroyed["data_key"]:
        _leave_galleries(ctx, actor.tenant_id, token, [receipt.modality])
    if receipt.destroyed["data_key"] and ctx.settings.shredding_period_s == 0:
        shred_after_withdrawal(ctx.db, ctx.settings)  # a period of 0: residue goes right now
    return receipt


def withdraw_consent(
    session: Session,
    actor: Principal,
    token: str,
    consent_id: str,
    *,
    ledger: DestructionLedger | None = None,
    language: str | None = None,
) -> WithdrawalReceipt:
    """Withdraws a consent, and with it every other active consent for the same modality and purpose (a
    consent given again, say for a re-enrolment): the customer withdraws the purpose, not one record of it.
    When no consent for that modality remains, the subject's data key for it is destroyed and its sealed data
    (``service.consent.registry``) deleted, in this same transaction, and the destruction is written to the
    deployment's ``ledger`` (synced) before the transaction commits. Only a caller with no deployment (a test,
    a library user) passes no ledger."""
    subject_in_tenant(session, actor.tenant_id, token)
    lock_subject(session, token)  # no enrolment of this subject commits between our check and our shred
    consent = session.get(Consent, consent_id)
    if consent is None or consent.subject_token != token:
        raise NotFound("no such consent for this subject")
    if consent.withdrawn_at is not None:
        raise Conflict("this consent was already withdrawn")
    now = utcnow()
    active = active_consents(session, token, consent.modality)
    also = [c for c in active if c.purpose == consent.purpose and c.id != consent.id]
    for closed in (consent, *also):
        closed.withdrawn_at = now
    session.flush()
    destroyed = _shred(session, token, Modality(consent.modality), ledger)
    body = {
        "receipt_id": f"rcp_{consent.id.removeprefix('con_')}",
        "subject_token": token,
        "consent_id": consent.id,
        "modality": consent.modality,
        "purpose": consent.purpose,
        "withdrawn_at": now.isoformat(timespec="seconds"),
        "destroyed": destroyed,
        "also_withdrawn": sorted(c.id for c in also),
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
            "also_withdrawn": body["also_withdrawn"],
            "modality": consent.modality,
            "receipt_sha256": digest,
            "data_key_destroyed": destroyed["data_key"],
            "templates_deleted": len(destroyed["templates"]),
        },
    )
    signed = issue_receipt(
        session,
        kind=ReceiptKind.WITHDRAW,
        subject_token=token,
        tenant_id=actor.tenant_id,
        channel=str(actor.role),
        services=[service_entry(consent.modality, consent.purpose, notice_version=consent.notice_version)],
        event={
            "consent_id": consent.id,
            "also_withdrawn": body["also_withdrawn"],
            "state": "withdrawn",
            "destroyed": destroyed,
            "receipt_sha256": digest,
        },
        language=language,
    )
    return WithdrawalReceipt(**body, receipt_sha256=digest, signed_receipt_id=signed.id)


def _shred(session: Session, token: str, modality: Modality, ledger: DestructionLedger | None) -> dict:
    """What was destroyed: nothing while another consent for the modality stands."""
    if active_consents(session, token, str(modality)):
        return {"data_key": False, "data_key_kek_version": None, **registry.nothing_erased(modality)}
    erased = registry.erase(session, token, modality)
    key = destroy_data_key(session, token, str(modality))
    if key is not None:
        record_destruction(session, ledger, token, str(modality), key)
    return {"data_key": key is not None, "data_key_kek_version": None if key is None else key.kek_version, **erased}


@dataclass(frozen=True)
class Everything:
    """What closing every consent of a subject did (an erasure on request, a retention purge)."""

    consents_closed: list[str]
    withdrawal_receipts: list[str]
    destroyed: dict  # per modality: what went
    services: list[dict]  # the receipts' Kantara ``services`` entries of the consents closed


def withdraw_everything(
    session: Session, actor: Principal, token: str, *, ledger: DestructionLedger | None, language: str | None = None
) -> Everything:
    """Withdraws every active consent (each as ``withdraw_consent`` does, with its own receipt), then destroys
    any sealed data no consent covered any more, in the caller's transaction."""
    lock_subject(session, token)
    lock_data_keys(session, token)  # before destroying several of them
    closed, receipts, destroyed, services = [], [], {}, []
    for consent in sorted(active_consents(session, token), key=lambda c: c.granted_at):
        if consent.withdrawn_at is not None:  # closed with an earlier consent for the same purpose
            continue
        receipt = withdraw_consent(session, actor, token, consent.id, ledger=ledger, language=language)
        closed.extend([consent.id, *receipt.also_withdrawn])
        receipts.append(receipt.signed_receipt_id)
        services.append(service_entry(consent.modality, consent.purpose, notice_version=consent.notice_version))
        if receipt.destroyed["data_key"]:
            destroyed[consent.modality] = receipt.destroyed
    for modality in Modality:
        if str(modality) in destroyed:
            continue
        shredded = _shred(session, token, modality, ledger)
        if shredded["data_key"] or any(v for k, v in shredded.items() if k not in ("data_key", "data_key_kek_version")):
            destroyed[str(modality)] = shredded
    return Everything(closed, receipts, destroyed, services)


def erase_subject(ctx: ServiceContext, actor: Principal, token: str, *, language: str | None = None) -> str:
    """The customer's "erase everything": every consent withdrawn, every modality's data crypto-shredded,
    audited (``subject.erase``) with a signed receipt; the id of that receipt. Consent records and receipts
    stay: they hold no biometric data and prove what the customer chose (service/portal/retention-policy.md).

    Asked again with nothing left to erase (no consent closed, nothing destroyed: a double click, a retry), it
    answers with the customer's latest erasure receipt instead of issuing another, and audits the request as
    ``nothing_held``; so does a second of two requests at once, which waits on the subject's lock taken by
    ``withdraw_everything`` and then finds the first one's receipt. A customer with nothing held who never had
    an erasure receipt, or who got another receipt since (consent given again, withdrawn, purged), gets a new
    one: their proof that, as of now, nothing is held."""
    ledger = DestructionLedger.of(ctx.settings, ctx.keyring)
    with ctx.db.session() as session:
        subject_in_tenant(session, actor.tenant_id, token)
        done = withdraw_everything(session, actor, token, ledger=ledger, language=language)
        standing = None if done.consents_closed or done.destroyed else _standing_erasure(session, actor, token)
        details = {"consents_closed": done.consents_closed, "modalities_destroyed": sorted(done.destroyed)}
        if standing is not None:
            record_event(
                session,
                actor,
                action="subject.erase",
                outcome="nothing_held",
                subject_token=token,
                details={**details, "receipt_id": standing.id},
            )
            return standing.id
        record_event(session, actor, action="subject.erase", outcome="erased", subject_token=token, details=details)
        receipt = issue_receipt(
            session,
            kind=ReceiptKind.ERASURE,
            subject_token=token,
            tenant_id=actor.tenant_id,
            channel=str(actor.role),
            services=done.services,
            event={"state": "erased", "consents_closed": done.consents_closed,
                   "withdrawal_receipts": done.withdrawal_receipts, "destroyed": done.destroyed},  # fmt: skip
            language=language,
        )
    _leave_galleries(ctx, actor.tenant_id, token, [m for m, what in done.destroyed.items() if what["data_key"]])
    if done.destroyed and ctx.settings.shredding_period_s == 0:
        shred_after_withdrawal(ctx.db, ctx.settings)
    return receipt.id


def _leave_galleries(ctx: ServiceContext, tenant_id: str, token: str, modalities: list[str]) -> None:
    """Takes a customer whose data keys were just destroyed out of this process's 1:N galleries at once (other
    replicas' voice galleries re-check the database per query; other processes' finger galleries drop it at their
    next sync)."""
    if Modality.VOICE in modalities:
        voice_gallery(ctx).forget(tenant_id, token)
    if Modality.FINGERPRINT in modalities:
        ctx.fingerprint_gallery.drop_subject(tenant_id, token)


def _standing_erasure(session: Session, actor: Principal, token: str) -> Receipt | None:
    """The customer's latest erasure receipt, unless a receipt of another kind came after it. Strictly after:
    an erasure's own withdrawal receipts, issued just before it, may share its timestamp."""
    mine = (Receipt.subject_token == token, Receipt.tenant_id == actor.tenant_id)
    latest = session.execute(
        select(Receipt)
        .where(*mine, Receipt.kind == ReceiptKind.ERASURE)
        .order_by(Receipt.created_at.desc(), Receipt.id.desc())
        .limit(1)
    ).scalar_one_or_none()
    if latest is None:
        return None
    since = select(Receipt.id).where(*mine, Receipt.kind != ReceiptKind.ERASURE, Receipt.created_at > latest.created_at)
    return None if session.execute(since.limit(1)).first() is not None else latest
