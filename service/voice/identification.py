"""Voice identification: which subjects of this tenant, with active voice consent for the purpose,
score above the threshold against the caller's audio."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from biometrics.voice.audio.waveform import AudioChannel, Waveform
from biometrics.voice.embedding import Embedding
from biometrics.voice.templates import VoiceTemplate
from biometrics.voice.verification import Probe
from service.auth import Principal
from service.context import ServiceContext
from service.limits import locked_subjects
from service.protected import open_template, unwrap_row
from service.store.models import Consent, DataKey, Template
from service.trail.chain import record_event
from service.trail.refusals import refusals_audited
from service.voice.templates import VOICE


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
    channels: str | None = None  # the pair whose threshold is shown: the caller's channel on both sides

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
            "channels": self.channels,
            "candidates": [{"subject_token": c.subject_token, "score": c.score} for c in self.candidates],
        }


def _best_matches(
    ctx: ServiceContext, session: Session, actor: Principal, purpose: str, probe: Probe, top_k: int
) -> list[Candidate]:
    """Subjects of the tenant with active consent for the purpose, not locked out, whose template (from
    the model in use) scores at or above the threshold, best first."""
    consenting = select(Consent.subject_token).where(
        Consent.modality == VOICE, Consent.purpose == purpose, Consent.withdrawn_at.is_(None)
    )
    locked = locked_subjects(VOICE, ctx.settings.lockout_window_s, ctx.settings.lockout_max_failures)
    rows = session.execute(
        select(Template, DataKey)
        .join(DataKey, (DataKey.subject_token == Template.subject_token) & (DataKey.modality == Template.modality))
        .where(
            Template.tenant_id == actor.tenant_id,
            Template.modality == VOICE,
            Template.model_fingerprint == ctx.embedder.fingerprint,
            Template.subject_token.in_(consenting),
            Template.subject_token.not_in(locked),
        )
    )
    keyring = ctx.keyring
    by_pair: dict[AudioChannel | None, list[tuple[str, Embedding]]] = {}  # the templates' channels for this probe
    for template_row, key_row in rows:
        template = VoiceTemplate.from_bytes(open_template(template_row, unwrap_row(keyring, key_row)))
        enrolled, channel = template.for_probe(probe.channel)
        by_pair.setdefault(channel, []).append((template_row.subject_token, enrolled))
    ranked = []  # (margin over its pair's threshold, candidate): scores of different pairs are not comparable
    for channel, enrolled in by_pair.items():
        scorer = ctx.scoring.scorer(channel, probe.channel)
        scores = scorer.scores_against([e for _, e in enrolled], probe.embedding)
        ranked += [
            (float(score) - scorer.threshold, Candidate(subject, round(float(score), 6)))
            for (subject, _), score in zip(enrolled, scores, strict=True)
            if score >= scorer.threshold
        ]
    return [candidate for _, candidate in sorted(ranked, key=lambda r: -r[0])[:top_k]]


def identify_voice(
    ctx: ServiceContext, actor: Principal, purpose: str, audio: Callable[[], Waveform], top_k: int
) -> Identification:
    """Top-k subjects of this tenant, with active voice consent for the purpose, scoring above threshold.
    Unusable audio is refused and audited."""
    with refusals_audited(ctx, actor, "voice.identify", reference=None, details={"purpose": purpose}):
        probe = ctx.verifier.probe(audio())
    candidates: list[Candidate] = []
    with ctx.db.session() as session:
        if probe.embedding is not None and not probe.reasons:
            candidates = _best_matches(ctx, session, actor, purpose, probe, top_k)
        record_event(
            session,
            actor,
            action="voice.identify",
            outcome="match" if candidates else ("rejected" if probe.reasons else "no_match"),
            score=candidates[0].score if candidates else None,
            model_fingerprint=ctx.embedder.fingerprint,
            details={
                "purpose": purpose,
                "candidates": [c.subject_token for c in candidates],
                "reasons": [str(r.code) for r in probe.reasons],
            },
        )
    same_channel = ctx.scoring.scorer(probe.channel, probe.channel)
    return Identification(
        candidates=candidates,
        threshold=same_channel.threshold,
        method=same_channel.method,
        channels=same_channel.channels,
        net_speech_s=round(probe.net_speech_s, 3),
        reasons=[r.as_dict() for r in probe.reasons],
        model=ctx.embedder.fingerprint,
    )
