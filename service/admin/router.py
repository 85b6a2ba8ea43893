"""Tenants and clients (admin role)."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from service.admin.clients import create_client, create_tenant, list_clients
from service.admin.schemas import ClientIn, ClientOut, TenantIn, TenantOut
from service.auth import Principal, Role
from service.context import ServiceContext
from service.deps import get_ctx, require

router = APIRouter(prefix="/v1", tags=["admin"])
admin = require(Role.ADMIN)


@router.post("/tenants", status_code=201, response_model=TenantOut)
def new_tenant(body: TenantIn, ctx: ServiceContext = Depends(get_ctx), actor: Principal = Depends(admin)) -> TenantOut:
    tenant = create_tenant(ctx.db, actor=actor.client_id, tenant_id=body.id, name=body.name)
    return TenantOut(id=tenant.id, name=tenant.name)


@router.post("/clients", status_code=201, response_model=ClientOut)
def new_client(body: ClientIn, ctx: ServiceContext = Depends(get_ctx), actor: Principal = Depends(admin)) -> ClientOut:
    client, key = create_client(ctx.db, actor=actor.client_id, tenant_id=body.tenant_id, name=body.name, role=body.role)
    return ClientOut(id=client.id, tenant_id=client.tenant_id, name=client.name, role=body.role, api_key=key)


@router.get("/clients", response_model=list[ClientOut])
def clients(ctx: ServiceContext = Depends(get_ctx), actor: Principal = Depends(admin)) -> list[ClientOut]:
    return [ClientOut(id=c.id, tenant_id=c.tenant_id, name=c.name, role=Role(c.role)) for c in list_clients(ctx.db)]
