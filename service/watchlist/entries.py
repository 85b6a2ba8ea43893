"""Watchlist entries: add from recordings (with a case reference and the legal basis), list, remove.

An entry is a voice template made by the enrolment rules (the same quality gates) and sealed under a
data key of its own, held like a customer's (``service.protected``): removing the entry destroys the key
(crypto-shredding), writes the destruction ledger and lets the shredding schedule clear its residue, as a
withdrawal does. No customer consent applies to a fraudster's voice: the legal basis is recorded instead.
Every change is audited.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy import delete, select

from biometrics.voice.audio.waveform import Waveform
from biometrics.voice.pipeline import analyse_for_enrolment
from biometrics.voice.templates import VoiceTemplate
from enroll.voice import plan_enrolment
from service.auth import Principal
from service.context import ServiceContext
from service.erasure.destruction import record_destruction
from service.erasure.ledger import DestructionLedger
from service.erasure.shred import shred_after_withdrawal
from service.errors import NotFound, QualityFailed
from service.protected import data_key, destroy_data_key
from service.store.models import DataKey, Subject, WatchlistEntry, new_id
from service.trail.chain import record_event
from service.trail.refusals import refusals_audited
from service.voice.templates import VOICE
from service.watchlist.screening import entry_binding, watchlist_gallery

ENTRY_PREFIX = "wle"


@dataclass(frozen=True)
class EntryView:
    id: str
    case_reference: str
    legal_basis: str
    added_by: str
    sample_count: int
    net_speech_s: float
    model: str
    created_at: dt.datetime

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def _view(entry: WatchlistEntry) -> EntryView:
    return EntryView(
        entry.id,
        entry.case_reference,
        entry.legal_basis,
        entry.added_by,
        entry.sample_count,
        round(entry.net_speech_s, 3),
        entry.model_fingerprint,
        entry.created_at,
    )


def add_entry(
    ctx: ServiceContext,
    actor: Principal,
    case_reference: str,
    legal_basis: str,
    audio: Callable[[], Sequence[Waveform]],
) -> tuple[EntryView, list[dict]]:
    """A new entry from recordings of the fraudster's voice; they must pass the enrolment quality gates."""
    details = {"case_reference": case_reference}
    with refusals_audited(ctx, actor, "watchlist.add", reference=None, details=details):
        plan = plan_enrolment(analyse_for_enrolment(ctx.embedder, list(audio())), ctx.limits)
        if plan.reasons:
            raise QualityFailed(
                "the recordings do not hold enough usable speech", reasons=[r.as_dict() for r in plan.reasons]
            )
    template = VoiceTemplate.from_captures(plan.captures)
    entry_id = new_id(ENTRY_PREFIX)
    with ctx.db.session() as session:
        session.add(Subject(token=entry_id, tenant_id=actor.tenant_id))
        session.flush()
        key = data_key(session, ctx.keyring, entry_id, VOICE, create=True)
        entry = WatchlistEntry(
            id=entry_id,
            tenant_id=actor.tenant_id,
            case_reference=case_reference,
            legal_basis=legal_basis,
            added_by=actor.client_id,
            model_fingerprint=template.model_fingerprint,
            sample_count=template.count,
            net_speech_s=plan.net_speech_s,
            sealed=b"",
        )
        entry.sealed = key.seal(template.to_bytes(), aad=entry_binding(entry))
        session.add(entry)
        session.flush()
        record_event(
            session,
            actor,
            action="watchlist.add",
            outcome="added",
            subject_token=entry_id,
            model_fingerprint=template.model_fingerprint,
            details={
                **details,
                "entry_id": entry_id,
                "samples": template.count,
                "legal_basis_sha256": hashlib.sha256(legal_basis.encode()).hexdigest(),
            },
        )
        view = _view(entry)
    return view, [r.as_dict() for r in plan.reports]


def list_entries(ctx: ServiceContext, actor: Principal) -> list[EntryView]:
    """The tenant's entries, newest first (an entry whose key was destroyed is gone, whatever rows remain)."""
    with ctx.db.session() as session:
        rows = session.execute(
            select(WatchlistEntry)
            .join(DataKey, (DataKey.subject_token == WatchlistEntry.id) & (DataKey.modality == VOICE))
            .where(WatchlistEntry.tenant_id == actor.tenant_id)
            .order_by(WatchlistEntry.created_at.desc(), WatchlistEntry.id)
        ).scalars()
        return [_view(entry) for entry in rows]


@dataclass(frozen=True)
class Removal:
    id: str
    data_key_destroyed: bool

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def remove_entry(ctx: ServiceContext, actor: Principal, entry_id: str) -> Removal:
    """Destroys the entry's data key (written to the destruction ledger before the commit) and deletes it."""
    ledger = DestructionLedger.of(ctx.settings, ctx.keyring)
    with ctx.db.session() as session:
        entry = session.execute(
            select(WatchlistEntry).where(WatchlistEntry.id == entry_id).with_for_update()
        ).scalar_one_or_none()
        if entry is None or entry.tenant_id != actor.tenant_id:
            raise NotFound("no such watchlist entry")
        case_reference = entry.case_reference
        session.execute(delete(WatchlistEntry).where(WatchlistEntry.id == entry_id))
        key = destroy_data_key(session, entry_id, VOICE)
        if key is not None:
            record_destruction(session, ledger, entry_id, VOICE, key)
        session.execute(delete(Subject).where(Subject.token == entry_id))
        record_event(
            session,
            actor,
            action="watchlist.remove",
            outcome="removed",
            subject_token=entry_id,
            details={"entry_id": entry_id, "case_reference": case_reference, "data_key_destroyed": key is not None},
        )
    watchlist_gallery(ctx).forget(actor.tenant_id, entry_id)
    if key is not None and ctx.settings.shredding_period_s == 0:
        shred_after_withdrawal(ctx.db, ctx.settings)  # a period of 0: residue goes right now
    return Removal(entry_id, key is not None)
