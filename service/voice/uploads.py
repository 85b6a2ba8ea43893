"""Uploaded audio: a WAV/FLAC file, or raw telephone audio with its declared codec and sample rate."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Form, UploadFile

from biometrics.voice.audio import RawCodec, decode_audio
from biometrics.voice.audio.waveform import Waveform
from service.context import ServiceContext


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
