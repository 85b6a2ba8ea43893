"""API keys, roles and tenants. Keys are stored only as SHA-256 hashes (they are 256-bit random)."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from enum import StrEnum

from sqlalchemy.orm import Session

from service.errors import Unauthorized
from service.store.models import Client, new_id

KEY_PREFIX = "bik"


class Role(StrEnum):
    IVR = "ivr"  # voice enrol / verify / identify
    TERMINAL = "terminal"  # fingerprint (checkout terminals)
    PORTAL = "portal"  # consent on behalf of a customer
    AUDITOR = "auditor"  # audit trail and audits
    ADMIN = "admin"  # clients and keys
    FRAUD = "fraud"  # the fraudster watchlist


@dataclass(frozen=True)
class Principal:
    client_id: str
    tenant_id: str
    role: Role


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def issue_client(session: Session, *, tenant_id: str, name: str, role: Role) -> tuple[Client, str]:
    """Creates a client; the API key is returned once and only its hash is kept."""
    client_id = new_id("cli")
    secret = secrets.token_urlsafe(32)
    client = Client(id=client_id, tenant_id=tenant_id, name=name, role=str(role), key_sha256=_hash(secret))
    session.add(client)
    session.flush()
    return client, f"{KEY_PREFIX}.{client_id}.{secret}"


def authenticate(session: Session, authorization: str | None) -> Principal:
    scheme, _, key = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not key:
        raise Unauthorized("send Authorization: Bearer <api key>")
    prefix, _, rest = key.strip().partition(".")
    client_id, _, secret = rest.partition(".")
    client = session.get(Client, client_id) if prefix == KEY_PREFIX and client_id and secret else None
    # Compare even when the client is unknown, so timing does not tell which client ids exist.
    expected = client.key_sha256 if client is not None else _hash("no such client")
    if not hmac.compare_digest(expected, _hash(secret)) or client is None or not client.active:
        raise Unauthorized("the API key is not valid")
    return Principal(client.id, client.tenant_id, Role(client.role))
