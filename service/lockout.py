"""Lockout, the same for every modality: failed attempts count in the database (so across replicas); at
the limit the subject is refused (423 with Retry-After), and the attempt that reaches it is audited as
``<modality>.lockout``."""

from __future__ import annotations

from sqlalchemy.orm import Session

from service.auth import Principal
from service.context import ServiceContext
from service.errors import LockedOut
from service.limits import locked_for_s, recent_failures, record_failure
from service.trail.chain import record_event


def refuse_if_locked(ctx: ServiceContext, session: Session, token: str, modality: str, attempts: str) -> None:
    """423 while ``token`` has the most failed ``attempts`` (words for the message) of ``modality`` in the window."""
    window, most = ctx.settings.lockout_window_s, ctx.settings.lockout_max_failures
    wait_s = locked_for_s(session, token, modality, window, most)
    if wait_s is not None:
        raise LockedOut(
            f"{most} or more {attempts} in the last {window} s; try again in {wait_s} s", retry_after_s=wait_s
        )


def count_failure(ctx: ServiceContext, session: Session, actor: Principal, token: str, modality: str) -> None:
    """One more failed attempt; the one that reaches the limit is audited as the lockout."""
    record_failure(session, token, modality)
    failures = recent_failures(session, token, modality, ctx.settings.lockout_window_s)
    if failures == ctx.settings.lockout_max_failures:
        record_event(
            session,
            actor,
            action=f"{modality}.lockout",
            outcome="locked",
            subject_token=token,
            details={"failures": failures, "window_s": ctx.settings.lockout_window_s},
        )
