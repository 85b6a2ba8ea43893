"""Opening a stream: the claim is checked once, before any audio. A customer who is not enrolled or has
withdrawn gets ``not_enrolled`` / ``opted_out`` at once (a decided stream, audited); a locked-out one a 423."""

from __future__ import annotations

import uuid

from sqlalchemy import select

from service.auth import Principal
from service.context import ServiceContext
from service.errors import ConsentRequired, NotFound
from service.modality import Modality
from service.store.models import Consent, Subject, VoiceStream
from service.trail.chain import record_event
from service.trail.refusals import refusals_audited
from service.voice.streams.store import connect_deadline
from service.voice.verification import claim_voice


def open_stream(
    ctx: ServiceContext, actor: Principal, reference: str, purpose: str, codec: str, sample_rate: int
) -> VoiceStream:
    stream_id = str(uuid.uuid4())
    refusal: Exception | None = None
    token = None
    with refusals_audited(ctx, actor, "voice.stream", reference=reference, details={"purpose": purpose}):
        try:
            token = claim_voice(ctx, actor, reference, purpose).subject_token
        except (NotFound, ConsentRequired) as exc:
            refusal = exc
    with ctx.db.session() as session:
        row = VoiceStream(
            id=stream_id,
            tenant_id=actor.tenant_id,
            client_id=actor.client_id,
            subject_token=token,
            purpose=purpose,
            codec=codec,
            sample_rate=sample_rate,
            status="open",
            latest_event={"event": "opened", "stream_id": stream_id, "decision": "pending"},
            connect_by=connect_deadline(ctx.settings.stream_connect_s),
        )
        if refusal is not None:
            candidate = ctx.token(actor.tenant_id, reference)
            subject = session.get(Subject, candidate)
            known = subject is not None and subject.tenant_id == actor.tenant_id
            decision = "opted_out" if known and _withdrew(session, candidate, purpose) else "not_enrolled"
            row.subject_token = candidate if known else None
            row.status, row.decision, row.close_reason = "decided", decision, decision
            row.latest_event = {
                "event": "decision",
                "stream_id": stream_id,
                "decision": decision,
                "final": True,
                "close_reason": decision,
            }
            record_event(
                session,
                actor,
                action="voice.stream",
                outcome=decision,
                subject_token=row.subject_token,
                details={"purpose": purpose, "stream_id": stream_id},
            )
        session.add(row)
        session.flush()
        session.expunge(row)
    if row.decision is not None:
        ctx.decided("voice.stream", row.decision)
    return row


def _withdrew(session: object, token: str, purpose: str) -> bool:
    """Whether the customer withdrew a voice consent for this purpose (and holds no active one)."""
    query = select(Consent.id).where(
        Consent.subject_token == token,
        Consent.modality == str(Modality.VOICE),
        Consent.purpose == purpose,
        Consent.withdrawn_at.is_not(None),
    )
    return session.execute(query).first() is not None  # type: ignore[attr-defined]
