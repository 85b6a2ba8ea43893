"""First start: a default tenant and one admin client, whose key is shown once."""

from __future__ import annotations

from sqlalchemy import func, select

from service.audit.chain import append
from service.auth import Role, issue_client
from service.store.db import Database
from service.store.models import Client, Tenant

DEFAULT_TENANT = "default"


def bootstrap_admin(db: Database) -> str | None:
    """Creates the first admin when no client exists; returns its API key, or None when clients exist."""
    with db.session() as session:
        if session.execute(select(func.count()).select_from(Client)).scalar_one():
            return None
        if session.get(Tenant, DEFAULT_TENANT) is None:
            session.add(Tenant(id=DEFAULT_TENANT, name="Default tenant"))
            session.flush()
        client, key = issue_client(session, tenant_id=DEFAULT_TENANT, name="first admin", role=Role.ADMIN)
        append(
            session,
            actor="bootstrap",
            action="client.create",
            outcome="created",
            tenant_id=DEFAULT_TENANT,
            details={"client_id": client.id, "role": "admin"},
        )
    return key
