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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    Float,
    Integer,
    LargeBinary,
    Row,
    Select,
    String,
    Table,
    Text,
    case,
    cast,
    func,
    select,
    type_coerce,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import Session
from sqlalchemy.types import NullType, TypeDecorator

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


def _same(stored: str, computed: str) -> bool:
    # compare_digest refuses a str that is not ASCII, and a stored MAC may have been overwritten with one.
    return hmac.compare_digest(stored.encode(), computed.encode())


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


class UnreadableRow(ValueError):
    """A row of the trail with a value its column cannot hold (of another type): it was altered in the database."""

    def __init__(self, seq: int | None) -> None:
        super().__init__("a row of the audit trail cannot be read")
        self.seq = seq  # the entry's number, where at least that can be read
        self.after = 0  # in a listing: the entry before it


# Rows are read as the database holds them and converted here, one by one, so that a value of another type
# (SQLite stores any; PostgreSQL once the column's type was changed) names its row instead of failing the query.
_KINDS = ((JSON, dict), (Integer, int), (Float, (int, float)), (String, str), (DateTime, dt.datetime))
_Reader = tuple[str, Callable[[Any], Any], Any, bool]


def _stored(column: Column, dialect: Dialect) -> Any:
    if dialect.name == "sqlite":  # its driver fails the whole query on text that is not UTF-8: text comes as bytes
        return type_coerce(case((func.typeof(column) == "text", cast(column, LargeBinary)), else_=column), NullType())
    if isinstance(column.type, JSON):  # as text: a driver that parses JSON (psycopg2) fails on the whole result
        return cast(column, Text)
    return type_coerce(column, NullType())


def _raw(session: Session, table: Table) -> tuple[Select, list[_Reader]]:
    """A select of the table's columns as the database holds them, and how to read each of its rows."""
    dialect = session.get_bind().dialect
    query = select(*(_stored(column, dialect).label(column.name) for column in table.columns))
    return query, _readers(table, dialect)


def _readers(table: Table, dialect: Dialect) -> list[_Reader]:
    """Per column: its name, how the ORM converts its stored value, the type it then has, and if it may be NULL."""
    readers = []
    for column in table.columns:
        sql_type = column.type.impl if isinstance(column.type, TypeDecorator) else column.type
        kind = next(kind for base, kind in _KINDS if isinstance(sql_type, base))
        convert = None  # numbers and text come from the driver as they are
        if isinstance(sql_type, JSON):
            convert = json.loads
        elif isinstance(sql_type, DateTime):  # text in SQLite; and Timestamp makes each one timezone-aware
            convert = column.type.dialect_impl(dialect).result_processor(dialect, None)
        readers.append((column.name, convert or (lambda value: value), kind, bool(column.nullable)))
    return readers


def _value(stored: Any, convert: Callable[[Any], Any], kind: Any, nullable: bool) -> Any:
    if stored is None and nullable:
        return None
    if isinstance(stored, bytes):
        stored = stored.decode()
    value = None if stored is None else convert(stored)
    if isinstance(value, bool) or not isinstance(value, kind):
        raise TypeError("not of its column's type")
    return value


def _read_row(row: Row, readers: list[_Reader]) -> dict[str, Any]:
    stored = row._mapping
    try:
        return {name: _value(stored[name], *reader) for name, *reader in readers}
    except (ValueError, TypeError, AttributeError, OverflowError, RecursionError):
        seq = stored.get("seq")
        raise UnreadableRow(seq if type(seq) is int else None) from None


def _entries(session: Session, query: Select, readers: list[_Reader]) -> Iterator[AuditEntry]:
    """The entries ``query`` (from ``_raw``) selects, up to the first that cannot be read."""
    for row in session.execute(query):
        yield AuditEntry(**_read_row(row, readers))


def entries_after(session: Session, tenant_id: str, after_seq: int, limit: int) -> list[AuditEntry]:
    """A tenant's entries after ``after_seq``, in order, at most ``limit`` of them; ``UnreadableRow`` if one of
    them cannot be read."""
    query, readers = _raw(session, AuditEntry.__table__)
    query = query.where(AuditEntry.tenant_id == tenant_id, AuditEntry.seq > after_seq).order_by(AuditEntry.seq)
    entries: list[AuditEntry] = []
    try:
        for entry in _entries(session, query.limit(limit), readers):
            entries.append(entry)
    except UnreadableRow as exc:
        exc.after = entries[-1].seq if entries else after_seq
        raise
    return entries


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
    query, readers = _raw(session, AuditEntry.__table__)
    try:
        for entry in _entries(session, query.order_by(AuditEntry.seq), readers):
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
            elif not _same(entry.entry_mac, entry_mac):
                problem = f"entry {seq} was altered (its signature does not match)"
                return ChainReport(False, count, seq, problem, unsigned)
            prev_hash, expected_seq, count = entry.entry_hash, expected_seq + 1, count + 1
    except UnreadableRow as exc:
        if exc.seq is not None and exc.seq != expected_seq:
            return ChainReport(False, count, expected_seq, f"entry {expected_seq} is missing", unsigned)
        problem = f"entry {expected_seq} cannot be read as an audit entry: the row was altered"
        return ChainReport(False, count, expected_seq, problem, unsigned)
    return _check_head(session, key, ChainReport(True, count, unsigned=unsigned), prev_hash, unsigned_up_to)


def _check_head(
    session: Session, key: bytes, entries: ChainReport, last_entry_hash: str, unsigned_up_to: int
) -> ChainReport:
    """``entries`` (the report of intact entries) if the head row agrees with them and is signed."""
    count, unsigned = entries.entries, entries.unsigned
    query, readers = _raw(session, AuditHead.__table__)
    row = session.execute(query.where(AuditHead.id == HEAD_ID)).first()
    try:
        head = {} if row is None else _read_row(row, readers)
    except UnreadableRow:
        return ChainReport(False, count, count, "the head row cannot be read: it was altered", unsigned)
    last_seq, last_hash, mac = head.get("last_seq", 0), head.get("last_hash", GENESIS_HASH), head.get("last_mac")
    if last_seq == count and last_hash != last_entry_hash:
        return ChainReport(False, count, count, f"entry {count} does not match the head", unsigned)
    if last_seq != count:
        # Entries past the head were added; entries up to the head were cut off: name the first of them.
        first_bad = min(count, last_seq) + 1
        return ChainReport(
            False, count, first_bad, f"the trail ends at entry {count} but the head says {last_seq}", unsigned
        )
    head_signed = mac is not None and _same(mac, head_mac(key, last_seq, last_hash))
    if (count > unsigned_up_to or mac is not None) and not head_signed:
        return ChainReport(False, count, count, "the head row was altered (its signature does not match)", unsigned)
    return entries
