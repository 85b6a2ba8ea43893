"""The in-memory 1:N galleries a process holds (customers' voices, the watchlist), warmed at start."""

from __future__ import annotations

from sqlalchemy import select

from service.context import ServiceContext
from service.store.models import Tenant
from service.voice.identification import voice_gallery
from service.watchlist.screening import watchlist_gallery


def warm_galleries(ctx: ServiceContext) -> int:
    """Opens every tenant's templates and watchlist entries into memory; returns how many are held."""
    fingerprint = ctx.embedder.fingerprint
    held = 0
    with ctx.db.session() as session:
        for tenant_id in session.execute(select(Tenant.id)).scalars().all():
            for gallery in (voice_gallery(ctx), watchlist_gallery(ctx)):
                gallery.sync(session, tenant_id, fingerprint)
                held += gallery.size(tenant_id)
    return held
