"""Bytes in, a 16 kHz mono ``Waveform`` out, or a typed error that says why not.

Everything goes through libsndfile (``soundfile``). The header is inspected before any sample
is decoded, so a file that is too long or in the wrong codec is refused without decoding it,
and samples are then read in blocks, so a header that lies about its length costs no more
memory than the audio actually present.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path

import numpy as np
import soundfile as sf

from biometrics.errors import (
    AudioTooLong,
    ContainerSentAsRaw,
    EmptyAudio,
    NonFiniteSamples,
    NotAudio,
    SampleRateMismatch,
    TruncatedAudio,
    UnsupportedCodec,
    UnsupportedSampleRate,
)
from biometrics.settings import CoreSettings
from biometrics.voice.audio.resample import is_practical_rate, resample
from biometrics.voice.audio.waveform import MODEL_SAMPLE_RATE, Waveform


class RawCodec(StrEnum):
    """Headerless telephone audio. PCM16 is little-endian signed."""

    MULAW = "mulaw"
    ALAW = "alaw"
    PCM16 = "pcm16"

    @property
    def soundfile_subtype(self) -> str:
        return _RAW_SUBTYPE[self]


MIN_SAMPLE_RATE = 8_000
MAX_SAMPLE_RATE = 192_000
DEFAULT_MAX_SECONDS: float = CoreSettings.model_fields["max_audio_seconds"].default

_WAV_SUBTYPES = frozenset({"PCM_U8", "PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE", "ULAW", "ALAW"})
# libsndfile reports WAVE_FORMAT_EXTENSIBLE files (common for 24-bit and multichannel) as "WAVEX".
_ACCEPTED_SUBTYPES = {
    "WAV": _WAV_SUBTYPES,
    "WAVEX": _WAV_SUBTYPES,
    "FLAC": frozenset({"PCM_S8", "PCM_16", "PCM_24"}),
}

_RAW_SUBTYPE = {RawCodec.MULAW: "ULAW", RawCodec.ALAW: "ALAW", RawCodec.PCM16: "PCM_16"}
_RAW_BYTES_PER_SAMPLE = {RawCodec.MULAW: 1, RawCodec.ALAW: 1, RawCodec.PCM16: 2}
_RAW_RATES = {RawCodec.MULAW: (8_000,), RawCodec.ALAW: (8_000,), RawCodec.PCM16: (8_000, 16_000)}

# G.711 cannot reach 1.0: libsndfile decodes the loudest mu-law code to 32124/32768 and the
# loudest A-law code to 32256/32768, so clipping is measured against those peaks.
_FULL_SCALE = {"ULAW": 32124 / 32768, "ALAW": 32256 / 32768}
_G711_SUBTYPES = frozenset({"ULAW", "ALAW"})  # coded for a phone line, whatever the sample rate
_CLIP_FRACTION = 0.99

_BLOCK_FRAMES = 1 << 16
# A FLAC stream whose header leaves its length open (written to a pipe) cannot be read to its
# end by libsndfile 1.2: the read that reaches the end fails ("psf_fseek() failed") and the
# frames it had decoded are lost. Small blocks keep that loss to about one FLAC frame (0.25 s of
# 16 kHz audio with the usual 4096-sample frames), and such a stream is taken to end at that failure.
_OPEN_ENDED_BLOCK_FRAMES = 1 << 10
# libsndfile's SF_COUNT_MAX: the frame count of a FLAC stream whose header leaves it unknown.
_UNKNOWN_FRAMES = 2**63 - 1


def decode_audio(
    data: bytes,
    *,
    raw_codec: RawCodec | None = None,
    declared_rate: int | None = None,
    max_seconds: float = DEFAULT_MAX_SECONDS,
) -> Waveform:
    """Decode WAV or FLAC bytes, or headerless telephone audio when ``raw_codec`` is given."""
    if not max_seconds > 0:  # also refuses NaN
        raise ValueError("max_seconds must be positive")
    if not data:
        raise EmptyAudio("the audio is empty (0 bytes)")
    if raw_codec is not None:
        return _decode_raw(data, _as_raw_codec(raw_codec), declared_rate, max_seconds)
    return _decode_container(data, declared_rate, max_seconds)


def read_audio_file(
    path: str | os.PathLike[str],
    *,
    raw_codec: RawCodec | None = None,
    declared_rate: int | None = None,
    max_seconds: float = DEFAULT_MAX_SECONDS,
) -> Waveform:
    """Read and decode an audio file; an unreadable path raises the ``OSError`` as is."""
    data = Path(path).read_bytes()
    return decode_audio(data, raw_codec=raw_codec, declared_rate=declared_rate, max_seconds=max_seconds)


# --- container audio (WAV, FLAC) -----------------------------------------------------------


def _decode_container(data: bytes, declared_rate: int | None, max_seconds: float) -> Waveform:
    with _open_container(data) as f:
        _check_codec(f.format, f.subtype)
        rate = f.samplerate
        if declared_rate is not None and declared_rate != rate:
            raise SampleRateMismatch(f"declared sample rate {declared_rate} Hz but the header says {rate} Hz")
        _check_rate(rate)
        if f.frames != _UNKNOWN_FRAMES:
            _check_duration(f.frames, rate, max_seconds)
        _check_has_audio(f, data)
        samples, clipping = _read_mono(f, _FULL_SCALE.get(f.subtype, 1.0), max_seconds, f.format)
        g711 = f.subtype in _G711_SUBTYPES
    return _to_waveform(samples, rate, clipping, g711)


def _sniff_container(data: bytes) -> str | None:
    """The container the magic bytes promise; a RIFF header too short to say WAVE counts as WAV."""
    if data[:4] in (b"RIFF", b"RIFX") and (len(data) < 12 or data[8:12] == b"WAVE"):
        return "WAV"
    if data[:4] == b"fLaC":
        return "FLAC"
    return None


def _open_container(data: bytes) -> sf.SoundFile:
    try:
        return sf.SoundFile(io.BytesIO(data))
    except Exception as exc:  # LibsndfileError mostly, but soundfile raises others too
        container = _sniff_container(data)
        if container is None:
            raise NotAudio("the data is not in a recognised audio format; send WAV or FLAC") from exc
        raise TruncatedAudio(f"the {container} header is truncated or unreadable") from exc


def _check_codec(container: str, subtype: str) -> None:
    if subtype not in _ACCEPTED_SUBTYPES.get(container, ()):
        raise UnsupportedCodec(
            f"{container} audio with codec {subtype} is not supported; send WAV (PCM, float, mu-law or A-law) or FLAC"
        )


def _check_has_audio(f: sf.SoundFile, data: bytes) -> None:
    if f.format == "FLAC" and _flac_audio_offset(data) >= len(data):
        # Zero (or unknown) total samples and nothing after the header: what an encoder writes for no input.
        if f.frames in (0, _UNKNOWN_FRAMES):
            raise EmptyAudio("the FLAC stream has a header but no audio frames")
        raise TruncatedAudio("the FLAC header announces audio but the data ends after it")
    if f.frames == 0:
        raise EmptyAudio(f"the {f.format} file has a header but no audio frames")


def _flac_audio_offset(data: bytes) -> int:
    """Offset of the first audio frame: just after the metadata block flagged as last."""
    pos = 4
    while pos + 4 <= len(data):
        header = data[pos]
        pos += 4 + int.from_bytes(data[pos + 1 : pos + 4], "big")
        if header & 0x80:
            return pos
    return len(data)


# --- raw telephone audio -------------------------------------------------------------------


def _as_raw_codec(codec: RawCodec | str) -> RawCodec:
    try:
        return RawCodec(codec)
    except ValueError:
        names = ", ".join(c.value for c in RawCodec)
        raise UnsupportedCodec(f"unknown raw codec; use one of {names}") from None


# A file format's own header at the start of "raw" audio: decoding it as samples would give noise.
_CONTAINER_MAGIC = {b"RIFF": "WAV", b"RF64": "WAV", b"fLaC": "FLAC", b"OggS": "Ogg", b"FORM": "AIFF"}


def _decode_raw(data: bytes, codec: RawCodec, declared_rate: int | None, max_seconds: float) -> Waveform:
    container = _CONTAINER_MAGIC.get(data[:4])
    if container is not None:
        raise ContainerSentAsRaw(f"this is a {container} file, not raw {codec} audio: send it without a codec")
    if declared_rate is None:
        raise UnsupportedSampleRate(f"raw {codec} audio has no header: its sample rate must be declared")
    allowed = _RAW_RATES[codec]
    if declared_rate not in allowed:
        rates = " or ".join(str(r) for r in allowed)
        raise UnsupportedSampleRate(f"raw {codec} audio must be at {rates} Hz, not {declared_rate} Hz")
    width = _RAW_BYTES_PER_SAMPLE[codec]
    if len(data) % width:
        raise TruncatedAudio(f"raw {codec} audio has {len(data)} bytes, not a whole number of samples")
    _check_duration(len(data) // width, declared_rate, max_seconds)
    subtype = codec.soundfile_subtype
    with _open_raw(data, subtype, declared_rate) as f:
        samples, clipping = _read_mono(f, _FULL_SCALE.get(subtype, 1.0), max_seconds, f"raw {codec}")
    return _to_waveform(samples, declared_rate, clipping, subtype in _G711_SUBTYPES)


def _open_raw(data: bytes, subtype: str, rate: int) -> sf.SoundFile:
    try:
        return sf.SoundFile(
            io.BytesIO(data), format="RAW", subtype=subtype, endian="LITTLE", samplerate=rate, channels=1
        )
    except Exception as exc:
        raise NotAudio(f"raw {subtype} audio could not be opened") from exc


# --- shared checks and decoding ------------------------------------------------------------


def _check_rate(rate: int) -> None:
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise UnsupportedSampleRate(
            f"sample rate {rate} Hz is outside the supported {MIN_SAMPLE_RATE} to {MAX_SAMPLE_RATE} Hz"
        )
    if not is_practical_rate(rate, MODEL_SAMPLE_RATE):
        raise UnsupportedSampleRate(
            f"sample rate {rate} Hz cannot be converted to {MODEL_SAMPLE_RATE} Hz at reasonable cost; "
            "use a standard rate such as 8000, 16000, 22050, 44100 or 48000 Hz"
        )


def _check_duration(frames: int, rate: int, max_seconds: float) -> None:
    seconds = frames / rate
    if seconds > max_seconds:
        raise AudioTooLong(f"the audio lasts {seconds:.1f} s; the limit is {max_seconds:g} s")


def _read_mono(f: sf.SoundFile, full_scale: float, max_seconds: float, label: str) -> tuple[np.ndarray, float]:
    """Mono mix of all frames, and the clipping ratio of the worst channel before mixing."""
    threshold = _CLIP_FRACTION * full_scale
    clipped = np.zeros(f.channels, dtype=np.int64)
    parts: list[np.ndarray] = []
    total = 0
    for block in _blocks(f, label):
        total += len(block)
        if total / f.samplerate > max_seconds:
            raise AudioTooLong(f"the audio lasts more than the limit of {max_seconds:g} s")
        if not np.isfinite(block).all():
            raise NonFiniteSamples("the audio contains NaN or infinite samples")
        clipped += np.count_nonzero(np.abs(block) >= threshold, axis=0)
        parts.append(block.mean(axis=1, dtype=np.float32))
    if total == 0:
        raise EmptyAudio(f"the {label} audio has no samples")
    return np.concatenate(parts), float(clipped.max()) / total


def _blocks(f: sf.SoundFile, label: str) -> Iterator[np.ndarray]:
    open_ended = f.frames == _UNKNOWN_FRAMES
    size = _OPEN_ENDED_BLOCK_FRAMES if open_ended else _BLOCK_FRAMES
    read_any = False
    while True:
        try:
            block = f.read(size, dtype="float32", always_2d=True)
        except Exception as exc:  # a FLAC cut mid-stream fails here with LibsndfileError
            if open_ended and read_any:
                return  # how libsndfile ends a stream of unknown length: see _OPEN_ENDED_BLOCK_FRAMES
            raise TruncatedAudio(f"the {label} audio data is truncated or corrupt") from exc
        if len(block) == 0:
            return
        read_any = True
        yield block


def _to_waveform(samples: np.ndarray, rate: int, clipping_ratio: float, g711: bool) -> Waveform:
    return Waveform(
        samples=resample(samples, rate, MODEL_SAMPLE_RATE),
        sample_rate=MODEL_SAMPLE_RATE,
        source_rate=rate,
        clipping_ratio=clipping_ratio,
        g711=g711,
    )
