"""Tables. No raw customer reference and no plaintext template is ever a column here."""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


class Base(DeclarativeBase):
    pass


class Timestamp(TypeDecorator):
    """A timezone-aware UTC datetime on every backend (SQLite hands back naive ones otherwise)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: object) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("timestamps must be timezone-aware")
        return value.astimezone(dt.UTC)  # SQLite keeps the wall time and drops the offset

    def process_result_value(self, value: dt.datetime | None, dialect: object) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


class Tenant(Base):
    __tablename__ = "tenants"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[dt.datetime] = mapped_column(Timestamp, default=utcnow)


class Client(Base):
    """An API client (an IVR, a terminal, the portal, an auditor, an admin) of one tenant."""

    __tablename__ = "clients"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(20))
    key_sha256: Mapped[str] = mapped_column(String(64))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[dt.datetime] = mapped_column(Timestamp, default=utcnow)


class Subject(Base):
    """A customer, known only by the keyed HMAC of tenant + their reference.

    ``last_active_at`` is the customer's last interaction that retention counts from (a consent given,
    a successful verification); ``never_enrol_at`` is set while the customer asked never to be enrolled.
    """

    __tablename__ = "subjects"
    token: Mapped[str] = mapped_column(String(80), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    created_at: Mapped[dt.datetime] = mapped_column(Timestamp, default=utcnow)
    last_active_at: Mapped[dt.datetime | None] = mapped_column(Timestamp, nullable=True, index=True)
    never_enrol_at: Mapped[dt.datetime | None] = mapped_column(Timestamp, nullable=True)


class Consent(Base):
    __tablename__ = "consents"
    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=lambda: new_id("con"))
    subject_token: Mapped[str] = mapped_column(ForeignKey("subjects.token"), index=True)
    modality: Mapped[str] = mapped_column(String(20))
    purpose: Mapped[str] = mapped_column(String(64))
    notice_version: Mapped[str] = mapped_column(String(64))
    notice_sha256: Mapped[str] = mapped_column(String(64))
    channel: Mapped[str] = mapped_column(String(20))
    evidence_ref: Mapped[str] = mapped_column(String(200))
    recorded_by: Mapped[str] = mapped_column(String(64))
    granted_at: Mapped[dt.datetime] = mapped_column(Timestamp, default=utcnow)
    withdrawn_at: Mapped[dt.datetime | None] = mapped_column(Timestamp, nullable=True)


class DataKey(Base):
    """A subject's data key for one modality, wrapped by a key-encryption key version.

    ``key_id`` names this key for its whole life (re-wrapping keeps it): the destruction ledger and
    the backups' key sections refer to a key by it, so a key made after a withdrawal (fresh consent,
    new enrolment) is never taken for the one the withdrawal destroyed.
    """

    __tablename__ = "data_keys"
    __table_args__ = (UniqueConstraint("subject_token", "modality"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    key_id: Mapped[str] = mapped_column(String(40), unique=True, index=True, default=lambda: new_id("dk"))
    subject_token: Mapped[str] = mapped_column(ForeignKey("subjects.token"), index=True)
    modality: Mapped[str] = mapped_column(String(20))
    kek_version: Mapped[int] = mapped_column(Integer)
    wrapped: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[dt.datetime] = mapped_column(Timestamp, default=utcnow)


KEYRING_STATE_ID = 1  # the one row of keyring_state


class KeyringState(Base):
    """One row: which keyring this database belongs to, and the oldest key version new data keys may use.

    ``keyring_id`` (derived from the pepper, so it reveals nothing) is set by the first keyring
    loaded against the database; any other keyring is refused, so two hosts that each made a
    keyring cannot split one deployment. ``min_wrap_version`` is raised to the new active version by
    ``keys rotate`` under the row's lock; wrapping a data key takes a shared lock on it and checks
    the replica's keyring against it. So a replica whose keyring predates a rotation is refused
    instead of wrapping under a version that may be retired next, and a rotation or a retirement
    waits for the wraps in flight and then sees them.
    """

    __tablename__ = "keyring_state"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    keyring_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    min_wrap_version: Mapped[int] = mapped_column(Integer)


ERASURE_STATE_ID = 1  # the one row of erasure_state


class ErasureState(Base):
    """One row: what the shredding schedule needs to know across replicas (``service.erasure``).

    ``ledger_lines`` counts the destruction-ledger lines that committed withdrawals appended: a ledger
    holding fewer lines was cut or replaced, and no replica serves on it. ``destroyed_since_shred``
    counts data keys destroyed since the last shred, whose residue (PostgreSQL's dead rows and WAL)
    is readable until the key version it was wrapped under is retired.
    """

    __tablename__ = "erasure_state"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    ledger_lines: Mapped[int] = mapped_column(Integer)
    destroyed_since_shred: Mapped[int] = mapped_column(Integer)
    last_shred_at: Mapped[dt.datetime | None] = mapped_column(Timestamp, nullable=True)


class Template(Base):
    __tablename__ = "templates"
    __table_args__ = (Index("ix_templates_subject_modality", "subject_token", "modality"),)
    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=lambda: new_id("tpl"))
    subject_token: Mapped[str] = mapped_column(ForeignKey("subjects.token"))
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    modality: Mapped[str] = mapped_column(String(20))
    model_fingerprint: Mapped[str] = mapped_column(String(80))
    sealed: Mapped[bytes] = mapped_column(LargeBinary)
    sample_count: Mapped[int] = mapped_column(Integer)
    # Fingerprint templates: the ISO/IEC 19794-2 finger position (1-10) of the finger; None for voice.
    finger_position: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(Timestamp, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(Timestamp, default=utcnow)


class PaymentLink(Base):
    """A subject's payment token (the acquirer's or network's token for a card, never a card number),
    sealed under the subject's data key for ``modality``, so a withdrawal destroys it with the templates.

    ``token_digest`` is a keyed HMAC of tenant + payment token (the keyring's pepper): it finds the link of
    a card presented at the till without holding the token in the clear. ``pin_hash`` is an argon2id hash
    of a peppered PIN (``service.payment.pins``), or None when the customer chose no PIN.
    """

    __tablename__ = "payment_links"
    __table_args__ = (UniqueConstraint("tenant_id", "token_digest"),)
    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=lambda: new_id("pay"))
    subject_token: Mapped[str] = mapped_column(ForeignKey("subjects.token"), unique=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    modality: Mapped[str] = mapped_column(String(20))
    token_digest: Mapped[str] = mapped_column(String(64))
    sealed: Mapped[bytes] = mapped_column(LargeBinary)
    pin_hash: Mapped[str | None] = mapped_column(String(200), nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(Timestamp, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(Timestamp, default=utcnow)


class EnrolmentSession(Base):
    __tablename__ = "enrolment_sessions"
    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=lambda: new_id("enr"))
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    subject_token: Mapped[str] = mapped_column(ForeignKey("subjects.token"))
    modality: Mapped[str] = mapped_column(String(20))
    purpose: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(20), default="open")  # open, completed, abandoned
    created_at: Mapped[dt.datetime] = mapped_column(Timestamp, default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(Timestamp)


class EnrolmentSample(Base):
    """A sample's embedding, sealed under the subject's data key until the session completes."""

    __tablename__ = "enrolment_samples"
    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=lambda: new_id("smp"))
    session_id: Mapped[str] = mapped_column(ForeignKey("enrolment_sessions.id"), index=True)
    accepted: Mapped[bool] = mapped_column(Boolean)
    net_speech_s: Mapped[float] = mapped_column(Float)
    report: Mapped[dict] = mapped_column(JSON)
    sealed: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(Timestamp, default=utcnow)


class VerificationFailure(Base):
    """Failed verifications, for lockouts that hold across replicas."""

    __tablename__ = "verification_failures"
    __table_args__ = (Index("ix_failures_subject_at", "subject_token", "at"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    subject_token: Mapped[str] = mapped_column(String(80))
    modality: Mapped[str] = mapped_column(String(20))
    at: Mapped[dt.datetime] = mapped_column(Timestamp, default=utcnow)


class RateWindow(Base):
    """Requests per client per minute window, shared by every replica."""

    __tablename__ = "rate_windows"
    client_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    window_start: Mapped[int] = mapped_column(Integer, primary_key=True)  # epoch minute
    count: Mapped[int] = mapped_column(Integer, default=0)


class AuditHead(Base):
    """One row: the last entry's sequence number and hash. Locking it serialises appends across replicas."""

    __tablename__ = "audit_head"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    last_seq: Mapped[int] = mapped_column(Integer, default=0)
    last_hash: Mapped[str] = mapped_column(String(64))
    last_mac: Mapped[str | None] = mapped_column(String(64), nullable=True)  # HMAC of (last_seq, last_hash)


class AuditEntry(Base):
    __tablename__ = "audit_entries"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    at: Mapped[dt.datetime] = mapped_column(Timestamp)
    tenant_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    actor: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(64))
    subject_token: Mapped[str | None] = mapped_column(String(80), nullable=True, index=True)
    outcome: Mapped[str] = mapped_column(String(32))
    score: Mapped[float | None] = mapped_column(Float, nullable=True)
    model_fingerprint: Mapped[str | None] = mapped_column(String(80), nullable=True)
    details: Mapped[dict] = mapped_column(JSON, default=dict)
    prev_hash: Mapped[str] = mapped_column(String(64))
    entry_hash: Mapped[str] = mapped_column(String(64))
    # HMAC-SHA256 of the same fields under the keyring's audit key; absent only on entries written
    # before entries were signed.
    entry_mac: Mapped[str | None] = mapped_column(String(64), nullable=True)


class AuditJob(Base):
    """An accuracy audit an auditor started through the API; its state is shared by every replica."""

    __tablename__ = "audit_jobs"
    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=lambda: new_id("aud"))
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    requested_by: Mapped[str] = mapped_column(String(64))
    params: Mapped[dict] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(20), default="queued")  # queued, running, done, failed
    error: Mapped[str | None] = mapped_column(String(500), nullable=True)
    # The whole report (with every trial score) is loaded only when it is asked for; status polls
    # read ``results``, its headline figures.
    report: Mapped[dict | None] = mapped_column(JSON, nullable=True, deferred=True)
    results: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(Timestamp, default=utcnow)
    finished_at: Mapped[dt.datetime | None] = mapped_column(Timestamp, nullable=True)
    # Written every few seconds by the replica running the job; a stale one means that replica stopped.
    heartbeat_at: Mapped[dt.datetime | None] = mapped_column(Timestamp, nullable=True)


class Receipt(Base):
    """A signed, machine-readable receipt given to a customer (consent given or withdrawn, a retention
    purge, an erasure), kept so the customer can download it again. ``jws`` is the compact JWS (EdDSA)
    the deployment signed; its payload is the receipt itself."""

    __tablename__ = "receipts"
    __table_args__ = (Index("ix_receipts_subject_at", "subject_token", "created_at"),)
    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=lambda: new_id("rct"))
    subject_token: Mapped[str] = mapped_column(ForeignKey("subjects.token"))
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    kind: Mapped[str] = mapped_column(String(32))  # consent.grant, consent.withdraw, retention.purge, erasure
    created_at: Mapped[dt.datetime] = mapped_column(Timestamp, default=utcnow)
    jws: Mapped[str] = mapped_column(Text)


class PortalLink(Base):
    """A one-time portal link: usable once (``used_at``), until ``expires_at``. The link itself is signed
    with a key derived from the keyring, so someone who reads this table cannot make or use a link."""

    __tablename__ = "portal_links"
    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=lambda: new_id("pln"))
    subject_token: Mapped[str] = mapped_column(ForeignKey("subjects.token"), index=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    created_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(Timestamp, default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(Timestamp)
    used_at: Mapped[dt.datetime | None] = mapped_column(Timestamp, nullable=True)


class PortalSession(Base):
    """A customer's portal session; the cookie holds its secret, this row only the secret's SHA-256."""

    __tablename__ = "portal_sessions"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # SHA-256 of the cookie's secret
    subject_token: Mapped[str] = mapped_column(ForeignKey("subjects.token"), index=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"))
    link_id: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(Timestamp, default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(Timestamp)
    ended_at: Mapped[dt.datetime | None] = mapped_column(Timestamp, nullable=True)
class WatchlistEntry(Base):
    """A known fraudster's voice on a tenant's watchlist: a voice template sealed under a data key of its own.

    No customer consent applies: the entry records its legal basis and the case it belongs to instead.
    ``id`` is also the entry's subject token (a subject row of its own, never a customer's), so its data
    key lives with every other data key: rotated, backed up, destroyed and ledgered the same way.
    """

    __tablename__ = "watchlist_entries"
    id: Mapped[str] = mapped_column(ForeignKey("subjects.token"), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    case_reference: Mapped[str] = mapped_column(String(200))
    legal_basis: Mapped[str] = mapped_column(String(2000))
    added_by: Mapped[str] = mapped_column(String(64))
    model_fingerprint: Mapped[str] = mapped_column(String(80))
    sample_count: Mapped[int] = mapped_column(Integer)
    net_speech_s: Mapped[float] = mapped_column(Float)
    sealed: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[dt.datetime] = mapped_column(Timestamp, default=utcnow)
class VoiceStream(Base):
    """A real-time verification stream: its claim and its outcome, shared by every replica.

    The audio lives only in the process holding the stream's connection. A transport takes the stream by
    moving it from ``open`` to ``streaming`` (one UPDATE: only one connection, on any replica, can); the
    decision is written in the transaction that audits it.
    """

    __tablename__ = "voice_streams"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)  # a UUID: AudioSocket's stream id
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    client_id: Mapped[str] = mapped_column(String(64))
    subject_token: Mapped[str | None] = mapped_column(String(80), nullable=True, index=True)
    purpose: Mapped[str] = mapped_column(String(64))
    codec: Mapped[str] = mapped_column(String(10))
    sample_rate: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(20), default="open")  # open, streaming, decided, ended
    decision: Mapped[str | None] = mapped_column(String(20), nullable=True)
    latest_event: Mapped[dict] = mapped_column(JSON, default=dict)
    close_reason: Mapped[str | None] = mapped_column(String(40), nullable=True)
    transport: Mapped[str | None] = mapped_column(String(20), nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(Timestamp, default=utcnow)
    connect_by: Mapped[dt.datetime] = mapped_column(Timestamp)
    connected_at: Mapped[dt.datetime | None] = mapped_column(Timestamp, nullable=True)
    closed_at: Mapped[dt.datetime | None] = mapped_column(Timestamp, nullable=True)
