"""The audit trail, for auditors: entries of their tenant and the chain's verification."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query

from service.auth import Principal, Role
from service.context import ServiceContext
from service.deps import get_ctx, require
from service.errors import Conflict
from service.trail.chain import UnreadableRow, entries_after, verify_chain
from service.trail.schemas import ChainOut, EntriesOut, EntryOut

router = APIRouter(prefix="/v1/audit", tags=["audit"])
MAX_SEQ = 2**63 - 1  # the database's largest integer
auditor = require(Role.AUDITOR)


class TrailDamaged(Conflict):
    code, title = "audit_trail_damaged", "The audit trail is damaged"


def _damaged(exc: UnreadableRow) -> TrailDamaged:
    """Which entry cannot be read, and how to list past it: an altered row is not shown as if it were an entry."""
    if exc.seq is None:
        where, past = f"the entry after entry {exc.after}", ""
    else:
        where, past = f"entry {exc.seq}", f"; after_seq={exc.seq} lists the entries after it"
    return TrailDamaged(
        f"{where} cannot be read as an audit entry: its row was altered in the database. "
        f"Run 'bioident audit verify-chain' (or GET /v1/audit/chain){past}"
    )


@router.get("/entries", response_model=EntriesOut)
def entries(
    after_seq: int = Query(default=0, ge=0, le=MAX_SEQ),
    limit: int = Query(default=100, ge=1, le=1000),
    ctx: ServiceContext = Depends(get_ctx),
    actor: Principal = Depends(auditor),
) -> EntriesOut:
    with ctx.db.session() as session:
        try:
            found = entries_after(session, actor.tenant_id, after_seq, limit)
        except UnreadableRow as exc:
            raise _damaged(exc) from None
    items = [
        EntryOut(
            seq=e.seq,
            at=e.at,
            actor=e.actor,
            action=e.action,
            subject_token=e.subject_token,
            outcome=e.outcome,
            score=e.score,
            model=e.model_fingerprint,
            details=e.details,
            prev_hash=e.prev_hash,
            entry_hash=e.entry_hash,
        )
        for e in found
    ]
    return EntriesOut(entries=items, next_after_seq=items[-1].seq if items else after_seq)


@router.get("/chain", response_model=ChainOut)
def chain(ctx: ServiceContext = Depends(get_ctx), actor: Principal = Depends(auditor)) -> ChainOut:
    with ctx.db.session() as session:
        report = verify_chain(session, ctx.settings.audit_unsigned_up_to)
    return ChainOut(**report.as_dict())
