"""Fingerprint lockout, as for voice (service/lockout.py): failed payments (a finger not matching the card
presented, a wrong PIN for the customer the finger identifies) count in the database, across replicas; at
the limit the customer's finger is refused (423 with Retry-After) and finger-only payment no longer answers
them."""

from __future__ import annotations

from sqlalchemy.orm import Session

from service import lockout
from service.auth import Principal
from service.context import ServiceContext
from service.fingerprint.templates import FINGERPRINT


def refuse_if_locked(ctx: ServiceContext, session: Session, token: str) -> None:
    lockout.refuse_if_locked(ctx, session, token, FINGERPRINT, "failed fingerprint payments")


def count_failure(ctx: ServiceContext, session: Session, actor: Principal, token: str) -> None:
    lockout.count_failure(ctx, session, actor, token, FINGERPRINT)
