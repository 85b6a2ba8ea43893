"""What the portal shows a customer, read from the consent domain: modalities (from the registry, so a new
modality or a new kind of sealed data shows up by itself), consents, recent events, receipts, the export.

Never shown, nor exported: template or sample bytes, data keys, scores or thresholds.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import Select, func, or_, select
from sqlalchemy.orm import Session

from service.consent import registry
from service.consent.held import TEMPLATE_PROTECTION
from service.consent.receipts import payload_of, receipts_of
from service.consent.records import subject_in_tenant
from service.modality import Modality
from service.portal.i18n import N_
from service.store.models import AuditEntry, Consent, DataKey, EnrolmentSession, Subject, Template

RECENT_EVENTS = 20
# Audit details the customer does not see (an attacker with a link must not learn how close they came).
HIDDEN_DETAILS = frozenset({"threshold", "score", "llr", "method", "reasons", "watchlist_hit"})
# The fraud team's screening is not shown to the customer it screened (it would tip a fraudster off): its own
# entries are left out, and so is a refusal's reason where it was a watchlist hit.
HIDDEN_ACTIONS = "watchlist.%"
SCREENING_REASONS = frozenset({"watchlist_hit"})

MODALITY_NAMES = {"voice": N_("Voice"), "fingerprint": N_("Fingerprint")}
HELD_NAMES = {
    "templates": N_("Templates (encrypted)"),
    "enrolment_sessions": N_("Enrolments in progress"),
    "payment_links": N_("Payment links"),
}
NOTICES = {
    "voice": N_(
        "We keep an encrypted template of your voice to recognise you when you call. We never keep recordings. "
        "You can withdraw this consent here at any time; the template is then destroyed."
    ),
    "fingerprint": N_(
        "We keep an encrypted template of your fingerprint to recognise you at our terminals. We never keep "
        "fingerprint images. You can withdraw this consent here at any time; the template is then destroyed."
    ),
}
ACTION_NAMES = {
    "consent.grant": N_("Consent given"),
    "consent.withdraw": N_("Consent withdrawn"),
    "voice.enrol": N_("Voice enrolled"),
    "voice.reenrol": N_("Voice enrolled again"),
    "voice.verify": N_("Voice check"),
    "voice.identify": N_("Voice identification"),
    "voice.identified": N_("Recognised by your voice"),
    "voice.lockout": N_("Voice checks locked"),
    "voice.enrolment.start": N_("Voice enrolment started"),
    "voice.enrolment.abandon": N_("Voice enrolment abandoned"),
    "voice.stream": N_("Voice check during a call"),
    "fingerprint.enrol": N_("Fingerprint enrolled"),
    "fingerprint.reenrol": N_("Fingerprint enrolled again"),
    "fingerprint.verify": N_("Fingerprint check"),
    "fingerprint.pay": N_("Payment with your fingerprint"),
    "fingerprint.lockout": N_("Fingerprint checks locked"),
    "portal.link": N_("Portal link sent"),
    "portal.session": N_("Portal opened"),
    "subject.never_enrol": N_("Never-enrol choice changed"),
    "subject.erase": N_("Everything erased"),
    "retention.purge": N_("Purged after the retention period"),
    "erasure.replay": N_("Erasure carried out again"),
}
OUTCOME_NAMES = {
    "accept": N_("accepted"), "reject": N_("rejected"), "refused": N_("refused"), "granted": N_("given"),
    "withdrawn": N_("withdrawn"), "enrolled": N_("enrolled"), "replaced": N_("replaced"), "issued": N_("sent"),
    "opened": N_("opened"), "set": N_("set"), "lifted": N_("lifted"), "erased": N_("erased"),
    "purged": N_("purged"), "locked": N_("locked"), "open": N_("started"), "abandoned": N_("abandoned"),
    "inconclusive": N_("inconclusive"), "opted_out": N_("not checked: no consent"),
    "not_enrolled": N_("not checked: not enrolled"), "destroyed": N_("destroyed"), "nothing_held": N_("nothing held"),
    "match": N_("matched"),
}  # fmt: skip
# Where an event came from (``_channel``): a consent's channel, a voice decision's pair of channels (enrolment/caller,
# named by the caller's side: the enrolment's means nothing to the customer), else the domain of the action.
_VOICE_CHANNELS = {"telephone": N_("Phone line"), "wideband": N_("Wideband audio")}
CHANNEL_NAMES = {
    "ivr": N_("Phone call"), "terminal": N_("Terminal"), "portal": N_("This portal"), "agent": N_("Our staff"),
    **_VOICE_CHANNELS,
    **{f"{enrolment}/{caller}": name for enrolment in _VOICE_CHANNELS for caller, name in _VOICE_CHANNELS.items()},
    "voice": N_("Voice"), "fingerprint": N_("Fingerprint"), "consent": N_("Consent"), "subject": N_("Your account"),
    "retention": N_("Retention period"), "erasure": N_("Erasure"),
}  # fmt: skip
OTHER_CHANNEL = N_("Other")
# Uses of the modality ("last used"), as action and outcome: an accepted check, payment at a till or streamed
# call's decision, and an identification that named the customer.
USES = (("verify", "accept"), ("pay", "accept"), ("stream", "accept"), ("identified", "match"))


@dataclass(frozen=True)
class ModalityView:
    modality: str
    enrolled_since: dt.datetime | None
    last_use: dt.datetime | None
    held: dict[str, int]


@dataclass(frozen=True)
class EventView:
    at: dt.datetime
    action: str
    channel: str
    outcome: str

    @property
    def channel_name(self) -> str:
        """The channel's name to translate, never its code."""
        return CHANNEL_NAMES.get(self.channel, OTHER_CHANNEL)


@dataclass(frozen=True)
class Overview:
    subject: Subject
    modalities: list[ModalityView]
    consents: list[Consent]
    events: list[EventView]
    purposes: list[str]


def _last_use(session: Session, token: str, modality: str) -> dt.datetime | None:
    uses = [(AuditEntry.action == f"{modality}.{use}") & (AuditEntry.outcome == outcome) for use, outcome in USES]
    query = select(func.max(AuditEntry.at)).where(AuditEntry.subject_token == token, or_(*uses))
    return session.execute(query).scalar_one_or_none()


def _channel(entry: AuditEntry) -> str:
    details = entry.details or {}
    return str(details.get("channels") or details.get("channel") or entry.action.split(".")[0])


def _customers_events(token: str) -> Select:
    """The audit entries about the customer that the customer is shown (not the watchlist's)."""
    return select(AuditEntry).where(AuditEntry.subject_token == token, AuditEntry.action.not_like(HIDDEN_ACTIONS))


def _shown_details(details: dict | None) -> dict:
    shown = {k: v for k, v in (details or {}).items() if k not in HIDDEN_DETAILS}
    if shown.get("reason") in SCREENING_REASONS:
        del shown["reason"]
    return shown


def recent_events(session: Session, token: str, limit: int = RECENT_EVENTS) -> list[EventView]:
    query = _customers_events(token).order_by(AuditEntry.seq.desc()).limit(limit)
    return [EventView(e.at, e.action, _channel(e), e.outcome) for e in session.execute(query).scalars()]


def overview(session: Session, tenant_id: str, token: str, offered_purposes: tuple[str, ...]) -> Overview:
    subject = subject_in_tenant(session, tenant_id, token)
    modalities = []
    for modality in Modality:
        first = session.execute(
            select(func.min(Template.created_at)).where(Template.subject_token == token, Template.modality == modality)
        ).scalar_one_or_none()
        modalities.append(
            ModalityView(str(modality), first, _last_use(session, token, str(modality)),
                         registry.held(session, token, modality))  # fmt: skip
        )
    consents = list(
        session.execute(
            select(Consent).where(Consent.subject_token == token).order_by(Consent.granted_at.desc())
        ).scalars()
    )
    purposes = sorted({*offered_purposes, *(c.purpose for c in consents)})
    return Overview(subject, modalities, consents, recent_events(session, token), purposes)


def _iso(value: dt.datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def export(session: Session, tenant_id: str, token: str) -> dict:
    """Everything held about the subject except template bytes (and keys, scores, thresholds)."""
    subject = subject_in_tenant(session, tenant_id, token)
    consents = session.execute(select(Consent).where(Consent.subject_token == token).order_by(Consent.granted_at))
    templates = session.execute(select(Template).where(Template.subject_token == token))
    enrolments = session.execute(select(EnrolmentSession).where(EnrolmentSession.subject_token == token))
    keys = session.execute(select(DataKey).where(DataKey.subject_token == token))
    events = session.execute(_customers_events(token).order_by(AuditEntry.seq))
    return {
        "format": "bioident-subject-export/1",
        "exported_at": _iso(dt.datetime.now(dt.UTC)),
        "subject": {
            "subject_token": subject.token,
            "created_at": _iso(subject.created_at),
            "last_active_at": _iso(subject.last_active_at),
            "never_enrol_since": _iso(subject.never_enrol_at),
        },
        "consents": [
            {"id": c.id, "modality": c.modality, "purpose": c.purpose, "notice_version": c.notice_version,
             "notice_sha256": c.notice_sha256, "channel": c.channel, "evidence_ref": c.evidence_ref,
             "recorded_by": c.recorded_by, "granted_at": _iso(c.granted_at), "withdrawn_at": _iso(c.withdrawn_at)}
            for c in consents.scalars()
        ],
        "templates": [
            {"id": t.id, "modality": t.modality, "model": t.model_fingerprint, "samples": t.sample_count,
             "created_at": _iso(t.created_at), "updated_at": _iso(t.updated_at), "protection": TEMPLATE_PROTECTION}
            for t in templates.scalars()
        ],
        "enrolment_sessions": [
            {"id": s.id, "modality": s.modality, "purpose": s.purpose, "status": s.status,
             "created_at": _iso(s.created_at)}
            for s in enrolments.scalars()
        ],
        "data_keys": [
            {"modality": k.modality, "created_at": _iso(k.created_at), "protection": "wrapped by the keyring"}
            for k in keys.scalars()
        ],
        "held": {str(m): registry.held(session, token, m) for m in Modality},
        "receipts": [
            {"id": r.id, "kind": r.kind, "created_at": _iso(r.created_at), "jws": r.jws}
            for r in receipts_of(session, tenant_id, token)
        ],
        "events": [
            {"seq": e.seq, "at": _iso(e.at), "actor": e.actor, "action": e.action, "outcome": e.outcome,
             "details": _shown_details(e.details)}
            for e in events.scalars()
        ],
    }  # fmt: skip


def receipt_view(session: Session, tenant_id: str, token: str, receipt_id: str) -> tuple[object, dict] | None:
    for receipt in receipts_of(session, tenant_id, token):
        if receipt.id == receipt_id:
            return receipt, payload_of(receipt)
    return None
