"""Tenant and client bodies."""

from __future__ import annotations

from pydantic import BaseModel, Field

from service.admin.clients import TENANT_ID_PATTERN
from service.auth import Role
from service.schemas import Text


class TenantIn(BaseModel):
    id: Text = Field(min_length=1, max_length=64, pattern=TENANT_ID_PATTERN)
    name: Text = Field(min_length=1, max_length=200)


class TenantOut(BaseModel):
    id: str
    name: str


class ClientIn(BaseModel):
    tenant_id: Text = Field(min_length=1, max_length=64)
    name: Text = Field(min_length=1, max_length=200)
    role: Role


class ClientOut(BaseModel):
    id: str
    tenant_id: str
    name: str
    role: Role
    api_key: str | None = Field(default=None, description="shown once, at creation")
