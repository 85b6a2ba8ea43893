"""Request dependencies: the service context, the authenticated principal, uploaded audio."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi import Depends, Form, Header, Path, Request, UploadFile

from biometrics.voice.audio import RawCodec, decode_audio
from biometrics.voice.audio.waveform import Waveform
from service.auth import Principal, Role, authenticate
from service.context import ServiceContext
from service.errors import Forbidden
from service.limits import count_request


def get_ctx(request: Request) -> ServiceContext:
    return request.app.state.ctx


def require(*roles: Role) -> Callable[..., Principal]:
    def dependency(
        ctx: ServiceContext = Depends(get_ctx), authorization: str | None = Header(default=None)
    ) -> Principal:
        with ctx.db.session() as session:
            principal = authenticate(session, authorization)
            count_request(session, principal.client_id, ctx.settings.rate_limit_per_minute)
        if principal.role not in roles:
            raise Forbidden(f"the {principal.role} role cannot do this")
        return principal

    return dependency


@dataclass(frozen=True)
class AudioFormat:
    """How the uploaded audio is encoded: a WAV/FLAC file (both None), or raw telephone audio."""

    codec: RawCodec | None
    sample_rate: int | None


def audio_format(
    codec: RawCodec | None = Form(default=None, description="raw telephone audio codec; omit for WAV/FLAC"),
    sample_rate: int | None = Form(default=None, description="declared sample rate (required with codec)", ge=1),
) -> AudioFormat:
    return AudioFormat(codec, sample_rate)


def read_waveform(ctx: ServiceContext, upload: UploadFile, audio_format: AudioFormat) -> Waveform:
    return decode_audio(
        upload.file.read(),
        raw_codec=audio_format.codec,
        declared_rate=audio_format.sample_rate,
        max_seconds=ctx.settings.max_audio_seconds,
    )


# A factory, not a shared instance: FastAPI binds a parameter marker to the first parameter it is used for.
def id_path() -> Any:
    """Path ids (subject tokens, consent and session ids) are word characters only; anything else is a 422."""
    return Path(pattern=r"^[A-Za-z0-9_]{1,80}$")
