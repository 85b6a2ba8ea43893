"""Fingerprint enrolment at the till: two fingers, at least two good captures each, and the payment link.

The rules (which capture counts, when two fingers make an enrolment, how captures become one template per
finger) are ``enroll.fingerprint``; this module checks consent, seals the templates and the payment link
under the subject's data key, audits, and puts the fingers in this process's gallery after the commit.
A refusal (no consent, a card number, unusable or mismatched captures) stores nothing and is audited.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from biometrics.fingerprint.capture import Capture, image_fingerprint
from biometrics.fingerprint.matcher import compare, default_threshold
from biometrics.fingerprint.templates import FingerprintTemplate
from enroll.fingerprint import plan_fingerprint_enrolment
from service.auth import Principal
from service.consent.records import lock_subject, require_consent, require_consent_to_enrol, require_fresh_consent
from service.context import ServiceContext
from service.errors import Conflict, QualityFailed
from service.fingerprint.decisions import finger_only_threshold
from service.fingerprint.lockout import refuse_if_locked
from service.fingerprint.payment import SEARCH_LIMIT, synced_gallery
from service.fingerprint.templates import fingerprint_rows, open_finger, store_fingers, template_fingerprint
from service.modality import Modality
from service.payment.cards import refuse_card_number
from service.payment.links import store_payment_link
from service.payment.pins import check_pin_format
from service.protected import data_key
from service.trail.chain import record_event
from service.trail.refusals import refusals_audited


@dataclass(frozen=True)
class FingerprintEnrolment:
    subject_token: str
    template_ids: list[str]
    finger_positions: list[int]
    impressions: list[int]
    pin: bool
    model: str
    captures: list[dict]

    def as_dict(self) -> dict:
        return dict(self.__dict__)


class AlreadyEnrolled(Conflict):
    code, title = "already_enrolled", "The customer's fingers are enrolled already"


class EnrolledElsewhere(Conflict):
    code, title = "finger_enrolled_elsewhere", "A finger is enrolled for another customer"


def _refuse_if_enrolled_elsewhere(
    ctx: ServiceContext, tenant_id: str, token: str, templates: Mapping[int, FingerprintTemplate]
) -> None:
    """A finger that identifies another customer of the tenant, at the finger-only threshold, is refused: enrolled
    under two accounts, it would pay from whichever scored higher that day (or from neither, for want of a lead),
    and its PIN payments would count one customer's wrong PINs against the other. Who it is, is not said."""
    gallery = synced_gallery(ctx, tenant_id)
    model = template_fingerprint(next(iter(templates.values())))
    fpir, fingers = ctx.settings.fingerprint_target_fpir, gallery.size(tenant_id)
    threshold = finger_only_threshold(fpir, len(templates), fingers, model)
    for position, template in templates.items():
        matches = gallery.search(tenant_id, template, limit=SEARCH_LIMIT)
        if any(m.finger.subject_token != token and m.score >= threshold for m in matches):
            raise EnrolledElsewhere(
                f"the finger at position {position} is enrolled for another customer of this store: a finger "
                "belongs to one account; nothing was stored",
                reasons=[{"code": "FINGER_ENROLLED_ELSEWHERE", "finger_position": position}],
            )


def enrol_fingerprints(
    ctx: ServiceContext,
    actor: Principal,
    reference: str,
    purpose: str,
    fingers: Callable[[], Mapping[int, Sequence[Capture]]],
    payment_token: str,
    pin: str | None,
    *,
    replace: bool = False,
) -> FingerprintEnrolment:
    """Enrols two fingers and links the payment token (and PIN). A customer already enrolled is refused
    unless ``replace``, which needs consent recorded after the templates were made."""
    details = {"purpose": purpose}
    with refusals_audited(ctx, actor, "fingerprint.enrol", reference=reference, details=details) as attempt:
        refuse_card_number(payment_token, "payment_token")  # before anything else: it is never stored or logged
        if pin is not None:
            check_pin_format(pin)
        token = ctx.token(actor.tenant_id, reference)
        with ctx.db.session() as session:
            require_consent_to_enrol(session, actor.tenant_id, token, Modality.FINGERPRINT, purpose)
        attempt.subject_token = token
        captured = fingers()  # analysed only after consent
        threshold = float(default_threshold(ctx.settings.fingerprint_target_fmr, image_fingerprint(ctx.settings)))
        plan = plan_fingerprint_enrolment(captured, compare, threshold)
        captures = [r.as_dict() for r in plan.reports]
        if not plan.complete:
            unusable = [
                {**reason, "finger_position": report.position, "capture": report.index}
                for report in plan.reports
                for reason in report.reasons
            ]
            raise QualityFailed(
                "the captures do not make an enrolment of two different fingers", reasons=plan.reasons + unusable
            )
        _refuse_if_enrolled_elsewhere(ctx, actor.tenant_id, token, plan.templates)
        with ctx.db.session() as session:
            lock_subject(session, token)
            require_consent(session, token, Modality.FINGERPRINT, purpose)  # again: it may be gone meanwhile
            existing = fingerprint_rows(session, token)
            if existing and not replace:
                raise AlreadyEnrolled(
                    "the customer's fingers are enrolled already; replacing them is a re-enrolment: record fresh "
                    "consent, then enrol with replace=true"
                )
            if existing:
                since = max(row.updated_at for row in existing)
                require_fresh_consent(session, token, Modality.FINGERPRINT, purpose, since=since)
                refuse_if_locked(ctx, session, token)
            rows = store_fingers(session, ctx.keyring, actor.tenant_id, token, plan.templates)
            store_payment_link(session, ctx.keyring, actor.tenant_id, token, payment_token, pin)
            key = data_key(session, ctx.keyring, token, str(Modality.FINGERPRINT), create=False)
            enrolled = [open_finger(row, key) for row in rows]
            model = template_fingerprint(next(iter(plan.templates.values())))
            record_event(
                session,
                actor,
                action="fingerprint.reenrol" if existing else "fingerprint.enrol",
                outcome="replaced" if existing else "enrolled",
                subject_token=token,
                model_fingerprint=model,
                details={
                    **details,
                    "template_ids": [row.id for row in rows],
                    "finger_positions": [row.finger_position for row in rows],
                    "impressions": [row.sample_count for row in rows],
                    "pin": pin is not None,
                },
            )
    ctx.fingerprint_gallery.put(actor.tenant_id, enrolled)  # committed: this process can identify them now
    return FingerprintEnrolment(
        subject_token=token,
        template_ids=[row.id for row in rows],
        finger_positions=[row.finger_position for row in rows],
        impressions=[row.sample_count for row in rows],
        pin=pin is not None,
        model=model,
        captures=captures,
    )
