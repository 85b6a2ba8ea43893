"""Telephone audio that arrives in frames (an IVR call): voice activity detected as it arrives, and a
verification probe of everything heard so far whenever the caller of this class asks for one.

Voice activity detection runs incrementally: each new block of 0.256 s (8 Silero windows at 16 kHz) is
decoded with 0.256 s of the audio before it as context and its window probabilities are kept, so the
speech heard so far costs one VAD pass over each block, not one over the whole call per update. The
segments come from all the probabilities at once, by Silero's own rules (``segments_from_probabilities``),
so the net speech of a stream is measured as for an upload of the same audio, give or take the block
edges. A probe decodes the whole buffer once and embeds its speech segments.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from biometrics.errors import AudioTooLong, TruncatedAudio
from biometrics.voice.audio import RawCodec, decode_audio
from biometrics.voice.audio.telephone import with_band_floor
from biometrics.voice.audio.waveform import MODEL_SAMPLE_RATE, NARROWBAND_MAX_RATE, AudioChannel
from biometrics.voice.embedding import AnalysedSample, Embedding
from biometrics.voice.quality.gates import NO_SPEECH_BELOW_S, QualityLimits, QualityMeasures, verification_reasons
from biometrics.voice.quality.measures import estimate_snr_db, net_speech_seconds
from biometrics.voice.quality.vad import SILERO_WINDOW_SAMPLES, VoiceActivityDetector
from biometrics.voice.verification import Probe

BLOCK_SAMPLES = 8 * SILERO_WINDOW_SAMPLES  # at 16 kHz: 0.256 s
CONTEXT_SAMPLES = 8 * SILERO_WINDOW_SAMPLES  # decoded before each block, so its first windows have context
STREAM_RATES = {RawCodec.MULAW: (8_000,), RawCodec.ALAW: (8_000,), RawCodec.PCM16: (8_000, 16_000)}
_BYTES_PER_SAMPLE = {RawCodec.MULAW: 1, RawCodec.ALAW: 1, RawCodec.PCM16: 2}

EmbedFn = Callable[[Sequence[np.ndarray]], list[np.ndarray]]


class SpeechStream:
    """Raw telephone audio of one call, its VAD kept up to date frame by frame; see the module."""

    def __init__(
        self,
        vad: VoiceActivityDetector,
        embed: EmbedFn,
        fingerprint: str,
        limits: QualityLimits,
        codec: RawCodec,
        sample_rate: int,
        max_seconds: float,
    ) -> None:
        if sample_rate not in STREAM_RATES[codec]:
            raise ValueError(f"{codec} streams are at {STREAM_RATES[codec]} Hz")
        self.vad, self._embed, self.fingerprint, self.limits = vad, embed, fingerprint, limits
        self.codec, self.sample_rate, self.max_seconds = codec, sample_rate, max_seconds
        self._width = _BYTES_PER_SAMPLE[codec]
        self._upsample = MODEL_SAMPLE_RATE // sample_rate  # 2 for 8 kHz audio, 1 for 16 kHz
        self._raw = bytearray()
        self._probs: list[float] = []
        self._vad_done = 0  # samples at 16 kHz whose window probabilities are in _probs

    @property
    def sample_width(self) -> int:
        """Bytes per sample: every frame is a whole number of them."""
        return self._width

    @property
    def heard_s(self) -> float:
        """Seconds of audio received."""
        return len(self._raw) / self._width / self.sample_rate

    @property
    def net_speech_s(self) -> float:
        """Seconds of speech in the blocks the VAD has seen (all but the last quarter of a second or so)."""
        return net_speech_seconds(self.vad.segments_from_probabilities(self._probs, self._vad_done), MODEL_SAMPLE_RATE)

    def add(self, frame: bytes) -> None:
        """One frame of audio; raises ``TruncatedAudio`` for a partial sample, ``AudioTooLong`` past the limit."""
        if len(frame) % self._width:
            raise TruncatedAudio(f"a {self.codec} frame of {len(frame)} bytes is not a whole number of samples")
        if (len(self._raw) + len(frame)) / self._width / self.sample_rate > self.max_seconds:
            raise AudioTooLong(f"a stream holds at most {self.max_seconds:g} s of audio")
        self._raw += frame
        while self._model_samples() - self._vad_done >= BLOCK_SAMPLES:
            self._probs += self._block_probabilities(self._vad_done, self._vad_done + BLOCK_SAMPLES)
            self._vad_done += BLOCK_SAMPLES

    def probe(self) -> Probe:
        """Everything heard so far, analysed for verification (its speech embedded)."""
        if not self._raw:
            waveform_samples = np.zeros(0, dtype=np.float32)
            clipping, channel, source_rate = 0.0, None, self.sample_rate
        else:
            waveform = decode_audio(
                bytes(self._raw), raw_codec=self.codec, declared_rate=self.sample_rate, max_seconds=self.max_seconds
            )
            waveform_samples, clipping, channel = waveform.samples, waveform.clipping_ratio, waveform.channel
            source_rate = waveform.source_rate
        total = len(waveform_samples)
        probs = self._probs + (self._block_probabilities(self._vad_done, total) if total > self._vad_done else [])
        segments = self.vad.segments_from_probabilities(probs, total)
        measures = QualityMeasures(
            duration_s=total / MODEL_SAMPLE_RATE,
            net_speech_s=net_speech_seconds(segments, MODEL_SAMPLE_RATE),
            snr_db=estimate_snr_db(waveform_samples, segments, MODEL_SAMPLE_RATE) if total else float("nan"),
            clipping_ratio=clipping,
        )
        embedding = None
        if measures.net_speech_s >= NO_SPEECH_BELOW_S:
            speech = np.concatenate([waveform_samples[s:e] for s, e in segments])
            (vector,) = self._embed([with_band_floor(speech, source_rate, MODEL_SAMPLE_RATE)])  # as speech_only
            embedding = Embedding(vector, self.fingerprint)
        sample = AnalysedSample(measures=measures, embedding=embedding)
        if channel is None:  # nothing heard: the channel the stream was declared with
            channel = AudioChannel.TELEPHONE if self.sample_rate <= NARROWBAND_MAX_RATE else AudioChannel.WIDEBAND
        return Probe(sample, verification_reasons(measures, self.limits), channel)

    def _model_samples(self) -> int:
        return len(self._raw) // self._width * self._upsample

    def _block_probabilities(self, start: int, end: int) -> list[float]:
        """Window probabilities of the 16 kHz samples [start, end), decoded with context before them."""
        context_start = max(0, start - CONTEXT_SAMPLES)
        first, last = context_start // self._upsample * self._width, end // self._upsample * self._width
        audio = decode_audio(bytes(self._raw[first:last]), raw_codec=self.codec, declared_rate=self.sample_rate)
        probs = self.vad.window_probabilities(audio.samples)
        skip = (start - context_start) // SILERO_WINDOW_SAMPLES
        return probs[skip : skip + -(-(end - start) // SILERO_WINDOW_SAMPLES)]
