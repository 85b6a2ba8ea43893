"""Voice enrolment, verification and identification (ivr role). Audio comes as multipart form data:
a WAV/FLAC file, or raw telephone audio with its declared ``codec`` and ``sample_rate``."""

from __future__ import annotations

from fastapi import APIRouter, Depends, File, Form, Query, UploadFile

from enroll.voice import MAX_SAMPLES
from service.auth import Principal, Role
from service.context import ServiceContext
from service.deps import get_ctx, id_path, require
from service.errors import ServiceError
from service.schemas import PURPOSE_LIMITS, REFERENCE_LIMITS
from service.voice import enrolment
from service.voice.identification import identify_voice
from service.voice.schemas import (
    EnrolmentAbandonedOut,
    EnrolmentOut,
    EnrolmentSessionOut,
    EnrolmentStartIn,
    EnrolmentWithSamplesOut,
    IdentificationOut,
    SampleAddedOut,
    VerificationOut,
)
from service.voice.uploads import AudioFormat, audio_format, read_waveform
from service.voice.verification import verify_voice

router = APIRouter(prefix="/v1/voice", tags=["voice"])
ivr = require(Role.IVR)
REPLACE_HELP = (
    "replace an enrolled voice instead of adding to it (a re-enrolment: needs consent recorded since the "
    "template was last changed). Without it, samples are added only if each verifies as the enrolled voice."
)


def ReferenceForm() -> str:  # noqa: N802 - reads like the other FastAPI field markers
    return Form(**REFERENCE_LIMITS)


def PurposeForm() -> str:  # noqa: N802
    return Form(**PURPOSE_LIMITS)


@router.post("/verify", response_model=VerificationOut)
def verify(
    reference: str = ReferenceForm(),
    audio: UploadFile = File(),
    purpose: str = PurposeForm(),
    encoding: AudioFormat = Depends(audio_format),
    ctx: ServiceContext = Depends(get_ctx),
    actor: Principal = Depends(ivr),
) -> dict:
    return verify_voice(ctx, actor, reference, purpose, lambda: read_waveform(ctx, audio, encoding)).as_dict()


@router.post("/identify", response_model=IdentificationOut)
def identify(
    audio: UploadFile = File(),
    purpose: str = PurposeForm(),
    top_k: int | None = Form(default=None, ge=1, le=100, description="default: BIOIDENT_IDENTIFY_TOP_K"),
    encoding: AudioFormat = Depends(audio_format),
    ctx: ServiceContext = Depends(get_ctx),
    actor: Principal = Depends(ivr),
) -> dict:
    top_k = top_k or ctx.settings.identify_top_k
    return identify_voice(ctx, actor, purpose, lambda: read_waveform(ctx, audio, encoding), top_k).as_dict()


@router.post("/enrol", status_code=201, response_model=EnrolmentWithSamplesOut)
def enrol(
    reference: str = ReferenceForm(),
    audio: list[UploadFile] = File(description="one or more recordings of the customer"),
    purpose: str = PurposeForm(),
    replace: bool = Form(default=False, description=REPLACE_HELP),
    encoding: AudioFormat = Depends(audio_format),
    ctx: ServiceContext = Depends(get_ctx),
    actor: Principal = Depends(ivr),
) -> dict:
    if len(audio) > MAX_SAMPLES:
        raise ServiceError(f"at most {MAX_SAMPLES} recordings per enrolment call")
    waveforms = lambda: [read_waveform(ctx, upload, encoding) for upload in audio]  # noqa: E731
    result, reports = enrolment.enrol_voice(ctx, actor, reference, purpose, waveforms, replace=replace)
    return {**result.as_dict(), "samples": reports}


@router.post("/enrolments", status_code=201, response_model=EnrolmentSessionOut)
def start_enrolment(
    body: EnrolmentStartIn, ctx: ServiceContext = Depends(get_ctx), actor: Principal = Depends(ivr)
) -> EnrolmentSessionOut:
    session = enrolment.start_session(ctx, actor, body.reference, body.purpose)
    return EnrolmentSessionOut(
        id=session.id,
        status=session.status,
        subject_token=session.subject_token,
        expires_at=session.expires_at,
        required_speech_s=ctx.limits.min_enrol_speech_s,
    )


@router.post("/enrolments/{session_id}/samples", status_code=201, response_model=SampleAddedOut)
def add_enrolment_sample(
    session_id: str = id_path(),
    audio: UploadFile = File(),
    encoding: AudioFormat = Depends(audio_format),
    ctx: ServiceContext = Depends(get_ctx),
    actor: Principal = Depends(ivr),
) -> dict:
    waveform = read_waveform(ctx, audio, encoding)
    return enrolment.add_sample(ctx, actor, session_id, waveform)


@router.post("/enrolments/{session_id}:complete", status_code=201, response_model=EnrolmentOut)
def complete_enrolment(
    session_id: str = id_path(),
    replace: bool = Query(default=False, description=REPLACE_HELP),
    ctx: ServiceContext = Depends(get_ctx),
    actor: Principal = Depends(ivr),
) -> dict:
    return enrolment.complete_session(ctx, actor, session_id, replace=replace).as_dict()


@router.post("/enrolments/{session_id}:abandon", response_model=EnrolmentAbandonedOut)
def abandon_enrolment(
    session_id: str = id_path(), ctx: ServiceContext = Depends(get_ctx), actor: Principal = Depends(ivr)
) -> EnrolmentAbandonedOut:
    enrolment.abandon_session(ctx, actor, session_id)
    return EnrolmentAbandonedOut(id=session_id, status="abandoned")
