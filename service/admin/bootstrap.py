"""First start: a default tenant and one admin client, whose key is shown once."""

from __future__ import annotations

from service.admin.clients import add_client, has_clients
from service.auth import Role
from service.store.db import Database

DEFAULT_TENANT = "default"


def bootstrap_admin(db: Database) -> str | None:
    """Creates the first admin when no client exists; returns its API key, or None when clients exist."""
    with db.session() as session:
        if has_clients(session):
            return None
        _, key = add_client(
            session,
            actor="bootstrap",
            tenant_id=DEFAULT_TENANT,
            name="first admin",
            role=Role.ADMIN,
            new_tenant_name="Default tenant",
        )
    return key
