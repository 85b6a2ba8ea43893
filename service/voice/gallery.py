"""Opened voice templates of one kind (customers' templates, watchlist entries) per tenant, in memory, for 1:N.

Each tenant's gallery is built from the database on its first query (``bioident serve`` warms every
tenant at start) and brought up to date at each query: rows changed since the last look (by their
time stamp, with a margin for transactions that committed late) are opened and put in; unchanged ones
are not opened again. A removal on this process (a withdrawal, a watchlist removal) takes the key out
at once; a removal on another replica is caught by the caller, which re-checks every candidate in the
database before it returns one, and then tells the gallery to forget it. The gallery is a cache, never
the authority.

Templates are kept in one ``biometrics.scoring.gallery.Gallery`` per enrolled channel, so that each is
scored at its pair's threshold: raw cosine straight from the matrix product; AS-Norm (opt-in) on a
shortlist of the best raw cosines, re-scored exactly by the pair's scorer.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from sqlalchemy.orm import Session

from biometrics.scoring.gallery import Gallery
from biometrics.scoring.operating_points import ChannelScoring
from biometrics.voice.audio.waveform import AudioChannel
from biometrics.voice.embedding import Embedding
from biometrics.voice.templates import TemplateFormatError, VoiceTemplate
from service.vault.errors import DecryptionError, KeyVersionRetired

log = logging.getLogger("bioident.gallery")

# Rows stamped this long before the newest one seen are looked at again (not re-opened when unchanged):
# a transaction that stamped its row earlier but committed after our last look is still picked up.
LATE_COMMIT_MARGIN = dt.timedelta(seconds=120)
ASNORM_SHORTLIST = 256  # raw-cosine candidates re-scored by AS-Norm, at least


@dataclass(frozen=True)
class StoredTemplate:
    """A row as a loader gives it: its key, its time stamp, and how to open it (only done when it changed)."""

    key: str
    stamp: dt.datetime
    open: Callable[[], VoiceTemplate]


# (session, tenant, model fingerprint, rows stamped at or after this, or all) -> rows
Loader = Callable[[Session, str, str, dt.datetime | None], Iterable[StoredTemplate]]


@dataclass(frozen=True)
class Ranked:
    key: str
    score: float
    margin: float  # over its pair's threshold: scores of different pairs are not comparable
    channels: str | None


@dataclass
class _TenantGallery:
    fingerprint: str
    by_channel: dict[AudioChannel | None, Gallery[str]] = field(default_factory=dict)
    stamps: dict[str, dt.datetime] = field(default_factory=dict)
    newest: dt.datetime | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def forget(self, key: str) -> None:
        self.stamps.pop(key, None)
        for gallery in self.by_channel.values():
            gallery.remove(key)

    def put(self, key: str, stamp: dt.datetime, template: VoiceTemplate) -> None:
        self.forget(key)
        # The side a probe is scored against does not depend on the probe's channel (VoiceTemplate.for_probe).
        embedding, channel = template.for_probe(AudioChannel.TELEPHONE)
        gallery = self.by_channel.get(channel)
        if gallery is None:
            gallery = self.by_channel[channel] = Gallery(len(embedding.vector))
        gallery.add(key, embedding.vector)
        self.stamps[key] = stamp


class TemplateGallery:
    """One kind of voice template, per tenant; ``rank`` scores a probe against a tenant's in one pass."""

    def __init__(self, load: Loader) -> None:
        self._load = load
        self._tenants: dict[str, _TenantGallery] = {}
        self._lock = threading.Lock()

    def sync(self, session: Session, tenant_id: str, fingerprint: str) -> None:
        """Brings the tenant's gallery up to date with the database (the caller's transaction)."""
        with self._lock:
            tenant = self._tenants.get(tenant_id)
            if tenant is None or tenant.fingerprint != fingerprint:  # a new model: templates of the old one go
                tenant = self._tenants[tenant_id] = _TenantGallery(fingerprint)
        with tenant.lock:
            since = None if tenant.newest is None else tenant.newest - LATE_COMMIT_MARGIN
            newest = tenant.newest  # moved on only when every row was looked at (a keyring fault stops the loop)
            for row in self._load(session, tenant_id, fingerprint, since):
                if tenant.stamps.get(row.key) != row.stamp:
                    try:
                        template = row.open()
                    except (TemplateFormatError, DecryptionError, KeyVersionRetired) as exc:  # not a keyring fault
                        # One damaged row (or one under a retired key version: a database older than a shred)
                        # must not stop every query of the tenant: it is left out (and looked at again while it is
                        # recent). Its key is a pseudonymous token, never data.
                        log.warning("gallery: %s could not be opened (%s); left out", row.key, type(exc).__name__)
                        tenant.forget(row.key)
                        continue
                    tenant.put(row.key, row.stamp, template)
                if newest is None or row.stamp > newest:
                    newest = row.stamp
            tenant.newest = newest

    def forget(self, tenant_id: str, key: str) -> None:
        """Takes ``key`` out (withdrawn, removed, or found gone by a re-check)."""
        with self._lock:
            tenant = self._tenants.get(tenant_id)
        if tenant is not None:
            with tenant.lock:
                tenant.forget(key)

    def size(self, tenant_id: str) -> int:
        with self._lock:
            tenant = self._tenants.get(tenant_id)
        return 0 if tenant is None else len(tenant.stamps)

    def total(self) -> int:
        """Templates held, all tenants together."""
        with self._lock:
            tenants = list(self._tenants.values())
        return sum(len(t.stamps) for t in tenants)

    def rank(
        self, tenant_id: str, probe: Embedding, channel: AudioChannel, scoring: ChannelScoring, limit: int
    ) -> list[Ranked]:
        """Up to ``limit`` keys scoring at or above their pair's threshold, best margin first."""
        with self._lock:
            tenant = self._tenants.get(tenant_id)
        if tenant is None or limit < 1:
            return []
        ranked: list[Ranked] = []
        with tenant.lock:
            if tenant.fingerprint != probe.model_fingerprint:
                return []
            for enrolled, gallery in tenant.by_channel.items():
                scorer = scoring.scorer(enrolled, channel)
                if scorer.method == "cosine":
                    scored = [(m.key, m.score) for m in gallery.top_k(probe.vector, limit, min_score=scorer.threshold)]
                else:
                    shortlist = gallery.top_k(probe.vector, max(limit * 10, ASNORM_SHORTLIST))
                    enrols = [Embedding(gallery.vector(m.key), tenant.fingerprint) for m in shortlist]
                    exact = scorer.scores_against(enrols, probe)
                    scored = [(m.key, float(s)) for m, s in zip(shortlist, exact, strict=True) if s >= scorer.threshold]
                ranked += [Ranked(key, score, score - scorer.threshold, scorer.channels) for key, score in scored]
        ranked.sort(key=lambda r: (-r.margin, r.key))
        return ranked[:limit]
