"""From waveforms to quality measures and speaker embeddings, computed on speech frames only."""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from biometrics.errors import IncompatibleModel
from biometrics.settings import CoreSettings
from biometrics.torch_thread import on_torch_thread, run_in_turns, run_on_torch_thread
from biometrics.voice.audio.telephone import with_band_floor
from biometrics.voice.audio.waveform import MODEL_SAMPLE_RATE, Waveform
from biometrics.voice.model.ecapa import FRONT_END, SpeakerEncoder
from biometrics.voice.model.weights import resolve_weights
from biometrics.voice.quality.gates import NO_SPEECH_BELOW_S, QualityMeasures
from biometrics.voice.quality.measures import estimate_snr_db, net_speech_seconds
from biometrics.voice.quality.vad import VadSettings, VoiceActivityDetector

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
    """Measures each sample's quality and embeds its speech; packs mixed lengths into one pass exactly.

    Many utterances are embedded in forward passes over packs of at most ``batch_max_frames /
    concurrent_passes`` feature frames, ``concurrent_passes`` of them running at once, each on its share
    of the cores (``biometrics.torch_thread.run_in_turns``). Passes go on in one turn of the torch thread
    until a torch call waits that goes first (a live call waiting on a batch job); the rest follow it.
    """

    def __init__(
        self,
        encoder: SpeakerEncoder,
        vad: VoiceActivityDetector,
        batch_max_frames: int = CoreSettings.model_fields["batch_max_frames"].default,
        concurrent_passes: int = CoreSettings.model_fields["concurrent_passes"].default,
    ) -> None:
        if concurrent_passes < 1:
            raise ValueError("concurrent_passes must be at least 1")
        self.encoder = encoder
        self.vad = vad
        self.batch_max_frames = batch_max_frames
        # More passes than cores would share cores: each pass gets one at least.
        self.concurrent_passes = min(concurrent_passes, run_on_torch_thread(torch.get_num_threads))
        self.fingerprint = model_fingerprint(encoder, vad)

    @property
    def precision(self) -> str:
        """``fp32`` or ``bf16``: the precision of the model's matrix products, recorded alongside the fingerprint.

        Not part of the fingerprint: embeddings of the same audio in either agree to cosine >= 0.9999, so
        templates, cohorts and thresholds made under one hold under the other.
        """
        return self.encoder.precision

    @on_torch_thread
    def speech_only(self, waveform: Waveform) -> tuple[np.ndarray, QualityMeasures]:
        if waveform.sample_rate != MODEL_SAMPLE_RATE:
            raise ValueError("waveforms must be at the model rate; decode them with biometrics.voice.audio")
        segments = self.vad.speech_segments(waveform.samples)
        speech = np.concatenate([waveform.samples[s:e] for s, e in segments]) if segments else waveform.samples[:0]
        measures = QualityMeasures(
            duration_s=waveform.duration_s,
            net_speech_s=net_speech_seconds(segments, MODEL_SAMPLE_RATE),
            snr_db=estimate_snr_db(waveform.samples, segments, MODEL_SAMPLE_RATE),
            clipping_ratio=waveform.clipping_ratio,
        )
        # The model hears the band a narrowband source could not carry filled by a fixed floor; the measures
        # above were taken on the audio as it arrived (biometrics/voice/audio/telephone.py says why).
        return with_band_floor(speech, waveform.source_rate, MODEL_SAMPLE_RATE), measures

    def analyse(
        self,
        waveforms: Sequence[Waveform],
        max_speech_s: float | None = None,
        embed: Callable[[Sequence[np.ndarray]], list[np.ndarray]] | None = None,
    ) -> list[AnalysedSample]:
        """Quality measures and embedding of each waveform; ``max_speech_s`` keeps only the first seconds of speech.

        ``embed`` embeds the speech instead of ``embed_speech`` (a micro-batcher that joins concurrent
        callers' utterances into one batch: ``biometrics.voice.batching``).
        """
        selected = [self.speech_only(w) for w in waveforms]
        usable = [i for i, (_, m) in enumerate(selected) if m.net_speech_s >= NO_SPEECH_BELOW_S]
        if max_speech_s is not None and not max_speech_s >= NO_SPEECH_BELOW_S:  # NaN fails this too
            raise ValueError(f"max_speech_s must be at least {NO_SPEECH_BELOW_S} s")
        keep = None if max_speech_s is None else int(max_speech_s * MODEL_SAMPLE_RATE)
        vectors = (embed or self.embed_speech)([selected[i][0][:keep] for i in usable])
        by_index = dict(zip(usable, vectors, strict=True))
        return [
            AnalysedSample(
                measures=m,
                embedding=Embedding(by_index[i], self.fingerprint) if i in by_index else None,
            )
            for i, (_, m) in enumerate(selected)
        ]

    def embed_speech(self, utterances: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Embeds speech-only utterances, in the packs of ``packs``; see the class for how passes are run."""
        packs = self.packs(utterances)
        out: list[np.ndarray | None] = [None] * len(utterances)
        while packs:
            packs = packs[self._embed_turn(out, packs, utterances) :]
        return out  # type: ignore[return-value]  # every slot is filled above

    def packs(self, utterances: Sequence[np.ndarray]) -> list[list[int]]:
        """Indices of the utterances in the packs ``embed_speech`` gives one forward pass each, in its order.

        Utterances fill packs shortest first, each pack holding at most ``batch_max_frames /
        concurrent_passes`` frames, gaps included (a longer utterance goes alone). The packs then run widest
        first, so the last passes, during which some cores may have nothing left to take, are the shortest.
        """
        max_frames = max(1, self.batch_max_frames // self.concurrent_passes)
        gap = self.encoder.pack_gap
        packs: list[list[int]] = []
        widths: list[int] = []  # frames of each pack's batch, gaps between its utterances included
        for i in sorted(range(len(utterances)), key=lambda i: len(utterances[i])):
            frames = len(utterances[i]) // HOP_SAMPLES + 1
            if not packs or widths[-1] + gap + frames > max_frames:
                packs.append([])
                widths.append(-gap)  # no gap before a pack's first utterance
            packs[-1].append(i)
            widths[-1] += gap + frames
        return [packs[k] for k in sorted(range(len(packs)), key=lambda k: -widths[k])]

    def _embed_turn(
        self, out: list[np.ndarray | None], packs: list[list[int]], utterances: Sequence[np.ndarray]
    ) -> int:
        """Forward passes of ``packs`` in order, in one turn of the torch thread; returns how many ran.

        A turn ends early once a torch call waits that goes first; a single pass runs on every core.
        """
        calls = [functools.partial(self.encoder.embed, [utterances[i] for i in pack]) for pack in packs]
        done = run_on_torch_thread(run_in_turns, calls, self.concurrent_passes)
        for pack, vectors in zip(packs, done, strict=False):
            for i, v in zip(pack, vectors, strict=True):
                out[i] = v
        return len(done)


def load_voice_embedder(settings: CoreSettings | None = None) -> VoiceEmbedder:
    settings = settings or CoreSettings()
    encoder = SpeakerEncoder(
        resolve_weights(settings), malloc_keep_freed=settings.malloc_keep_freed, precision=settings.precision
    )
    vad = VoiceActivityDetector(VadSettings(threshold=settings.vad_threshold))
    return VoiceEmbedder(
        encoder, vad, batch_max_frames=settings.batch_max_frames, concurrent_passes=settings.concurrent_passes
    )
