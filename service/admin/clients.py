"""Tenants and API clients. Every client is created here, whoever asks: the API, the CLI or the first start."""

from __future__ import annotations

import re

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.auth import Role, issue_client
from service.errors import Conflict, NotFound, ServiceError
from service.store.db import Database
from service.store.models import Client, Tenant
from service.trail.chain import append

TENANT_ID_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"


def create_tenant(db: Database, *, actor: str, tenant_id: str, name: str) -> Tenant:
    with db.session() as session:
        if session.get(Tenant, tenant_id) is not None:
            raise Conflict("a tenant with this id exists")
        tenant = Tenant(id=tenant_id, name=name)
        session.add(tenant)
        append(session, actor=actor, action="tenant.create", outcome="created", tenant_id=tenant_id)
    return tenant


def create_client(
    db: Database, *, actor: str, tenant_id: str, name: str, role: Role, new_tenant_name: str | None = None
) -> tuple[Client, str]:
    """A new client and its API key (shown once). A missing tenant is refused, or created with
    ``new_tenant_name`` (the operator's CLI sets a deployment up that way)."""
    with db.session() as session:
        return add_client(
            session, actor=actor, tenant_id=tenant_id, name=name, role=role, new_tenant_name=new_tenant_name
        )


def add_client(
    session: Session, *, actor: str, tenant_id: str, name: str, role: Role, new_tenant_name: str | None = None
) -> tuple[Client, str]:
    """``create_client`` inside the caller's transaction."""
    if role is Role.ADMIN:
        # An admin key manages every tenant: one made "for" a customer tenant would be nothing of the sort.
        operators = set(session.execute(select(Client.tenant_id).where(Client.role == str(Role.ADMIN))).scalars())
        if operators and tenant_id not in operators:
            raise ServiceError(
                f"an admin key manages every tenant, so it is made only in the operators' tenant "
                f"({', '.join(sorted(operators))}); give a tenant's own staff that tenant's other roles"
            )
    if session.get(Tenant, tenant_id) is None:
        if new_tenant_name is None:
            raise NotFound("no such tenant")
        if not re.fullmatch(TENANT_ID_PATTERN, tenant_id):
            raise ServiceError(
                "a tenant id is 1-64 characters: lower-case letters, digits, '_' and '-', a letter or digit first"
            )
        session.add(Tenant(id=tenant_id, name=new_tenant_name))
        session.flush()
    client, key = issue_client(session, tenant_id=tenant_id, name=name, role=role)
    append(
        session,
        actor=actor,
        action="client.create",
        outcome="created",
        tenant_id=tenant_id,
        details={"client_id": client.id, "role": str(role)},
    )
    return client, key


def list_clients(db: Database) -> list[Client]:
    with db.session() as session:
        return list(session.execute(select(Client).order_by(Client.created_at)).scalars())


def has_clients(session: Session) -> bool:
    return bool(session.execute(select(func.count()).select_from(Client)).scalar_one())
