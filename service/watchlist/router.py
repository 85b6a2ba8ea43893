"""The fraudster watchlist (fraud role): add an entry from recordings, list, remove (crypto-shredded)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, File, Form, UploadFile

from service.auth import Principal, Role
from service.context import ServiceContext
from service.deps import get_ctx, id_path, require
from service.errors import ServiceError
from service.voice.uploads import AudioFormat, audio_format, read_waveform
from service.watchlist.entries import add_entry, list_entries, remove_entry
from service.watchlist.schemas import (
    WatchlistEntriesOut,
    WatchlistEntryAddedOut,
    WatchlistEntryOut,
    WatchlistEntryRemovedOut,
)

router = APIRouter(prefix="/v1/watchlist", tags=["watchlist"])
fraud = require(Role.FRAUD)
MAX_ENTRY_FILES = 10
WORDS = r"^[^\x00]*[^\x00\s][^\x00]*$"  # something besides white space, and no NUL


@router.post("/entries", status_code=201, response_model=WatchlistEntryAddedOut)
def add(
    audio: list[UploadFile] = File(description="one or more recordings of the fraudster's voice"),
    case_reference: str = Form(min_length=1, max_length=200, pattern=WORDS, description="the fraud case"),
    legal_basis: str = Form(
        min_length=1, max_length=2000, pattern=WORDS, description="the legal basis for holding this voice"
    ),
    encoding: AudioFormat = Depends(audio_format),
    ctx: ServiceContext = Depends(get_ctx),
    actor: Principal = Depends(fraud),
) -> dict:
    if len(audio) > MAX_ENTRY_FILES:
        raise ServiceError(f"at most {MAX_ENTRY_FILES} recordings per entry")
    waveforms = lambda: [read_waveform(ctx, upload, encoding) for upload in audio]  # noqa: E731
    entry, reports = add_entry(ctx, actor, case_reference, legal_basis, waveforms)
    return {**entry.as_dict(), "samples": reports}


@router.get("/entries", response_model=WatchlistEntriesOut)
def entries(ctx: ServiceContext = Depends(get_ctx), actor: Principal = Depends(fraud)) -> WatchlistEntriesOut:
    return WatchlistEntriesOut(entries=[WatchlistEntryOut(**e.as_dict()) for e in list_entries(ctx, actor)])


@router.delete("/entries/{entry_id}", response_model=WatchlistEntryRemovedOut)
def remove(
    entry_id: str = id_path(), ctx: ServiceContext = Depends(get_ctx), actor: Principal = Depends(fraud)
) -> dict:
    return remove_entry(ctx, actor, entry_id).as_dict()
