"""Telephone audio: encode headerless G.711 / PCM16, and run speech through a simulated phone line."""

from __future__ import annotations

import io
import math

import numpy as np
import soundfile as sf

from biometrics.voice.audio.decode import RawCodec, decode_audio
from biometrics.voice.audio.resample import resample
from biometrics.voice.audio.waveform import Waveform

TELEPHONE_SAMPLE_RATE = 8_000


def encode_raw(samples: np.ndarray, rate: int, codec: RawCodec) -> bytes:
    """Encode mono float samples as headerless audio, as a telephone system would send it."""
    # Clip first: what libsndfile does with floats beyond full scale depends on its settings.
    clipped = np.clip(np.asarray(samples, dtype=np.float32), -1.0, 1.0)
    buffer = io.BytesIO()
    sf.write(buffer, clipped, rate, format="RAW", subtype=RawCodec(codec).soundfile_subtype, endian="LITTLE")
    return buffer.getvalue()


def simulate_telephone_channel(waveform: Waveform, codec: RawCodec = RawCodec.MULAW) -> Waveform:
    """The same speech as it arrives over a phone line: 8 kHz, through the codec, back to the model rate."""
    narrowband = resample(waveform.samples, waveform.sample_rate, TELEPHONE_SAMPLE_RATE)
    data = encode_raw(narrowband, TELEPHONE_SAMPLE_RATE, codec)
    return decode_audio(data, raw_codec=codec, declared_rate=TELEPHONE_SAMPLE_RATE, max_seconds=math.inf)
