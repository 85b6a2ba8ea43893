"""A stream's claim and outcome in the database, so every replica sees the same stream.

A transport takes a stream with one conditional UPDATE (``open`` -> ``streaming``), so of two connections
for one id, on any replicas, only one gets it. Its latest event is written as it happens and its outcome
in the transaction that audits it.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import update
from sqlalchemy.orm import Session

from service.auth import Principal, Role
from service.store.models import VoiceStream, utcnow
from service.voice.verification import VoiceClaim


class StreamUnavailable(Exception):
    """A stream id a transport cannot use; ``reason`` is one of unknown_stream, stream_expired, stream_used."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def find_stream(session: Session, stream_id: str, tenant_id: str | None = None) -> VoiceStream | None:
    """The stream; with ``tenant_id``, only a stream of that tenant."""
    row = session.get(VoiceStream, stream_id)
    if row is None or (tenant_id is not None and row.tenant_id != tenant_id):
        return None
    return row


def is_expired(row: VoiceStream, now: dt.datetime | None = None) -> bool:
    """Opened but never connected in time: no longer usable."""
    return row.status == "open" and row.connect_by <= (now or utcnow())


def stream_status(row: VoiceStream) -> str:
    """The status a caller sees: ``expired`` for a stream never connected in time, else the stored one."""
    return "expired" if is_expired(row) else row.status


def take_stream(session: Session, stream_id: str, transport: str) -> VoiceStream:
    """Marks an open stream as connected through ``transport``; raises ``StreamUnavailable`` otherwise."""
    row = find_stream(session, stream_id)
    if row is None:
        raise StreamUnavailable("unknown_stream")
    now = utcnow()
    if is_expired(row, now):
        raise StreamUnavailable("stream_expired")
    taken = session.execute(
        update(VoiceStream)
        .where(VoiceStream.id == stream_id, VoiceStream.status == "open", VoiceStream.connect_by > now)
        .values(status="streaming", connected_at=now, transport=transport)
    )
    if taken.rowcount != 1:
        raise StreamUnavailable("stream_used")
    session.refresh(row)
    return row


def claim_of(row: VoiceStream) -> VoiceClaim:
    """The claim the stream was opened with, as checked then (decisions check it again)."""
    return VoiceClaim(Principal(row.client_id, row.tenant_id, Role.IVR), row.subject_token or "", row.purpose)


def set_event(session: Session, stream_id: str, event: dict) -> None:
    session.execute(update(VoiceStream).where(VoiceStream.id == stream_id).values(latest_event=event))


def close_stream(session: Session, stream_id: str, *, decision: str | None, reason: str, event: dict) -> None:
    """The stream's outcome: ``decided`` with a decision, else ``ended`` (a fault, a refusal)."""
    session.execute(
        update(VoiceStream)
        .where(VoiceStream.id == stream_id)
        .values(
            status="decided" if decision is not None else "ended",
            decision=decision,
            close_reason=reason,
            latest_event=event,
            closed_at=utcnow(),
        )
    )


def connect_deadline(seconds: int) -> dt.datetime:
    return utcnow() + dt.timedelta(seconds=seconds)
