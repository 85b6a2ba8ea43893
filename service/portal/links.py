"""One-time portal links and the sessions they open.

A link is ``<link id>.<expiry>.<HMAC>``: signed with a key derived from the keyring (so reading the
database is not enough to make or use one), short-lived, bound to one subject through its row, and
single-use across replicas: the exchange is one conditional UPDATE (``used_at`` still empty, not yet
expired), so of two replicas opening the same link at once exactly one succeeds. The exchange gives a
session whose secret lives only in the customer's cookie; the database keeps its SHA-256.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import delete, update

from service.auth import Principal, Role
from service.consent.records import subject_in_tenant
from service.context import ServiceContext
from service.errors import ServiceError
from service.limits import count_request
from service.store.db import Database
from service.store.models import PortalLink, PortalSession, utcnow
from service.trail.chain import record_event

CUSTOMER = "customer"  # the audit trail's actor for what customers do in the portal
_LINK = re.compile(r"^(pln_[0-9a-f]{32})\.([0-9]{1,12})\.([0-9a-f]{64})$")
_LINK_LABEL = b"bioident/portal/links/v1"


class LinkInvalid(ServiceError):
    status, code, title = 404, "link_invalid", "This link is not valid"


class LinkExpired(ServiceError):
    status, code, title = 410, "link_expired", "This link has expired"


class LinkUsed(ServiceError):
    status, code, title = 410, "link_used", "This link was already used"


class NotSignedIn(ServiceError):
    status, code, title = 401, "not_signed_in", "Not signed in"


class CsrfRefused(ServiceError):
    status, code, title = 403, "csrf", "The form could not be accepted"


@dataclass(frozen=True)
class IssuedLink:
    url: str
    expires_at: dt.datetime


@dataclass(frozen=True)
class Customer:
    """A signed-in customer: whose record, in which tenant, and the session's id (for CSRF tokens)."""

    session_id: str
    subject_token: str
    tenant_id: str

    @property
    def actor(self) -> Principal:
        return Principal(CUSTOMER, self.tenant_id, Role.PORTAL)


def portal_key(ctx: ServiceContext) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_LINK_LABEL).derive(ctx.db.audit_key)


def _mac(key: bytes, message: str) -> str:
    return hmac.new(key, message.encode(), hashlib.sha256).hexdigest()


def issue_link(ctx: ServiceContext, actor: Principal, reference: str, portal_url: str) -> IssuedLink:
    """A one-time link for the customer with ``reference`` (who must have a record in this tenant)."""
    token = ctx.token(actor.tenant_id, reference)
    expires_at = utcnow() + dt.timedelta(seconds=ctx.settings.portal_link_ttl_s)
    with ctx.db.session() as session:
        subject_in_tenant(session, actor.tenant_id, token)
        link = PortalLink(subject_token=token, tenant_id=actor.tenant_id, created_by=actor.client_id,
                          expires_at=expires_at)  # fmt: skip
        session.add(link)
        session.flush()
        record_event(session, actor, action="portal.link", outcome="issued", subject_token=token,
                     details={"link_id": link.id, "expires_at": expires_at.isoformat(timespec="seconds")})  # fmt: skip
        link_id = link.id
    expiry = str(int(expires_at.timestamp()))
    signed = f"{link_id}.{expiry}.{_mac(portal_key(ctx), f'link:{link_id}.{expiry}')}"
    return IssuedLink(url=f"{portal_url.rstrip('/')}/l/{signed}", expires_at=expires_at)


def _verified_link_id(ctx: ServiceContext, signed: str) -> str:
    """The link id of a link this deployment signed, not past its signed expiry; else a refusal."""
    match = _LINK.match(signed)
    if match is None:
        raise LinkInvalid("this link is not one of ours: ask for a new one")
    link_id, expiry, mac = match.groups()
    if not hmac.compare_digest(mac, _mac(portal_key(ctx), f"link:{link_id}.{expiry}")):
        raise LinkInvalid("this link is not one of ours: ask for a new one")
    if int(expiry) <= utcnow().timestamp():
        raise LinkExpired("this link has expired: ask for a new one")
    return link_id


def count_attempt(ctx: ServiceContext, client_address: str) -> None:
    """Link look-ups and exchanges per client address per minute, counted across replicas."""
    with ctx.db.session() as session:
        count_request(session, f"portal:{client_address}"[:64], ctx.settings.portal_exchange_per_minute)


def check_link(ctx: ServiceContext, signed: str) -> None:
    """Refuses a forged, expired or used link without using it up (the page before the exchange)."""
    link_id = _verified_link_id(ctx, signed)
    with ctx.db.session() as session:
        _refuse_unusable(session.get(PortalLink, link_id))


def _refuse_unusable(link: PortalLink | None) -> None:
    if link is None:
        raise LinkInvalid("this link is not one of ours: ask for a new one")
    if link.used_at is not None:
        raise LinkUsed("this link was already used: each link opens the portal once; ask for a new one")
    if link.expires_at <= utcnow():
        raise LinkExpired("this link has expired: ask for a new one")


def exchange_link(ctx: ServiceContext, signed: str) -> str:
    """Uses the link up and opens a session; the session's secret (for the cookie only)."""
    link_id = _verified_link_id(ctx, signed)
    now = utcnow()
    with ctx.db.session() as session:
        used = session.execute(
            update(PortalLink)
            .where(PortalLink.id == link_id, PortalLink.used_at.is_(None), PortalLink.expires_at > now)
            .values(used_at=now)
        ).rowcount
        link = session.get(PortalLink, link_id)
        if used != 1:
            _refuse_unusable(link)
            raise LinkUsed("this link was already used: ask for a new one")
        secret = secrets.token_urlsafe(32)
        session.add(
            PortalSession(
                id=_session_id(secret),
                subject_token=link.subject_token,
                tenant_id=link.tenant_id,
                link_id=link.id,
                expires_at=now + dt.timedelta(seconds=ctx.settings.portal_session_ttl_s),
            )
        )
        record_event(session, Principal(CUSTOMER, link.tenant_id, Role.PORTAL), action="portal.session",
                     outcome="opened", subject_token=link.subject_token, details={"link_id": link.id})  # fmt: skip
    return secret


def _session_id(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def current_customer(ctx: ServiceContext, secret: str | None) -> Customer:
    """The customer whose session cookie this is; refused when there is none, or it ended or expired."""
    if not secret or len(secret) > 100:
        raise NotSignedIn("open the portal with the link your bank sent you")
    with ctx.db.session() as session:
        row = session.get(PortalSession, _session_id(secret))
        if row is None or row.ended_at is not None or row.expires_at <= utcnow():
            raise NotSignedIn("your session has ended: ask for a new link to open the portal again")
        return Customer(row.id, row.subject_token, row.tenant_id)


def end_session(ctx: ServiceContext, customer: Customer) -> None:
    with ctx.db.session() as session:
        row = session.get(PortalSession, customer.session_id)
        if row is not None and row.ended_at is None:
            row.ended_at = utcnow()


def csrf_token(ctx: ServiceContext, customer: Customer) -> str:
    """The session's CSRF token: derived from its id, so every replica checks it without storing it."""
    return _mac(portal_key(ctx), f"csrf:{customer.session_id}")


def check_csrf(ctx: ServiceContext, customer: Customer, given: str | None) -> None:
    if not given or not hmac.compare_digest(given, csrf_token(ctx, customer)):
        raise CsrfRefused("the form was sent without its security token: open the page again and resend it")


def prune(db: Database, *, keep: dt.timedelta = dt.timedelta(days=1)) -> int:
    """Deletes links and sessions that ended more than ``keep`` ago (their use is in the audit trail)."""
    before = utcnow() - keep
    with db.session() as session:
        sessions = session.execute(delete(PortalSession).where(PortalSession.expires_at < before)).rowcount
        links = session.execute(delete(PortalLink).where(PortalLink.expires_at < before)).rowcount
    return sessions + links
