"""Audit-trail bodies."""

from __future__ import annotations

import datetime as dt
from typing import Any

from pydantic import BaseModel


class EntryOut(BaseModel):
    seq: int
    at: dt.datetime
    actor: str
    action: str
    subject_token: str | None
    outcome: str
    score: float | None
    model: str | None
    details: dict[str, Any]
    prev_hash: str
    entry_hash: str


class EntriesOut(BaseModel):
    entries: list[EntryOut]
    next_after_seq: int


class ChainOut(BaseModel):
    ok: bool
    entries: int
    first_bad_seq: int | None
    problem: str | None
    unsigned_entries: int
