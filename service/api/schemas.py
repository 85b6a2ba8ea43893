"""Request and response bodies. References are accepted, never returned."""

from __future__ import annotations

import datetime as dt

from pydantic import BaseModel, Field

from service.auth import Role
from service.consent.records import ConsentChannel, Modality

Purpose = Field(default="authentication", min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9_.-]*$")
Reference = Field(min_length=1, max_length=256, description="the client's own customer reference; never stored")


class TenantIn(BaseModel):
    id: str = Field(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9_-]*$")
    name: str = Field(min_length=1, max_length=200)


class ClientIn(BaseModel):
    tenant_id: str = Field(min_length=1, max_length=64)
    name: str = Field(min_length=1, max_length=200)
    role: Role


class ClientOut(BaseModel):
    id: str
    tenant_id: str
    name: str
    role: Role
    api_key: str | None = Field(default=None, description="shown once, at creation")


class ConsentIn(BaseModel):
    reference: str = Reference
    modality: Modality
    purpose: str = Purpose
    notice_version: str = Field(min_length=1, max_length=64)
    notice_text: str | None = Field(default=None, max_length=100_000, description="hashed; not stored")
    notice_sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    channel: ConsentChannel
    evidence_ref: str = Field(min_length=1, max_length=200)


class ConsentOut(BaseModel):
    id: str
    subject_token: str
    modality: str
    purpose: str
    notice_version: str
    notice_sha256: str
    channel: str
    evidence_ref: str
    recorded_by: str
    granted_at: dt.datetime
    withdrawn_at: dt.datetime | None
    active: bool


class LookupIn(BaseModel):
    reference: str = Reference


class EnrolmentStartIn(BaseModel):
    reference: str = Reference
    purpose: str = Purpose
