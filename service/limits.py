"""Request limits that hold across replicas: per-client rate windows and verification lockouts in the database."""

from __future__ import annotations

import datetime as dt
import math
import time

from sqlalchemy import Select, delete, func, select
from sqlalchemy.orm import Session

from service.errors import RateLimited
from service.store.models import RateWindow, VerificationFailure


def _epoch() -> float:
    return time.time()


def _insert(session: Session):  # noqa: ANN202 - the dialect's INSERT with ON CONFLICT support
    if session.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert


def count_request(session: Session, client_id: str, per_minute: int) -> None:
    """Counts one request in this client's current minute (an atomic upsert) and refuses past the limit."""
    now = _epoch()
    minute = int(now // 60)
    insert = _insert(session)(RateWindow).values(client_id=client_id, window_start=minute, count=1)
    count = session.execute(
        insert.on_conflict_do_update(
            index_elements=[RateWindow.client_id, RateWindow.window_start], set_={"count": RateWindow.count + 1}
        ).returning(RateWindow.count)
    ).scalar_one()
    if count == 1:
        session.execute(delete(RateWindow).where(RateWindow.client_id == client_id, RateWindow.window_start < minute))
    if count > per_minute:
        wait_s = 60 - int(now) % 60
        raise RateLimited(f"more than {per_minute} requests this minute; retry in {wait_s} s", retry_after_s=wait_s)


def recent_failures(session: Session, subject_token: str, modality: str, window_s: int) -> int:
    since = _window_start(window_s)
    return session.execute(
        select(func.count())
        .select_from(VerificationFailure)
        .where(
            VerificationFailure.subject_token == subject_token,
            VerificationFailure.modality == modality,
            VerificationFailure.at >= since,
        )
    ).scalar_one()


def _window_start(window_s: int) -> dt.datetime:
    return dt.datetime.now(dt.UTC) - dt.timedelta(seconds=window_s)


def locked_for_s(session: Session, subject_token: str, modality: str, window_s: int, max_failures: int) -> int | None:
    """Seconds until a locked-out subject may try again (None: not locked): until enough of its recent
    failures have left the window for fewer than ``max_failures`` to remain."""
    failures = list(
        session.execute(
            select(VerificationFailure.at)
            .where(
                VerificationFailure.subject_token == subject_token,
                VerificationFailure.modality == modality,
                VerificationFailure.at >= _window_start(window_s),
            )
            .order_by(VerificationFailure.at)
        ).scalars()
    )
    if len(failures) < max_failures:
        return None
    lifts_at = failures[len(failures) - max_failures] + dt.timedelta(seconds=window_s)
    return max(1, math.ceil((lifts_at - dt.datetime.now(dt.UTC)).total_seconds()))


def locked_subjects(modality: str, window_s: int, max_failures: int) -> Select:
    """The tokens of subjects locked out of ``modality`` now, as a subquery for other queries."""
    return (
        select(VerificationFailure.subject_token)
        .where(VerificationFailure.modality == modality, VerificationFailure.at >= _window_start(window_s))
        .group_by(VerificationFailure.subject_token)
        .having(func.count() >= max_failures)
    )


def record_failure(session: Session, subject_token: str, modality: str) -> None:
    session.add(VerificationFailure(subject_token=subject_token, modality=modality))
    session.flush()
