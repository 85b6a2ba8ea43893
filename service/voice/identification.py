"""Voice identification: which subjects of this tenant, with active voice consent for the purpose,
score above the threshold against the caller's audio. Scored against the in-memory gallery of the
tenant's opened templates (``service.voice.gallery``); every candidate is re-checked in the database."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from biometrics.voice.audio.waveform import Waveform
from biometrics.voice.templates import VoiceTemplate
from biometrics.voice.verification import Probe
from service.auth import Principal
from service.context import ServiceContext
from service.limits import locked_subjects
from service.protected import open_template, unwrap_row
from service.store.models import Consent, DataKey, Template
from service.trail.chain import record_event
from service.trail.refusals import refusals_audited
from service.voice.gallery import StoredTemplate, TemplateGallery
from service.voice.templates import VOICE
from service.watchlist.screening import Screening, screen_voice


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
    watchlist: Screening | None = None  # None: not screened (no usable speech)

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
            "watchlist": None if self.watchlist is None else self.watchlist.as_dict(),
        }


def _load_templates(
    session: Session, keyring_of: ServiceContext, tenant_id: str, fingerprint: str, since: dt.datetime | None
) -> Iterable[StoredTemplate]:
    query = (
        select(Template, DataKey)
        .join(DataKey, (DataKey.subject_token == Template.subject_token) & (DataKey.modality == Template.modality))
        .where(Template.tenant_id == tenant_id, Template.modality == VOICE, Template.model_fingerprint == fingerprint)
    )
    if since is not None:
        query = query.where(Template.updated_at >= since)
    for row, key_row in session.execute(query):

        def opened(row: Template = row, key_row: DataKey = key_row) -> VoiceTemplate:
            return VoiceTemplate.from_bytes(open_template(row, unwrap_row(keyring_of.keyring, key_row)))

        yield StoredTemplate(row.subject_token, row.updated_at, opened)


def voice_gallery(ctx: ServiceContext) -> TemplateGallery:
    """The customers' voice templates of every tenant, opened, in memory (``service.voice.gallery``)."""
    return ctx.cached(
        "voice.gallery", lambda: TemplateGallery(lambda s, t, f, since: _load_templates(s, ctx, t, f, since))
    )


def _eligible(
    ctx: ServiceContext, session: Session, tenant_id: str, purpose: str, tokens: list[str]
) -> tuple[set[str], set[str]]:
    """Of ``tokens``: those that may be returned now (template and data key present, consent for the purpose
    active, not locked out), and those that hold no template any more (to be forgotten by the gallery)."""
    present = (
        select(Template.subject_token)
        .join(DataKey, (DataKey.subject_token == Template.subject_token) & (DataKey.modality == Template.modality))
        .where(
            Template.tenant_id == tenant_id,
            Template.modality == VOICE,
            Template.model_fingerprint == ctx.embedder.fingerprint,
            Template.subject_token.in_(tokens),
        )
    )
    held = set(session.execute(present).scalars())
    consenting = select(Consent.subject_token).where(
        Consent.modality == VOICE, Consent.purpose == purpose, Consent.withdrawn_at.is_(None)
    )
    locked = locked_subjects(VOICE, ctx.settings.lockout_window_s, ctx.settings.lockout_max_failures)
    eligible = session.execute(
        present.where(Template.subject_token.in_(consenting), Template.subject_token.not_in(locked))
    ).scalars()
    return set(eligible), set(tokens) - held


def _best_matches(
    ctx: ServiceContext, session: Session, actor: Principal, purpose: str, probe: Probe, top_k: int
) -> list[Candidate]:
    """Subjects of the tenant with active consent for the purpose, not locked out, whose template (from
    the model in use) scores at or above its pair's threshold, best margin first. Scored in the in-memory
    gallery, every candidate re-checked here before it is returned."""
    gallery = voice_gallery(ctx)
    gallery.sync(session, actor.tenant_id, ctx.embedder.fingerprint)
    limit = top_k
    while True:
        ranked = gallery.rank(actor.tenant_id, probe.embedding, probe.channel, ctx.scoring, limit)
        eligible, gone = _eligible(ctx, session, actor.tenant_id, purpose, [r.key for r in ranked])
        for token in gone:  # withdrawn (or replaced by nothing) through another replica
            gallery.forget(actor.tenant_id, token)
        chosen = [Candidate(r.key, round(r.score, 6)) for r in ranked if r.key in eligible]
        if len(chosen) >= top_k or len(ranked) < limit:
            return chosen[:top_k]
        limit *= 4  # candidates were refused: look further down


def _record_named(session: Session, actor: Principal, purpose: str, candidates: list[Candidate]) -> None:
    """One entry against each customer the identification named, so that they see it (portal, export): their
    rank only, never the other candidates (whose tokens would reach this customer's export) nor a score."""
    for rank, candidate in enumerate(candidates, start=1):
        record_event(
            session,
            actor,
            action="voice.identified",
            outcome="match",
            subject_token=candidate.subject_token,
            details={"purpose": purpose, "rank": rank},
        )


def identify_voice(
    ctx: ServiceContext, actor: Principal, purpose: str, audio: Callable[[], Waveform], top_k: int
) -> Identification:
    """Top-k subjects of this tenant, with active voice consent for the purpose, scoring above threshold.
    Unusable audio is refused and audited; each customer named is audited against them too."""
    with refusals_audited(ctx, actor, "voice.identify", reference=None, details={"purpose": purpose}):
        probe = ctx.verifier.probe(audio())
    candidates: list[Candidate] = []
    outcome = "rejected" if probe.reasons else "no_match"
    screening = None
    with ctx.db.session() as session:
        if probe.embedding is not None and not probe.reasons:
            candidates = _best_matches(ctx, session, actor, purpose, probe, top_k)
            outcome = "match" if candidates else outcome
            # Screened as every verification is: a fraudster asking who they sound like is one too.
            screening = screen_voice(
                ctx, session, actor, [(probe.embedding, probe.channel)], action="voice.identify", subject_token=None
            )
        record_event(
            session,
            actor,
            action="voice.identify",
            outcome=outcome,
            score=candidates[0].score if candidates else None,
            model_fingerprint=ctx.embedder.fingerprint,
            details={
                "purpose": purpose,
                "candidates": [c.subject_token for c in candidates],
                "reasons": [str(r.code) for r in probe.reasons],
                "watchlist_hit": screening is not None and screening.hit,
            },
        )
        _record_named(session, actor, purpose, candidates)
    ctx.decided("voice.identify", outcome)
    same_channel = ctx.scoring.scorer(probe.channel, probe.channel)
    return Identification(
        candidates=candidates,
        threshold=same_channel.threshold,
        method=same_channel.method,
        channels=same_channel.channels,
        net_speech_s=round(probe.net_speech_s, 3),
        reasons=[r.as_dict() for r in probe.reasons],
        model=ctx.embedder.fingerprint,
        watchlist=screening,
    )
