"""Screening a voice against the tenant's watchlist: ``screen_voice``, called by every voice decision.

Verification (HTTP and streams, through ``service.voice.verification.decide_voice``) and enrolment call
it with the embeddings they already have. The watchlist's own operating point is stricter than
verification's (``BIOIDENT_WATCHLIST_TARGET_FMR``): each call meets every entry. A hit is audited as
``watchlist.hit`` in the caller's transaction; an enrolment that hits is refused (``OnWatchlist``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from biometrics.scoring.operating_points import ChannelScoring
from biometrics.voice.audio.waveform import AudioChannel
from biometrics.voice.embedding import Embedding
from biometrics.voice.templates import Capture, VoiceTemplate
from service.auth import Principal
from service.context import ServiceContext
from service.errors import Forbidden
from service.protected import unwrap_row
from service.store.models import DataKey, WatchlistEntry
from service.trail.chain import record_event
from service.vault import TemplateBinding
from service.voice.gallery import StoredTemplate, TemplateGallery
from service.voice.templates import VOICE

WATCHLIST = "watchlist"  # the modality named in an entry's sealing binding


@dataclass(frozen=True)
class Screening:
    """The answer's ``watchlist``: a hit names the entry and its score; no hit names nothing."""

    hit: bool
    entry: str | None = None
    score: float | None = None
    threshold: float | None = None
    channels: str | None = None

    def as_dict(self) -> dict:
        return {"hit": self.hit, "entry": self.entry, "score": self.score}


NO_HIT = Screening(hit=False)


class OnWatchlist(Forbidden):
    code, title = "watchlist_hit", "The voice matches an entry of the fraudster watchlist"

    def __init__(self, detail: str, *, screening: Screening, subject_token: str | None) -> None:
        super().__init__(detail, reasons=[{"code": "WATCHLIST_HIT", "entry": screening.entry}])
        self.screening = screening
        self.subject_token = subject_token


def entry_binding(entry: WatchlistEntry) -> TemplateBinding:
    return TemplateBinding(entry.id, WATCHLIST, entry.id, entry.model_fingerprint)


def _load_entries(
    session: Session, keyring_of: ServiceContext, tenant_id: str, fingerprint: str, since: dt.datetime | None
) -> Iterable[StoredTemplate]:
    query = (
        select(WatchlistEntry, DataKey)
        .join(DataKey, (DataKey.subject_token == WatchlistEntry.id) & (DataKey.modality == VOICE))
        .where(WatchlistEntry.tenant_id == tenant_id, WatchlistEntry.model_fingerprint == fingerprint)
    )
    if since is not None:
        query = query.where(WatchlistEntry.created_at >= since)
    for entry, key_row in session.execute(query):

        def opened(entry: WatchlistEntry = entry, key_row: DataKey = key_row) -> VoiceTemplate:
            key = unwrap_row(keyring_of.keyring, key_row)
            return VoiceTemplate.from_bytes(key.open(entry.sealed, aad=entry_binding(entry)))

        yield StoredTemplate(entry.id, entry.created_at, opened)


def watchlist_gallery(ctx: ServiceContext) -> TemplateGallery:
    return ctx.cached(
        "watchlist.gallery", lambda: TemplateGallery(lambda s, t, f, since: _load_entries(s, ctx, t, f, since))
    )


def watchlist_scoring(ctx: ServiceContext) -> ChannelScoring:
    """The watchlist's operating points: the deployment's scoring at the watchlist's false-match rate (or its
    explicit threshold), on the packaged cohorts or the deployment's cohort file; a calibration file is for
    verification and is not used here."""
    settings = ctx.settings
    fingerprint = ctx.embedder.fingerprint

    def make() -> ChannelScoring:
        update: dict = {"target_fmr": settings.watchlist_target_fmr, "calibration_file": None}
        if settings.watchlist_threshold is not None:
            key = "asnorm_threshold" if ctx.scoring.method == "as-norm" else "cosine_threshold"
            update[key] = settings.watchlist_threshold
        return ChannelScoring.for_model(settings.model_copy(update=update), fingerprint)

    return ctx.cached(f"watchlist.scoring.{fingerprint}", make)


def _entries_present(session: Session, tenant_id: str, ids: Sequence[str]) -> set[str]:
    rows = session.execute(
        select(WatchlistEntry.id)
        .join(DataKey, (DataKey.subject_token == WatchlistEntry.id) & (DataKey.modality == VOICE))
        .where(WatchlistEntry.tenant_id == tenant_id, WatchlistEntry.id.in_(list(ids)))
    )
    return set(rows.scalars())


def best_hit(
    ctx: ServiceContext, session: Session, tenant_id: str, probes: Sequence[tuple[Embedding, AudioChannel]]
) -> Screening:
    """The best-scoring entry (by margin over its threshold) that any of ``probes`` hits, re-checked in the
    database; ``NO_HIT`` when none does."""
    gallery = watchlist_gallery(ctx)
    gallery.sync(session, tenant_id, ctx.embedder.fingerprint)
    scoring = watchlist_scoring(ctx)
    best = None
    for embedding, channel in probes:
        ranked = gallery.rank(tenant_id, embedding, channel, scoring, limit=5)
        present = _entries_present(session, tenant_id, [r.key for r in ranked]) if ranked else set()
        for r in ranked:
            if r.key not in present:
                gallery.forget(tenant_id, r.key)  # removed through another replica
                continue
            if best is None or r.margin > best.margin:
                best = r
            break  # the rest of this probe's candidates score lower
    ctx.decided("watchlist.screen", "clear" if best is None else "hit")
    if best is None:
        return NO_HIT
    return Screening(True, best.key, round(best.score, 6), round(best.score - best.margin, 6), best.channels)


def screen_voice(
    ctx: ServiceContext,
    session: Session,
    actor: Principal,
    probes: Sequence[tuple[Embedding, AudioChannel]],
    *,
    action: str,
    subject_token: str | None,
) -> Screening:
    """Scores ``probes`` (embedding, channel) against the tenant's watchlist; a hit is audited as
    ``watchlist.hit`` (naming ``action``, the attempt it was found in) in the caller's transaction."""
    screening = best_hit(ctx, session, actor.tenant_id, probes)
    if screening.hit:
        record_event(
            session,
            actor,
            action="watchlist.hit",
            outcome="hit",
            subject_token=subject_token,
            score=screening.score,
            model_fingerprint=ctx.embedder.fingerprint,
            details={
                "entry_id": screening.entry,
                "during": action,
                "threshold": screening.threshold,
                "channels": screening.channels,
            },
        )
    return screening


def refuse_watchlisted(
    ctx: ServiceContext, session: Session, actor: Principal, captures: Sequence[Capture], subject_token: str
) -> None:
    """An enrolment whose samples hit the watchlist is refused: a fraudster must not enrol as a customer."""
    probes = [(c.embedding, c.channel or AudioChannel.WIDEBAND) for c in captures]
    screening = best_hit(ctx, session, actor.tenant_id, probes)
    if screening.hit:
        raise OnWatchlist(
            "the enrolment's voice matches an entry of the fraudster watchlist; nothing was enrolled",
            screening=screening,
            subject_token=subject_token,
        )


@contextmanager
def watchlist_refusals_audited(ctx: ServiceContext, actor: Principal, action: str) -> Iterator[None]:
    """Records the ``watchlist.hit`` of a refused enrolment in a transaction of its own (the enrolment's is
    rolled back), then lets the refusal go on to be audited as one."""
    try:
        yield
    except OnWatchlist as exc:
        with ctx.db.session() as session:
            record_event(
                session,
                actor,
                action="watchlist.hit",
                outcome="refused",
                subject_token=exc.subject_token,
                score=exc.screening.score,
                model_fingerprint=ctx.embedder.fingerprint,
                details={
                    "entry_id": exc.screening.entry,
                    "during": action,
                    "threshold": exc.screening.threshold,
                    "channels": exc.screening.channels,
                },
            )
        raise
