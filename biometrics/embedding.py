"""From waveforms to quality measures and speaker embeddings, computed on speech frames only."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from biometrics.audio.waveform import MODEL_SAMPLE_RATE, Waveform
from biometrics.errors import IncompatibleModel
from biometrics.model.ecapa import FRONT_END, SpeakerEncoder
from biometrics.model.weights import resolve_weights
from biometrics.quality.gates import NO_SPEECH_BELOW_S, QualityMeasures
from biometrics.quality.measures import estimate_snr_db, net_speech_seconds
from biometrics.quality.vad import VadSettings, VoiceActivityDetector
from biometrics.settings import CoreSettings
from biometrics.torch_thread import on_torch_thread

HOP_SAMPLES = MODEL_SAMPLE_RATE // 100  # Fbank's 10 ms hop


@dataclass(frozen=True)
class Embedding:
    vector: np.ndarray  # float32 [192], unit length
    model_fingerprint: str


@dataclass(frozen=True)
class AnalysedSample:
    measures: QualityMeasures
    embedding: Embedding | None  # None when there is too little speech to embed


def require_same_model(a: str, b: str) -> None:
    if a != b:
        raise IncompatibleModel(f"cannot compare across model fingerprints {a} and {b}")


def model_fingerprint(encoder: SpeakerEncoder, vad: VoiceActivityDetector) -> str:
    """Hash of everything that shapes an embedding: weights, front end and speech selection."""
    described = {
        "weights": encoder.weights.sha256,
        "front_end": FRONT_END,
        "speech_selection": {**vad.settings.as_dict(), "model_sha256": vad.model_sha256},
    }
    digest = hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()
    return f"ecapa-voxceleb-{digest[:24]}"


class VoiceEmbedder:
    """Measures each sample's quality and embeds its speech; packs mixed lengths into one pass exactly."""

    def __init__(
        self,
        encoder: SpeakerEncoder,
        vad: VoiceActivityDetector,
        batch_max_frames: int = CoreSettings.model_fields["batch_max_frames"].default,
    ) -> None:
        self.encoder = encoder
        self.vad = vad
        self.batch_max_frames = batch_max_frames
        self.fingerprint = model_fingerprint(encoder, vad)

    @on_torch_thread
    def speech_only(self, waveform: Waveform) -> tuple[np.ndarray, QualityMeasures]:
        if waveform.sample_rate != MODEL_SAMPLE_RATE:
            raise ValueError("waveforms must be at the model rate; decode them with biometrics.audio")
        segments = self.vad.speech_segments(waveform.samples)
        speech = np.concatenate([waveform.samples[s:e] for s, e in segments]) if segments else waveform.samples[:0]
        measures = QualityMeasures(
            duration_s=waveform.duration_s,
            net_speech_s=net_speech_seconds(segments, MODEL_SAMPLE_RATE),
            snr_db=estimate_snr_db(waveform.samples, segments, MODEL_SAMPLE_RATE),
            clipping_ratio=waveform.clipping_ratio,
        )
        return speech, measures

    def analyse(self, waveforms: Sequence[Waveform], max_speech_s: float | None = None) -> list[AnalysedSample]:
        """Quality measures and embedding of each waveform; ``max_speech_s`` keeps only the first seconds of speech."""
        selected = [self.speech_only(w) for w in waveforms]
        usable = [i for i, (_, m) in enumerate(selected) if m.net_speech_s >= NO_SPEECH_BELOW_S]
        if max_speech_s is not None and not max_speech_s >= NO_SPEECH_BELOW_S:  # NaN fails this too
            raise ValueError(f"max_speech_s must be at least {NO_SPEECH_BELOW_S} s")
        keep = None if max_speech_s is None else int(max_speech_s * MODEL_SAMPLE_RATE)
        vectors = self.embed_speech([selected[i][0][:keep] for i in usable])
        by_index = dict(zip(usable, vectors, strict=True))
        return [
            AnalysedSample(
                measures=m,
                embedding=Embedding(by_index[i], self.fingerprint) if i in by_index else None,
            )
            for i, (_, m) in enumerate(selected)
        ]

    def embed_speech(self, utterances: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Embeds speech-only utterances, packed (in length order) up to batch_max_frames feature frames a pass."""
        order = sorted(range(len(utterances)), key=lambda i: len(utterances[i]))
        out: list[np.ndarray | None] = [None] * len(utterances)
        batch: list[int] = []
        total = 0
        for i in order:
            frames = len(utterances[i]) // HOP_SAMPLES + 1
            if batch and total + frames > self.batch_max_frames:
                self._embed_into(out, batch, utterances)
                batch, total = [], 0
            batch.append(i)
            total += frames
        if batch:
            self._embed_into(out, batch, utterances)
        return out  # type: ignore[return-value]  # every slot is filled above

    def _embed_into(self, out: list[np.ndarray | None], batch: list[int], utterances: Sequence[np.ndarray]) -> None:
        vectors = self.encoder.embed([utterances[i] for i in batch])
        for i, v in zip(batch, vectors, strict=True):
            out[i] = v


def load_voice_embedder(settings: CoreSettings | None = None) -> VoiceEmbedder:
    settings = settings or CoreSettings()
    encoder = SpeakerEncoder(resolve_weights(settings), malloc_keep_freed=settings.malloc_keep_freed)
    vad = VoiceActivityDetector(VadSettings(threshold=settings.vad_threshold))
    return VoiceEmbedder(encoder, vad, batch_max_frames=settings.batch_max_frames)
