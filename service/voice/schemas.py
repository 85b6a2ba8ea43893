"""Voice request and response bodies. Decisions carry no template and no reference."""

from __future__ import annotations

import datetime as dt

from pydantic import BaseModel, Field

from service.schemas import Purpose, Reference, Text


class EnrolmentStartIn(BaseModel):
    reference: Text = Reference
    purpose: Text = Purpose


class QualityReasonOut(BaseModel):
    code: str = Field(
        description="NO_SPEECH, TOO_SHORT, TOO_NOISY, CLIPPED, or DUPLICATE_SAMPLE (a recording this enrolment has)"
    )
    measured: float
    limit: float


class WatchlistScreeningOut(BaseModel):
    """What screening the call against the tenant's fraudster watchlist found."""

    hit: bool
    entry: str | None = Field(description="the watchlist entry hit")
    score: float | None = Field(description="its score, at or above the watchlist threshold")


class VerificationOut(BaseModel):
    subject_token: str
    decision: str = Field(description="accept or reject")
    score: float | None = Field(description="null when the sample has quality reasons (only the audit keeps it)")
    threshold: float
    method: str = Field(description="cosine or as-norm")
    llr: float | None = Field(
        description="calibrated log-likelihood ratio, with a calibration file; null as the score is"
    )
    net_speech_s: float
    reasons: list[QualityReasonOut]
    model: str
    channels: str | None = Field(description="the pair of channels scored: the template's and the caller's")
    watchlist: WatchlistScreeningOut | None = Field(
        default=None, description="the call screened against the fraudster watchlist (null: no usable speech)"
    )


class CandidateOut(BaseModel):
    subject_token: str
    score: float


class IdentificationOut(BaseModel):
    decision: str = Field(description="accept when at least one candidate passed the threshold")
    score: float | None = Field(description="the best candidate's score")
    threshold: float
    method: str
    llr: float | None
    net_speech_s: float
    reasons: list[QualityReasonOut]
    model: str
    channels: str | None = Field(description="the pair whose threshold is shown (the caller's channel, both sides)")
    candidates: list[CandidateOut] = Field(description="best first")
    watchlist: WatchlistScreeningOut | None = Field(
        default=None, description="the call screened against the fraudster watchlist (null: no usable speech)"
    )


class SampleReportOut(BaseModel):
    accepted: bool
    duration_s: float | None
    net_speech_s: float | None
    snr_db: float | None
    clipping_ratio: float | None
    reasons: list[QualityReasonOut]


class EnrolmentOut(BaseModel):
    subject_token: str
    template_id: str
    sample_count: int
    net_speech_s: float
    model: str


class EnrolmentWithSamplesOut(EnrolmentOut):
    samples: list[SampleReportOut]


class EnrolmentSessionOut(BaseModel):
    id: str
    status: str
    subject_token: str
    expires_at: dt.datetime
    required_speech_s: float


class SampleAddedOut(SampleReportOut):
    sample_id: str
    session_usable_speech_s: float
    required_speech_s: float


class EnrolmentAbandonedOut(BaseModel):
    id: str
    status: str
