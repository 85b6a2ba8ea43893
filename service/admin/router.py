"""Tenants and clients (admin role)."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from sqlalchemy import select

from service.api.deps import get_ctx, require
from service.api.schemas import ClientIn, ClientOut, TenantIn
from service.audit.chain import append
from service.auth import Principal, Role, issue_client
from service.context import ServiceContext
from service.errors import Conflict, NotFound
from service.store.models import Client, Tenant

router = APIRouter(prefix="/v1", tags=["admin"])
admin = require(Role.ADMIN)


@router.post("/tenants", status_code=201)
def create_tenant(body: TenantIn, ctx: ServiceContext = Depends(get_ctx), actor: Principal = Depends(admin)) -> dict:
    with ctx.db.session() as session:
        if session.get(Tenant, body.id) is not None:
            raise Conflict("a tenant with this id exists")
        session.add(Tenant(id=body.id, name=body.name))
        append(session, actor=actor.client_id, action="tenant.create", outcome="created", tenant_id=body.id)
    return {"id": body.id, "name": body.name}


@router.post("/clients", status_code=201, response_model=ClientOut)
def create_client(
    body: ClientIn, ctx: ServiceContext = Depends(get_ctx), actor: Principal = Depends(admin)
) -> ClientOut:
    with ctx.db.session() as session:
        if session.get(Tenant, body.tenant_id) is None:
            raise NotFound("no such tenant")
        client, key = issue_client(session, tenant_id=body.tenant_id, name=body.name, role=body.role)
        append(
            session,
            actor=actor.client_id,
            action="client.create",
            outcome="created",
            tenant_id=body.tenant_id,
            details={"client_id": client.id, "role": str(body.role)},
        )
    return ClientOut(id=client.id, tenant_id=client.tenant_id, name=client.name, role=body.role, api_key=key)


@router.get("/clients", response_model=list[ClientOut])
def list_clients(ctx: ServiceContext = Depends(get_ctx), actor: Principal = Depends(admin)) -> list[ClientOut]:
    with ctx.db.session() as session:
        rows = session.execute(select(Client).order_by(Client.created_at)).scalars()
        return [ClientOut(id=c.id, tenant_id=c.tenant_id, name=c.name, role=Role(c.role)) for c in rows]
