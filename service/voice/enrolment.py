"""Voice enrolment use cases: in one call with several samples, or as a session (start, add samples, complete).

The rules (which sample counts, when an enrolment is complete, how captures become one template) are
``enroll.voice``; this module checks consent, keeps samples and templates sealed under the subject's
data key, and audits. A template is created only when the quality gates pass. Until then each
accepted sample's embedding is kept sealed; a failed or abandoned session leaves no template and no
sample behind.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from biometrics.voice.audio.waveform import AudioChannel, Waveform
from biometrics.voice.embedding import Embedding
from biometrics.voice.pipeline import analyse_for_enrolment
from biometrics.voice.templates import Capture
from enroll.voice import (
    MAX_SAMPLES,
    SESSION_TTL,
    SampleReport,
    completion_shortfall,
    judge_sample,
    plan_enrolment,
    repeat_reason,
)
from service.auth import Principal
from service.consent.records import (
    lock_subject,
    refuse_if_opted_out,
    require_consent,
    require_consent_to_enrol,
    require_fresh_consent,
)
from service.context import ServiceContext
from service.errors import Conflict, NotFound, QualityFailed
from service.modality import Modality
from service.protected import data_key
from service.store.models import EnrolmentSample, EnrolmentSession, Template, utcnow
from service.trail.chain import record_event
from service.trail.refusals import Attempt, refusals_audited
from service.vault import DataKey, TemplateBinding
from service.voice.templates import VOICE, NotTheEnrolledVoice, find_voice_template_row, store_voice_template
from service.voice.verification import count_failure, refuse_if_locked
from service.watchlist.screening import refuse_watchlisted, watchlist_refusals_audited


@dataclass(frozen=True)
class EnrolmentResult:
    subject_token: str
    template_id: str
    sample_count: int
    net_speech_s: float
    model: str

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def enrol_voice(
    ctx: ServiceContext,
    actor: Principal,
    reference: str,
    purpose: str,
    audio: Callable[[], Sequence[Waveform]],
    *,
    replace: bool = False,
) -> tuple[EnrolmentResult, list[dict]]:
    """Enrols from samples given at once. A subject already enrolled gets the samples added only if each
    one verifies as its voice; ``replace`` makes a new template instead, with fresh consent. A refusal is audited."""
    with refusals_audited(ctx, actor, "voice.enrol", reference=reference, details={"purpose": purpose}) as attempt:
        token = ctx.token(actor.tenant_id, reference)
        with ctx.db.session() as session:
            require_consent_to_enrol(session, actor.tenant_id, token, Modality.VOICE, purpose)
        attempt.subject_token = token
        plan = plan_enrolment(analyse_for_enrolment(ctx.batching, list(audio())), ctx.limits)  # unusable audio: audited
        if plan.reasons:
            raise QualityFailed(
                "the enrolment does not hold enough usable speech", reasons=[r.as_dict() for r in plan.reasons]
            )
        with (
            watchlist_refusals_audited(ctx, actor, "voice.enrol"),
            _failures_counted(ctx, actor, attempt),
            ctx.db.session() as session,
        ):
            lock_subject(session, token)
            require_consent(session, token, Modality.VOICE, purpose)
            refuse_watchlisted(ctx, session, actor, plan.captures, token)
            speech = plan.net_speech_s
            given = [i for i, report in enumerate(plan.reports) if report.accepted]  # each capture's place as sent
            details = {"net_speech_s": round(speech, 2)}
            row = _store(ctx, session, actor, token, purpose, plan.captures, replace, details, labels=given)
    result = EnrolmentResult(token, row.id, row.sample_count, round(speech, 3), row.model_fingerprint)
    return result, [r.as_dict() for r in plan.reports]


def _store(
    ctx: ServiceContext,
    session: Session,
    actor: Principal,
    token: str,
    purpose: str,
    captures: Sequence[Capture],
    replace: bool,
    details: dict,
    *,
    labels: Sequence[int | str],
) -> Template:
    """Stores the template (replacing one needs consent given since it was last changed; adding to one is a
    verification of each sample, refused while the subject is locked out) and audits it."""
    refuse_if_opted_out(session, token)  # it may have been set since the enrolment began
    existing = find_voice_template_row(session, token)
    replacing = replace and existing is not None
    if replacing:
        require_fresh_consent(session, token, Modality.VOICE, purpose, since=existing.updated_at)
    elif existing is not None:
        refuse_if_locked(ctx, session, token)
    row = store_voice_template(
        session, ctx.keyring, actor.tenant_id, token, captures, ctx.scoring, replace=replacing, labels=labels
    )
    record_event(
        session,
        actor,
        action="voice.reenrol" if replacing else "voice.enrol",
        outcome="replaced" if replacing else "enrolled",
        subject_token=token,
        model_fingerprint=row.model_fingerprint,
        details={"template_id": row.id, "samples": len(captures), **details},
    )
    return row


@contextmanager
def _failures_counted(ctx: ServiceContext, actor: Principal, attempt: Attempt) -> Iterator[None]:
    """Samples refused as not the enrolled voice count as a failed verification (in a transaction of their
    own: the refused one is rolled back), so adding samples is no way around the lockout."""
    try:
        yield
    except NotTheEnrolledVoice:
        with ctx.db.session() as session:
            lock_subject(session, attempt.subject_token)
            count_failure(ctx, session, actor, attempt.subject_token)
        raise


# --- sessions ------------------------------------------------------------------------------------


def _open_session(session: Session, actor: Principal, session_id: str) -> EnrolmentSession:
    enrolment = session.get(EnrolmentSession, session_id)
    if enrolment is None or enrolment.tenant_id != actor.tenant_id:
        raise NotFound("no such enrolment session")
    if enrolment.status == "open" and enrolment.expires_at < utcnow():
        _discard_samples(session, enrolment, "expired")
        session.commit()  # the expiry stands even though this request is refused below
    if enrolment.status != "open":
        raise Conflict(f"the enrolment session is {enrolment.status}")
    return enrolment


def _discard_samples(session: Session, enrolment: EnrolmentSession, status: str) -> None:
    session.execute(delete(EnrolmentSample).where(EnrolmentSample.session_id == enrolment.id))
    enrolment.status = status
    session.flush()


def _sample_binding(enrolment: EnrolmentSession, sample_id: str, fingerprint: str) -> TemplateBinding:
    return TemplateBinding(enrolment.subject_token, f"{VOICE}-enrolment-sample", sample_id, fingerprint)


def start_session(ctx: ServiceContext, actor: Principal, reference: str, purpose: str) -> EnrolmentSession:
    token = ctx.token(actor.tenant_id, reference)
    with ctx.db.session() as session:
        require_consent_to_enrol(session, actor.tenant_id, token, Modality.VOICE, purpose)
        enrolment = EnrolmentSession(
            tenant_id=actor.tenant_id,
            subject_token=token,
            modality=VOICE,
            purpose=purpose,
            expires_at=utcnow() + SESSION_TTL,
        )
        session.add(enrolment)
        session.flush()
        record_event(
            session,
            actor,
            action="voice.enrolment.start",
            outcome="open",
            subject_token=token,
            details={"session_id": enrolment.id},
        )
    return enrolment


def add_sample(ctx: ServiceContext, actor: Principal, session_id: str, audio: Waveform) -> dict:
    with ctx.db.session() as session:
        enrolment = _open_session(session, actor, session_id)
        require_consent(session, enrolment.subject_token, Modality.VOICE, enrolment.purpose)
        _refuse_if_full(_samples(session, enrolment.id))  # before the model's work
    (analysed,) = analyse_for_enrolment(ctx.batching, [audio])
    sample = analysed.sample
    judged = judge_sample(sample, ctx.limits)
    with ctx.db.session() as session:
        enrolment = _open_session(session, actor, session_id)
        lock_subject(session, enrolment.subject_token)
        require_consent(session, enrolment.subject_token, Modality.VOICE, enrolment.purpose)  # again: it may be gone
        held = _samples(session, enrolment.id)
        _refuse_if_full(held)  # again: another request may have added one meanwhile
        if judged.accepted:
            repeated = repeat_reason(sample.embedding, _embeddings(ctx, session, enrolment, held))
            judged = judged if repeated is None else SampleReport(sample, [repeated])
        report = judged.as_dict()
        row = EnrolmentSample(
            session_id=enrolment.id,
            accepted=report["accepted"],
            net_speech_s=sample.measures.net_speech_s,
            report={**report, "model": ctx.embedder.fingerprint, "channel": str(analysed.channel)},
        )
        session.add(row)
        session.flush()
        if report["accepted"]:
            key = data_key(session, ctx.keyring, enrolment.subject_token, VOICE, create=True)
            binding = _sample_binding(enrolment, row.id, sample.embedding.model_fingerprint)
            row.sealed = key.seal(sample.embedding.vector.astype("<f4").tobytes(), aad=binding)
        usable = sum(s.net_speech_s for s in _samples(session, enrolment.id) if s.accepted)
    return {
        "sample_id": row.id,
        **report,
        "session_usable_speech_s": round(usable, 3),
        "required_speech_s": ctx.limits.min_enrol_speech_s,
    }


def _refuse_if_full(held: Sequence[EnrolmentSample]) -> None:
    """A session takes ``MAX_SAMPLES`` accepted samples, and three times that many in all."""
    if sum(s.accepted for s in held) >= MAX_SAMPLES:
        raise Conflict(f"the session holds {MAX_SAMPLES} accepted samples, as many as an enrolment takes: complete it")
    if len(held) >= 3 * MAX_SAMPLES:
        raise Conflict(f"the session holds {len(held)} samples: abandon it and start a new one")


def _embeddings(
    ctx: ServiceContext, session: Session, enrolment: EnrolmentSession, held: Sequence[EnrolmentSample]
) -> list[Embedding]:
    """The session's accepted samples' embeddings (by the running model), opened under the subject's data key."""
    fingerprint = ctx.embedder.fingerprint
    accepted = [s for s in held if s.accepted and s.report.get("model", fingerprint) == fingerprint]
    key = data_key(session, ctx.keyring, enrolment.subject_token, VOICE, create=False) if accepted else None
    return [] if key is None else [c.embedding for c in _captures(key, enrolment, accepted, fingerprint)]


def _captures(
    key: DataKey, enrolment: EnrolmentSession, accepted: Sequence[EnrolmentSample], fingerprint: str
) -> list[Capture]:
    return [
        _capture_of(key.open(s.sealed, aad=_sample_binding(enrolment, s.id, fingerprint)), s.report, fingerprint)
        for s in accepted
    ]


def _capture_of(plaintext: bytes, report: dict, fingerprint: str) -> Capture:
    return Capture(
        Embedding(np.frombuffer(plaintext, dtype="<f4").copy(), fingerprint), AudioChannel(report["channel"])
    )


def _samples(session: Session, session_id: str) -> list[EnrolmentSample]:
    query = select(EnrolmentSample).where(EnrolmentSample.session_id == session_id).order_by(EnrolmentSample.created_at)
    return list(session.execute(query).scalars())


def complete_session(
    ctx: ServiceContext, actor: Principal, session_id: str, *, replace: bool = False
) -> EnrolmentResult:
    """Makes the template from the session's accepted samples (added to an enrolled voice only if each one
    verifies as it; ``replace``: a new template, with fresh consent). A refusal is audited."""
    fingerprint = ctx.embedder.fingerprint
    with (
        refusals_audited(ctx, actor, "voice.enrol", reference=None, details={"session_id": session_id}) as attempt,
        watchlist_refusals_audited(ctx, actor, "voice.enrol"),
        _failures_counted(ctx, actor, attempt),
        ctx.db.session() as session,
    ):
        enrolment = _open_session(session, actor, session_id)
        attempt.subject_token = enrolment.subject_token
        lock_subject(session, enrolment.subject_token)
        require_consent(session, enrolment.subject_token, Modality.VOICE, enrolment.purpose)
        accepted = [s for s in _samples(session, enrolment.id) if s.accepted]
        # Samples sealed before this change carry no model; they can only be from the running one.
        if any(s.report.get("model", fingerprint) != fingerprint for s in accepted):
            raise Conflict(
                "this session's samples were embedded by another model version; abandon it and start a new session"
            )
        speech = sum(s.net_speech_s for s in accepted)
        shortfall = completion_shortfall(speech, ctx.limits)
        if shortfall is not None:
            raise QualityFailed(
                "the session does not hold enough usable speech yet; add samples", reasons=[shortfall.as_dict()]
            )
        key = data_key(session, ctx.keyring, enrolment.subject_token, VOICE, create=False)
        captures = _captures(key, enrolment, accepted, fingerprint)
        token = enrolment.subject_token
        refuse_watchlisted(ctx, session, actor, captures, token)
        details = {"session_id": enrolment.id, "net_speech_s": round(speech, 2)}
        labels = [s.id for s in accepted]
        row = _store(ctx, session, actor, token, enrolment.purpose, captures, replace, details, labels=labels)
        _discard_samples(session, enrolment, "completed")
    return EnrolmentResult(token, row.id, row.sample_count, round(speech, 3), fingerprint)


def abandon_session(ctx: ServiceContext, actor: Principal, session_id: str) -> None:
    with ctx.db.session() as session:
        enrolment = _open_session(session, actor, session_id)
        _discard_samples(session, enrolment, "abandoned")
        record_event(
            session,
            actor,
            action="voice.enrolment.abandon",
            outcome="abandoned",
            subject_token=enrolment.subject_token,
            details={"session_id": enrolment.id},
        )
