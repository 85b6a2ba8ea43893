"""The audio front end: bytes become a 16 kHz mono ``Waveform``, or a typed error says why not."""

from biometrics.voice.audio.decode import (
    DEFAULT_MAX_SECONDS,
    MAX_SAMPLE_RATE,
    MIN_SAMPLE_RATE,
    RawCodec,
    decode_audio,
    read_audio_file,
)
from biometrics.voice.audio.resample import is_practical_rate, resample
from biometrics.voice.audio.telephone import TELEPHONE_SAMPLE_RATE, encode_raw, simulate_telephone_channel
from biometrics.voice.audio.waveform import MODEL_SAMPLE_RATE, AudioChannel, Waveform

__all__ = [
    "DEFAULT_MAX_SECONDS",
    "MAX_SAMPLE_RATE",
    "MIN_SAMPLE_RATE",
    "MODEL_SAMPLE_RATE",
    "AudioChannel",
    "TELEPHONE_SAMPLE_RATE",
    "RawCodec",
    "Waveform",
    "decode_audio",
    "encode_raw",
    "is_practical_rate",
    "read_audio_file",
    "resample",
    "simulate_telephone_channel",
]
