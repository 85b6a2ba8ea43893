"""Stream request and response bodies. Events carry no template and no reference."""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import BaseModel, Field, model_validator

from biometrics.voice.audio import RawCodec
from biometrics.voice.streaming import STREAM_RATES
from service.schemas import Purpose, Reference, Text
from service.voice.schemas import QualityReasonOut, WatchlistScreeningOut


class StreamOpenIn(BaseModel):
    reference: Text = Reference
    purpose: Text = Purpose
    codec: RawCodec = Field(description="mulaw or alaw (8000 Hz), pcm16 (8000 or 16000 Hz; AudioSocket: 8000)")
    sample_rate: Literal[8000, 16000]

    @model_validator(mode="after")
    def _rate_fits_codec(self) -> StreamOpenIn:
        if self.sample_rate not in STREAM_RATES[self.codec]:
            raise ValueError(f"{self.codec} audio is at {' or '.join(map(str, STREAM_RATES[self.codec]))} Hz")
        return self


class StreamEventOut(BaseModel):
    event: str = Field(description="opened, connected (WebSocket only), pending, decision or ended")
    stream_id: str | None = None
    decision: str | None = Field(
        description="pending, accept, reject, inconclusive, not_enrolled or opted_out; none when the stream "
        "ended without one (see close_reason)"
    )
    net_speech_s: float | None = None
    heard_s: float | None = None
    score: float | None = None
    threshold: float | None = None
    reasons: list[QualityReasonOut] = []
    final: bool = False
    close_reason: str | None = None
    refusal: str | None = None
    watchlist: WatchlistScreeningOut | None = Field(
        default=None, description="on a decision: the call screened against the fraudster watchlist"
    )


class StreamOut(BaseModel):
    id: str = Field(description="a UUID: the WebSocket path /v1/voice/streams/{id}, AudioSocket's stream id")
    status: str = Field(description="open, streaming, decided, ended (without a decision) or expired")
    decision: str | None
    codec: str
    sample_rate: int
    created_at: dt.datetime
    connect_by: dt.datetime = Field(description="a transport must connect before this")
    latest_event: StreamEventOut
