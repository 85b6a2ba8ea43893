"""Voice verification in two steps, so a stream can claim once and decide many times.

``claim_voice`` checks, once, that the claimed customer may be verified: a subject of this tenant,
with active consent for the purpose, not locked out, enrolled. ``decide_voice`` scores one analysed
sample against the claim: it re-checks consent and lockout right before deciding (a withdrawal or a
lockout may have happened meanwhile), opens the template, decides, audits, and counts a failure.
``verify_voice`` is both, for one upload.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.orm import Session

from biometrics.scoring.scorer import Verdict
from biometrics.voice.audio.waveform import Waveform
from biometrics.voice.verification import Probe
from service import lockout
from service.auth import Principal
from service.consent.records import lock_subject, note_activity, require_consent, subject_in_tenant
from service.context import ServiceContext
from service.modality import Modality
from service.trail.chain import record_event
from service.trail.refusals import refusals_audited
from service.voice.templates import VOICE, open_voice_template, voice_template_row
from service.watchlist.screening import NO_HIT, Screening, screen_voice


@dataclass(frozen=True)
class VoiceClaim:
    """A checked claim: this client says the caller is the subject with this token, for this purpose."""

    actor: Principal
    subject_token: str
    purpose: str


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
    channels: str | None = None  # the pair of channels scored: the template's, the caller's
    watchlist: Screening | None = None  # None: not screened (no usable speech)

    def as_dict(self) -> dict:
        return {**self.__dict__, "watchlist": None if self.watchlist is None else self.watchlist.as_dict()}


def refuse_if_locked(ctx: ServiceContext, session: Session, token: str) -> None:
    lockout.refuse_if_locked(ctx, session, token, VOICE, "failed verifications")


def claim_voice(ctx: ServiceContext, actor: Principal, reference: str, purpose: str) -> VoiceClaim:
    token = ctx.token(actor.tenant_id, reference)
    with ctx.db.session() as session:
        subject_in_tenant(session, actor.tenant_id, token)
        require_consent(session, token, Modality.VOICE, purpose)
        refuse_if_locked(ctx, session, token)
        voice_template_row(session, token)
    return VoiceClaim(actor, token, purpose)


def score_voice(ctx: ServiceContext, claim: VoiceClaim, probe: Probe) -> Verdict:
    """The verdict on ``probe`` without deciding: no audit entry, no failure counted (a stream's interim score).

    Consent and lockout are checked again, as for a decision."""
    with ctx.db.session() as session:
        require_consent(session, claim.subject_token, Modality.VOICE, claim.purpose)
        refuse_if_locked(ctx, session, claim.subject_token)
        template = open_voice_template(session, ctx.keyring, voice_template_row(session, claim.subject_token))
    return ctx.verifier.decide(template, probe)


def decide_voice(
    ctx: ServiceContext,
    claim: VoiceClaim,
    probe: Probe,
    *,
    judge: Callable[[Verdict, Probe], str] | None = None,
    action: str = "voice.verify",
    details: dict | None = None,
    on_decided: Callable[[Session, VoiceCheck], None] | None = None,
) -> VoiceCheck:
    """Decides on ``probe``, audits it and counts a failure, in one transaction.

    A stream passes ``judge`` (the verdict to its decision: ``inconclusive`` inside the uncertainty band),
    its own ``action`` and ``details``, and ``on_decided`` to store its outcome in the same transaction.
    A ``reject`` or a stream's ``inconclusive`` on a sample without quality reasons counts towards the lockout
    (a stream's pending events show its score near the threshold: an inconclusive end must cost an attempt,
    or hanging up inside the band would be a free score oracle); the score of a sample with quality reasons
    is audited but not returned.
    """
    actor, token = claim.actor, claim.subject_token
    with ctx.db.session() as session:
        lock_subject(session, token)  # concurrent attempts count their failures one after another
        require_consent(session, token, Modality.VOICE, claim.purpose)  # again: it may have been withdrawn meanwhile
        refuse_if_locked(ctx, session, token)
        template = open_voice_template(session, ctx.keyring, voice_template_row(session, token))
        verdict = ctx.verifier.decide(template, probe)
        decision = judge(verdict, probe) if judge is not None else str(verdict.decision)
        screening = NO_HIT
        screened = probe.embedding is not None and not probe.reasons  # too little speech scores nothing reliably
        if screened:
            screening = screen_voice(
                ctx, session, actor, [(probe.embedding, probe.channel)], action=action, subject_token=token
            )
        record_event(
            session,
            actor,
            action=action,
            outcome=decision,
            subject_token=token,
            score=verdict.score,
            model_fingerprint=ctx.embedder.fingerprint,
            details={
                "purpose": claim.purpose,
                "threshold": verdict.threshold,
                "method": verdict.method,
                "channels": verdict.channels,
                "reasons": [str(r.code) for r in probe.reasons],
                "watchlist_hit": screening.hit,
                **(details or {}),
            },
        )
        if decision in ("reject", "inconclusive") and not probe.reasons:
            count_failure(ctx, session, actor, token)
        elif decision == "accept":
            note_activity(session, token)  # retention counts from the last successful verification
        check = VoiceCheck(
            subject_token=token,
            decision=decision,
            score=told(probe, verdict.score),
            threshold=verdict.threshold,
            method=verdict.method,
            llr=told(probe, None if verdict.llr is None else round(verdict.llr, 4)),
            net_speech_s=round(probe.net_speech_s, 3),
            reasons=[r.as_dict() for r in probe.reasons],
            model=ctx.embedder.fingerprint,
            channels=verdict.channels,
            watchlist=screening if screened else None,
        )
        if on_decided is not None:
            on_decided(session, check)
    ctx.decided(action, decision)
    return check


def told(probe: Probe, value: float | None) -> float | None:
    """A score (or its llr) as answered: none for a sample with quality reasons, which counts no failure, so
    that told it would be a score oracle no lockout bounds (the audit entry keeps it)."""
    return None if probe.reasons else value


def count_failure(ctx: ServiceContext, session: Session, actor: Principal, token: str) -> None:
    """One more failed attempt; the one that reaches the limit is audited as the lockout."""
    lockout.count_failure(ctx, session, actor, token, VOICE)


def verify_voice(
    ctx: ServiceContext, actor: Principal, reference: str, purpose: str, audio: Callable[[], Waveform]
) -> VoiceCheck:
    """One upload: claim, decode the audio (only for a claim that stands), decide. A refusal is audited."""
    with refusals_audited(ctx, actor, "voice.verify", reference=reference, details={"purpose": purpose}):
        claim = claim_voice(ctx, actor, reference, purpose)
        return decide_voice(ctx, claim, ctx.verifier.probe(audio()))
