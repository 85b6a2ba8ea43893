"""Fingerprint request and response bodies. Decisions carry no template, no reference and no subject token."""

from __future__ import annotations

from pydantic import BaseModel, Field


class ReasonOut(BaseModel):
    code: str
    measured: float
    limit: float


class CaptureReportOut(BaseModel):
    finger_position: int
    capture: int = Field(description="its place among the captures of that finger, from 0")
    accepted: bool
    quality: int | None = Field(description="NFIQ 2 (0-100) where available")
    minutiae: int
    reasons: list[ReasonOut]


class FingerprintEnrolmentOut(BaseModel):
    subject_token: str
    template_ids: list[str]
    finger_positions: list[int] = Field(description="ISO/IEC 19794-2 finger position codes")
    impressions: list[int] = Field(description="captures consolidated into each finger's template")
    pin: bool = Field(description="whether a PIN was set (it is stored only as an argon2id hash)")
    model: str = Field(description="the extractor and matcher fingerprint of the templates")
    captures: list[CaptureReportOut]


class PaymentDecisionOut(BaseModel):
    mode: str = Field(description="card (card + finger, 1:1), pin (finger + PIN) or finger (finger only, 1:N)")
    decision: str = Field(description="accept or reject")
    payment_token: str | None = Field(description="the payment token linked to the customer's fingers, on accept")
    score: float | None = Field(description="on an accept, the customer's fused score; null on a reject (audited)")
    threshold: float
    model: str
    reasons: list[ReasonOut]
