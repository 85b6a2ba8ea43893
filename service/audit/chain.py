"""Append-only audit trail where each entry carries the hash of the one before it.

Editing, inserting or deleting any entry breaks a hash or the sequence, and the head row
(last sequence number and hash) catches a cut-off tail.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.auth import Principal
from service.store.models import AuditEntry, AuditHead

GENESIS_HASH = "0" * 64
HEAD_ID = 1


def _utc(moment: dt.datetime) -> dt.datetime:
    # SQLite hands back naive datetimes; every timestamp here is written in UTC.
    return moment.replace(tzinfo=dt.UTC) if moment.tzinfo is None else moment.astimezone(dt.UTC)


def _canonical(entry: AuditEntry) -> bytes:
    fields = {
        "seq": entry.seq,
        "at": _utc(entry.at).isoformat(timespec="microseconds"),
        "tenant_id": entry.tenant_id,
        "actor": entry.actor,
        "action": entry.action,
        "subject_token": entry.subject_token,
        "outcome": entry.outcome,
        "score": None if entry.score is None else repr(float(entry.score)),
        "model_fingerprint": entry.model_fingerprint,
        "details": entry.details or {},
        "prev_hash": entry.prev_hash,
    }
    return json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()


def compute_hash(entry: AuditEntry) -> str:
    return hashlib.sha256(_canonical(entry)).hexdigest()


def append(
    session: Session,
    *,
    actor: str,
    action: str,
    outcome: str,
    tenant_id: str | None = None,
    subject_token: str | None = None,
    score: float | None = None,
    model_fingerprint: str | None = None,
    details: dict | None = None,
) -> AuditEntry:
    """Adds an entry in the caller's transaction; the head row lock orders appends across replicas."""
    head = session.execute(select(AuditHead).where(AuditHead.id == HEAD_ID).with_for_update()).scalar_one_or_none()
    if head is None:
        head = AuditHead(id=HEAD_ID, last_seq=0, last_hash=GENESIS_HASH)
        session.add(head)
    entry = AuditEntry(
        seq=head.last_seq + 1,
        at=dt.datetime.now(dt.UTC),
        tenant_id=tenant_id,
        actor=actor,
        action=action,
        subject_token=subject_token,
        outcome=outcome,
        score=None if score is None else float(score),
        model_fingerprint=model_fingerprint,
        details=details or {},
        prev_hash=head.last_hash,
    )
    entry.entry_hash = compute_hash(entry)
    session.add(entry)
    head.last_seq, head.last_hash = entry.seq, entry.entry_hash
    session.flush()
    return entry


def record_event(session: Session, actor: Principal, *, action: str, outcome: str, **fields: object) -> AuditEntry:
    """``append`` for a use case acting for an authenticated client: actor and tenant come from it."""
    return append(session, actor=actor.client_id, tenant_id=actor.tenant_id, action=action, outcome=outcome, **fields)


@dataclass(frozen=True)
class ChainReport:
    ok: bool
    entries: int
    first_bad_seq: int | None = None
    problem: str | None = None


def verify_chain(session: Session) -> ChainReport:
    expected_seq, prev_hash, count = 1, GENESIS_HASH, 0
    for entry in session.execute(select(AuditEntry).order_by(AuditEntry.seq)).scalars():
        if entry.seq != expected_seq:
            return ChainReport(False, count, expected_seq, f"entry {expected_seq} is missing")
        if entry.prev_hash != prev_hash:
            return ChainReport(False, count, entry.seq, f"entry {entry.seq} does not follow entry {entry.seq - 1}")
        if compute_hash(entry) != entry.entry_hash:
            return ChainReport(False, count, entry.seq, f"entry {entry.seq} was altered")
        prev_hash, expected_seq, count = entry.entry_hash, expected_seq + 1, count + 1
    head = session.get(AuditHead, HEAD_ID)
    last_seq, last_hash = (head.last_seq, head.last_hash) if head else (0, GENESIS_HASH)
    if last_seq == count and last_hash != prev_hash:
        return ChainReport(False, count, count, f"entry {count} does not match the head")
    if last_seq != count:
        # Entries past the head were added; entries up to the head were cut off: name the first of them.
        first_bad = min(count, last_seq) + 1
        return ChainReport(False, count, first_bad, f"the trail ends at entry {count} but the head says {last_seq}")
    return ChainReport(True, count)
