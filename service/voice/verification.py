"""Voice verification and identification use cases. Each reads top to bottom:
check consent -> compute -> load protected template -> decide -> append audit -> commit."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from biometrics.voice.audio.waveform import Waveform
from biometrics.voice.embedding import Embedding
from biometrics.voice.quality.gates import verification_reasons
from biometrics.voice.templates import VoiceTemplate
from service.audit.chain import record_event
from service.auth import Principal
from service.consent.records import Modality, require_consent, subject_in_tenant
from service.context import ServiceContext
from service.errors import LockedOut, NotFound
from service.limits import recent_failures, record_failure
from service.protected import data_key, open_template, unwrap_row
from service.store.models import Consent, DataKey, Template

VOICE = Modality.VOICE


@dataclass(frozen=True)
class VoiceCheck:
    subject_token: str
    decision: str
    score: float | None
    threshold: float
    method: str
    llr: float | None
    net_speech_s: float
    reasons: list[dict]
    model: str

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def voice_template_row(session: Session, token: str) -> Template:
    row = session.execute(
        select(Template).where(Template.subject_token == token, Template.modality == str(VOICE))
    ).scalar_one_or_none()
    if row is None:
        raise NotFound("the subject has no voice enrolment")
    return row


def _refuse_if_locked(ctx: ServiceContext, session: Session, token: str) -> None:
    failures = recent_failures(session, token, str(VOICE), ctx.settings.lockout_window_s)
    if failures >= ctx.settings.lockout_max_failures:
        raise LockedOut(
            f"{failures} failed verifications in the last {ctx.settings.lockout_window_s} s; try again later"
        )


def _precheck(ctx: ServiceContext, actor: Principal, token: str, purpose: str) -> None:
    with ctx.db.session() as session:
        subject_in_tenant(session, actor.tenant_id, token)
        require_consent(session, token, VOICE, purpose)
        _refuse_if_locked(ctx, session, token)
        voice_template_row(session, token)


def verify_voice(ctx: ServiceContext, actor: Principal, reference: str, purpose: str, audio: Waveform) -> VoiceCheck:
    token = ctx.token(actor.tenant_id, reference)
    _precheck(ctx, actor, token, purpose)
    (sample,) = ctx.embedder.analyse([audio])
    reasons = verification_reasons(sample.measures, ctx.limits)
    with ctx.db.session() as session:
        require_consent(session, token, VOICE, purpose)  # again: it may have been withdrawn meanwhile
        _refuse_if_locked(ctx, session, token)
        row = voice_template_row(session, token)
        template = VoiceTemplate.from_bytes(
            open_template(row, data_key(session, ctx.keyring, token, "voice", create=False))
        )
        verdict = ctx.scorer.verdict(template.as_embedding(), sample.embedding, reasons)
        record_event(
            session,
            actor,
            action="voice.verify",
            outcome=str(verdict.decision),
            subject_token=token,
            score=verdict.score,
            model_fingerprint=ctx.embedder.fingerprint,
            details={
                "purpose": purpose,
                "threshold": verdict.threshold,
                "method": verdict.method,
                "reasons": [str(r.code) for r in reasons],
            },
        )
        if verdict.decision == "reject" and not reasons:
            record_failure(session, token, str(VOICE))
            failures = recent_failures(session, token, str(VOICE), ctx.settings.lockout_window_s)
            if failures == ctx.settings.lockout_max_failures:
                record_event(
                    session,
                    actor,
                    action="voice.lockout",
                    outcome="locked",
                    subject_token=token,
                    details={"failures": failures, "window_s": ctx.settings.lockout_window_s},
                )
    return VoiceCheck(
        subject_token=token,
        decision=str(verdict.decision),
        score=verdict.score,
        threshold=verdict.threshold,
        method=verdict.method,
        llr=None if verdict.llr is None else round(verdict.llr, 4),
        net_speech_s=round(sample.measures.net_speech_s, 3),
        reasons=[r.as_dict() for r in reasons],
        model=ctx.embedder.fingerprint,
    )


@dataclass(frozen=True)
class Candidate:
    subject_token: str
    score: float


@dataclass(frozen=True)
class Identification:
    candidates: list[Candidate]  # best first
    threshold: float
    method: str
    net_speech_s: float
    reasons: list[dict]
    model: str

    def as_dict(self) -> dict:
        best = self.candidates[0].score if self.candidates else None
        return {
            "decision": "accept" if self.candidates else "reject",
            "score": best,
            "threshold": self.threshold,
            "method": self.method,
            "llr": None,
            "net_speech_s": self.net_speech_s,
            "reasons": self.reasons,
            "model": self.model,
            "candidates": [{"subject_token": c.subject_token, "score": c.score} for c in self.candidates],
        }


def _best_matches(
    ctx: ServiceContext, session: Session, actor: Principal, purpose: str, probe: Embedding, top_k: int
) -> list[Candidate]:
    """Subjects of the tenant with active consent for the purpose whose template (from the model in use)
    scores at or above the threshold, best first."""
    consenting = select(Consent.subject_token).where(
        Consent.modality == str(VOICE), Consent.purpose == purpose, Consent.withdrawn_at.is_(None)
    )
    rows = session.execute(
        select(Template, DataKey)
        .join(DataKey, (DataKey.subject_token == Template.subject_token) & (DataKey.modality == Template.modality))
        .where(
            Template.tenant_id == actor.tenant_id,
            Template.modality == str(VOICE),
            Template.model_fingerprint == ctx.embedder.fingerprint,
            Template.subject_token.in_(consenting),
        )
    )
    keyring = ctx.keyring
    subjects, templates = [], []
    for template_row, key_row in rows:
        subjects.append(template_row.subject_token)
        templates.append(VoiceTemplate.from_bytes(open_template(template_row, unwrap_row(keyring, key_row))))
    scores = ctx.scorer.scores_against([t.as_embedding() for t in templates], probe)
    candidates = [
        Candidate(subject, round(float(score), 6))
        for subject, score in zip(subjects, scores, strict=True)
        if score >= ctx.scorer.threshold
    ]
    return sorted(candidates, key=lambda c: -c.score)[:top_k]


def identify_voice(ctx: ServiceContext, actor: Principal, purpose: str, audio: Waveform, top_k: int) -> Identification:
    """Top-k subjects of this tenant, with active voice consent for the purpose, scoring above threshold."""
    (sample,) = ctx.embedder.analyse([audio])
    reasons = verification_reasons(sample.measures, ctx.limits)
    candidates: list[Candidate] = []
    with ctx.db.session() as session:
        if sample.embedding is not None and not reasons:
            candidates = _best_matches(ctx, session, actor, purpose, sample.embedding, top_k)
        record_event(
            session,
            actor,
            action="voice.identify",
            outcome="match" if candidates else ("rejected" if reasons else "no_match"),
            score=candidates[0].score if candidates else None,
            model_fingerprint=ctx.embedder.fingerprint,
            details={
                "purpose": purpose,
                "candidates": [c.subject_token for c in candidates],
                "reasons": [str(r.code) for r in reasons],
            },
        )
    return Identification(
        candidates=candidates,
        threshold=ctx.scorer.threshold,
        method=ctx.scorer.method,
        net_speech_s=round(sample.measures.net_speech_s, 3),
        reasons=[r.as_dict() for r in reasons],
        model=ctx.embedder.fingerprint,
    )
