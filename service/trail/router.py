"""The audit trail, for auditors: entries of their tenant and the chain's verification."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query
from sqlalchemy import select

from service.api.deps import get_ctx, require
from service.audit.chain import verify_chain
from service.auth import Principal, Role
from service.context import ServiceContext
from service.store.models import AuditEntry

router = APIRouter(prefix="/v1/audit", tags=["audit"])
auditor = require(Role.AUDITOR)


@router.get("/entries")
def entries(
    after_seq: int = Query(default=0, ge=0),
    limit: int = Query(default=100, ge=1, le=1000),
    ctx: ServiceContext = Depends(get_ctx),
    actor: Principal = Depends(auditor),
) -> dict:
    with ctx.db.session() as session:
        rows = session.execute(
            select(AuditEntry)
            .where(AuditEntry.tenant_id == actor.tenant_id, AuditEntry.seq > after_seq)
            .order_by(AuditEntry.seq)
            .limit(limit)
        ).scalars()
        items = [
            {
                "seq": e.seq,
                "at": e.at,
                "actor": e.actor,
                "action": e.action,
                "subject_token": e.subject_token,
                "outcome": e.outcome,
                "score": e.score,
                "model": e.model_fingerprint,
                "details": e.details,
                "prev_hash": e.prev_hash,
                "entry_hash": e.entry_hash,
            }
            for e in rows
        ]
    return {"entries": items, "next_after_seq": items[-1]["seq"] if items else after_seq}


@router.get("/chain")
def chain(ctx: ServiceContext = Depends(get_ctx), actor: Principal = Depends(auditor)) -> dict:
    with ctx.db.session() as session:
        report = verify_chain(session, ctx.settings.audit_unsigned_up_to)
    return report.as_dict()
