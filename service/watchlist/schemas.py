"""Watchlist request and response bodies. An entry's template is never returned."""

from __future__ import annotations

import datetime as dt

from pydantic import BaseModel, Field

from service.voice.schemas import SampleReportOut


class WatchlistEntryOut(BaseModel):
    id: str
    case_reference: str
    legal_basis: str = Field(description="why the voice may be held without the person's consent")
    added_by: str = Field(description="the client that added it")
    sample_count: int
    net_speech_s: float
    model: str
    created_at: dt.datetime


class WatchlistEntryAddedOut(WatchlistEntryOut):
    samples: list[SampleReportOut]


class WatchlistEntriesOut(BaseModel):
    entries: list[WatchlistEntryOut]


class WatchlistEntryRemovedOut(BaseModel):
    id: str
    data_key_destroyed: bool = Field(description="the entry's data key was destroyed (crypto-shredded)")
