"""Request and response bodies. References are accepted, never returned."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

from pydantic import AfterValidator, BaseModel, Field

from service.auth import Role
from service.consent.records import ConsentChannel, Modality


def _no_nul(value: str) -> str:
    # PostgreSQL text cannot hold NUL, and no honest field needs one.
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


Text = Annotated[str, AfterValidator(_no_nul)]

# Shared with the form fields of the audio routes (service/api/voice.py).
PURPOSE_LIMITS = {"default": "authentication", "min_length": 1, "max_length": 64, "pattern": r"^[a-z0-9][a-z0-9_.-]*$"}
REFERENCE_LIMITS = {"min_length": 1, "max_length": 256, "description": "the client's customer reference; never stored"}
Purpose = Field(**PURPOSE_LIMITS)
Reference = Field(**REFERENCE_LIMITS)


class TenantIn(BaseModel):
    id: Text = Field(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9_-]*$")
    name: Text = Field(min_length=1, max_length=200)


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


class ConsentIn(BaseModel):
    reference: Text = Reference
    modality: Modality
    purpose: Text = Purpose
    notice_version: Text = Field(min_length=1, max_length=64)
    notice_text: Text | None = Field(default=None, max_length=100_000, description="hashed; not stored")
    notice_sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    channel: ConsentChannel
    evidence_ref: Text = Field(min_length=1, max_length=200)


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
    reference: Text = Reference


class EnrolmentStartIn(BaseModel):
    reference: Text = Reference
    purpose: Text = Purpose
