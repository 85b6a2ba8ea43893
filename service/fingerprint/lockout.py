"""Fingerprint lockout, as for voice: failed payments (a finger not matching the card presented, a wrong
PIN for the customer the finger identifies) count in the database, across replicas; at the limit the
customer's finger is refused (423 with Retry-After) and finger-only payment no longer answers them."""

from __future__ import annotations

from sqlalchemy.orm import Session

from service.auth import Principal
from service.context import ServiceContext
from service.errors import LockedOut
from service.fingerprint.templates import FINGERPRINT
from service.limits import locked_for_s, recent_failures, record_failure
from service.trail.chain import record_event


def refuse_if_locked(ctx: ServiceContext, session: Session, token: str) -> None:
    window, most = ctx.settings.lockout_window_s, ctx.settings.lockout_max_failures
    wait_s = locked_for_s(session, token, FINGERPRINT, window, most)
    if wait_s is not None:
        raise LockedOut(
            f"{most} or more failed fingerprint payments in the last {window} s; try again in {wait_s} s",
            retry_after_s=wait_s,
        )


def count_failure(ctx: ServiceContext, session: Session, actor: Principal, token: str) -> None:
    """One more failed attempt; the one that reaches the limit is audited as the lockout."""
    record_failure(session, token, FINGERPRINT)
    failures = recent_failures(session, token, FINGERPRINT, ctx.settings.lockout_window_s)
    if failures == ctx.settings.lockout_max_failures:
        record_event(
            session,
            actor,
            action="fingerprint.lockout",
            outcome="locked",
            subject_token=token,
            details={"failures": failures, "window_s": ctx.settings.lockout_window_s},
        )
