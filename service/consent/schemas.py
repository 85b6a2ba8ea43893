"""Consent request and response bodies. References are accepted, never returned."""

from __future__ import annotations

import datetime as dt

from pydantic import BaseModel, ConfigDict, Field, field_validator

from service.consent.held import TEMPLATE_PROTECTION, Held
from service.consent.receipts import LANGUAGE_PATTERN
from service.consent.records import ConsentChannel
from service.modality import Modality
from service.schemas import Purpose, Reference, Text
from service.store.models import Consent


class ConsentIn(BaseModel):
    """Exactly one of ``notice_text`` (hashed, not stored) and ``notice_sha256`` says which notice was shown."""

    model_config = ConfigDict(
        json_schema_extra={
            "oneOf": [
                {"required": ["notice_text"], "properties": {"notice_text": {"type": "string"}}},
                {"required": ["notice_sha256"], "properties": {"notice_sha256": {"type": "string"}}},
            ]
        }
    )

    reference: Text = Reference
    modality: Modality
    purpose: Text = Purpose
    notice_version: Text = Field(min_length=1, max_length=64)
    notice_text: Text | None = Field(default=None, max_length=100_000, description="hashed; not stored")
    notice_sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    channel: ConsentChannel
    evidence_ref: Text = Field(min_length=1, max_length=200)
    language: str | None = Field(
        default=None,
        max_length=35,
        pattern=LANGUAGE_PATTERN,
        description="the language of the notice shown (BCP 47, such as uk or pt-BR), the receipt's; "
        "without it, the language of the customer's receipts so far (en for a new customer)",
    )

    @field_validator("language")
    @classmethod
    def _language_case(cls, value: str | None) -> str | None:
        """Tags are case-insensitive: written as BCP 47 recommends (language lower case, region upper)."""
        if value is None:
            return None
        language, *rest = value.split("-")
        return "-".join([language.lower(), *(part.upper() if len(part) == 2 else part for part in rest)])


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

    @classmethod
    def of(cls, c: Consent) -> ConsentOut:
        return cls(
            id=c.id, subject_token=c.subject_token, modality=c.modality, purpose=c.purpose,
            notice_version=c.notice_version, notice_sha256=c.notice_sha256, channel=c.channel,
            evidence_ref=c.evidence_ref, recorded_by=c.recorded_by, granted_at=c.granted_at,
            withdrawn_at=c.withdrawn_at, active=c.withdrawn_at is None,
        )  # fmt: skip


class LookupIn(BaseModel):
    reference: Text = Reference


class SubjectRef(BaseModel):
    subject_token: str


class NeverEnrolOut(BaseModel):
    subject_token: str
    never_enrol_since: dt.datetime


class ReceiptKeys(BaseModel):
    """A JSON Web Key set (RFC 7517) of Ed25519 keys (RFC 8037): receipts are compact JWS signed with them."""

    keys: list[dict]


class WithdrawalReceiptOut(BaseModel):
    receipt_id: str
    subject_token: str
    consent_id: str
    modality: str
    purpose: str
    withdrawn_at: str
    destroyed: dict = Field(description="what was destroyed: the data key and, per kind of sealed data, what went")
    also_withdrawn: list[str] = Field(
        description="the other consents for the same modality and purpose, withdrawn with it (consents given again)"
    )
    receipt_sha256: str
    signed_receipt_id: str = Field(description="the signed receipt stored for the customer (JWS, EdDSA)")


class TemplateHeld(BaseModel):
    id: str
    modality: str
    model: str
    samples: int
    created_at: dt.datetime
    updated_at: dt.datetime
    protection: str


class EnrolmentSessionHeld(BaseModel):
    id: str
    status: str
    created_at: dt.datetime


class PaymentLinkHeld(BaseModel):
    id: str
    modality: str = Field(description="the modality whose data key seals the payment token")
    pin: bool = Field(description="whether a PIN is set (held only as an argon2id hash)")
    created_at: dt.datetime
    updated_at: dt.datetime
    protection: str


class HeldOut(BaseModel):
    subject_token: str
    created_at: dt.datetime
    consents: list[ConsentOut]
    templates: list[TemplateHeld]
    enrolment_sessions: list[EnrolmentSessionHeld]
    payment_links: list[PaymentLinkHeld]

    @classmethod
    def of(cls, held: Held) -> HeldOut:
        return cls(
            subject_token=held.subject_token,
            created_at=held.created_at,
            consents=[ConsentOut.of(c) for c in held.consents],
            templates=[
                TemplateHeld(
                    id=t.id,
                    modality=t.modality,
                    model=t.model_fingerprint,
                    samples=t.sample_count,
                    created_at=t.created_at,
                    updated_at=t.updated_at,
                    protection=TEMPLATE_PROTECTION,
                )
                for t in held.templates
            ],
            enrolment_sessions=[
                EnrolmentSessionHeld(id=s.id, status=s.status, created_at=s.created_at) for s in held.enrolment_sessions
            ],
            payment_links=[
                PaymentLinkHeld(
                    id=link.id,
                    modality=link.modality,
                    pin=link.pin_hash is not None,
                    created_at=link.created_at,
                    updated_at=link.updated_at,
                    protection=TEMPLATE_PROTECTION,
                )
                for link in held.payment_links
            ],
        )
