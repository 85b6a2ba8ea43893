"""Append-only audit trail: each entry carries the hash of the one before it and an HMAC of itself.

Editing, inserting or deleting any entry breaks a hash or the sequence, and the head row (last
sequence number and hash) catches a cut-off tail. Someone who can write the database could
recompute every hash; the HMACs, under a key derived from the keyring (never stored in the
database), stop that: entries and the head row are signed. Only entries the operator declares as
written before signing began (``BIOIDENT_AUDIT_UNSIGNED_UP_TO``, kept outside the database) may
lack a signature; they are checked by hash alone and counted. A cut-off tail behind an older head
row put back (signed when it was current) needs an anchor kept elsewhere: ``service.trail.anchors``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.auth import Principal
from service.store.db import AUDIT_KEY
from service.store.models import AuditEntry, AuditHead

GENESIS_HASH = "0" * 64
HEAD_ID = 1


def _canonical(entry: AuditEntry) -> bytes:
    fields = {
        "seq": entry.seq,
        "at": entry.at.astimezone(dt.UTC).isoformat(timespec="microseconds"),
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


def hash_and_mac(key: bytes, entry: AuditEntry) -> tuple[str, str]:
    """The entry's hash and its HMAC under ``key``, from one serialisation of it."""
    canonical = _canonical(entry)
    return hashlib.sha256(canonical).hexdigest(), hmac.new(key, canonical, hashlib.sha256).hexdigest()


def head_mac(key: bytes, last_seq: int, last_hash: str) -> str:
    return hmac.new(key, f"head:{last_seq}:{last_hash}".encode(), hashlib.sha256).hexdigest()


class AuditKeyMissing(RuntimeError):
    """The session was opened without the audit key (a wiring error, not bad input)."""


def audit_key(session: Session) -> bytes:
    key = session.info.get(AUDIT_KEY)
    if not key:
        raise AuditKeyMissing("audit entries are signed: open the database with the keyring's audit key")
    return key


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
    """Adds a signed entry in the caller's transaction; the head row lock orders appends across replicas."""
    key = audit_key(session)
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
    entry.entry_hash, entry.entry_mac = hash_and_mac(key, entry)
    session.add(entry)
    head.last_seq, head.last_hash = entry.seq, entry.entry_hash
    head.last_mac = head_mac(key, head.last_seq, head.last_hash)
    session.flush()
    return entry


def record_event(session: Session, actor: Principal, *, action: str, outcome: str, **fields: object) -> AuditEntry:
    """``append`` for a use case acting for an authenticated client: actor and tenant come from it."""
    return append(session, actor=actor.client_id, tenant_id=actor.tenant_id, action=action, outcome=outcome, **fields)


def entries_after(session: Session, tenant_id: str, after_seq: int, limit: int) -> list[AuditEntry]:
    """A tenant's entries after ``after_seq``, in order, at most ``limit`` of them."""
    query = (
        select(AuditEntry)
        .where(AuditEntry.tenant_id == tenant_id, AuditEntry.seq > after_seq)
        .order_by(AuditEntry.seq)
        .limit(limit)
    )
    return list(session.execute(query).scalars())


@dataclass(frozen=True)
class ChainReport:
    ok: bool
    entries: int
    first_bad_seq: int | None = None
    problem: str | None = None
    unsigned: int = 0  # entries from before signing began, checked by hash alone

    def as_dict(self) -> dict:
        return {
            "ok": self.ok,
            "entries": self.entries,
            "first_bad_seq": self.first_bad_seq,
            "problem": self.problem,
            "unsigned_entries": self.unsigned,
        }


def verify_chain(session: Session, unsigned_up_to: int = 0) -> ChainReport:
    """Checks every entry and the head; entries up to ``unsigned_up_to`` may predate signing."""
    key = audit_key(session)
    expected_seq, prev_hash, count, unsigned = 1, GENESIS_HASH, 0, 0
    for entry in session.execute(select(AuditEntry).order_by(AuditEntry.seq)).scalars():
        seq = entry.seq
        if seq != expected_seq:
            return ChainReport(False, count, expected_seq, f"entry {expected_seq} is missing", unsigned)
        if entry.prev_hash != prev_hash:
            return ChainReport(False, count, seq, f"entry {seq} does not follow entry {seq - 1}", unsigned)
        entry_hash, entry_mac = hash_and_mac(key, entry)
        if entry_hash != entry.entry_hash:
            return ChainReport(False, count, seq, f"entry {seq} was altered", unsigned)
        if entry.entry_mac is None:
            if seq > unsigned_up_to:
                return ChainReport(False, count, seq, f"entry {seq} is not signed", unsigned)
            unsigned += 1
        elif not hmac.compare_digest(entry.entry_mac, entry_mac):
            return ChainReport(False, count, seq, f"entry {seq} was altered (its signature does not match)", unsigned)
        prev_hash, expected_seq, count = entry.entry_hash, expected_seq + 1, count + 1
    head = session.get(AuditHead, HEAD_ID)
    last_seq, last_hash = (head.last_seq, head.last_hash) if head else (0, GENESIS_HASH)
    if last_seq == count and last_hash != prev_hash:
        return ChainReport(False, count, count, f"entry {count} does not match the head", unsigned)
    if last_seq != count:
        # Entries past the head were added; entries up to the head were cut off: name the first of them.
        first_bad = min(count, last_seq) + 1
        return ChainReport(
            False, count, first_bad, f"the trail ends at entry {count} but the head says {last_seq}", unsigned
        )
    mac = head.last_mac if head is not None else None
    head_signed = mac is not None and hmac.compare_digest(mac, head_mac(key, last_seq, last_hash))
    if (count > unsigned_up_to or mac is not None) and not head_signed:
        return ChainReport(False, count, count, "the head row was altered (its signature does not match)", unsigned)
    return ChainReport(True, count, unsigned=unsigned)
