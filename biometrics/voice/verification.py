"""Verification as a library call, in the manner of SpeechBrain's ``verify_files`` / ``verify_batch``:
analyse the audio, find what stands against its quality, and decide against an enrolment.

The sequence analyse -> quality reasons -> verdict is written here once; the CLI's ``compare`` and
the service (a stored template against a caller's audio) both go through ``VoiceVerifier``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from biometrics.scoring.scorer import Scorer, Verdict
from biometrics.settings import CoreSettings
from biometrics.voice.audio import RawCodec
from biometrics.voice.audio.waveform import Waveform
from biometrics.voice.embedding import AnalysedSample, Embedding, VoiceEmbedder, require_same_model
from biometrics.voice.pipeline import Channel, load_waveform
from biometrics.voice.quality.gates import QualityLimits, QualityReason, verification_reasons


@dataclass(frozen=True)
class Probe:
    """A sample analysed for verification, with the quality reasons that stand against deciding on it."""

    sample: AnalysedSample
    reasons: list[QualityReason]

    @property
    def embedding(self) -> Embedding | None:
        return self.sample.embedding

    @property
    def net_speech_s(self) -> float:
        return self.sample.measures.net_speech_s


@dataclass(frozen=True)
class Comparison:
    """Two samples of audio verified against each other: each side's probe and the verdict on both."""

    reference: Probe
    probe: Probe
    verdict: Verdict


class VoiceVerifier:
    def __init__(self, embedder: VoiceEmbedder, scorer: Scorer, limits: QualityLimits) -> None:
        self.embedder = embedder
        self.scorer = scorer
        self.limits = limits

    @classmethod
    def from_settings(
        cls, settings: CoreSettings | None = None, embedder: VoiceEmbedder | None = None
    ) -> VoiceVerifier:
        """The verifier ``BIOIDENT_*`` describes: the verified model, the cohort and calibration files if set."""
        from biometrics.scoring.calibration import Calibration
        from biometrics.voice.cohort import Cohort
        from biometrics.voice.embedding import load_voice_embedder

        settings = settings or CoreSettings()
        cohort = Cohort.load(settings.cohort_file) if settings.cohort_file else None
        calibration = Calibration.load(settings.calibration_file) if settings.calibration_file else None
        scorer = Scorer.from_settings(settings, cohort, calibration)
        embedder = embedder or load_voice_embedder(settings)
        if cohort is not None:  # scores across models mean nothing
            require_same_model(cohort.model_fingerprint, embedder.fingerprint)
        if calibration is not None:
            calibration.check_compatible(scorer.method, embedder.fingerprint)
        return cls(embedder, scorer, QualityLimits.from_settings(settings))

    def probes(self, audio: Sequence[Waveform]) -> list[Probe]:
        """Each waveform analysed (in one batch) with its verification reasons."""
        return [Probe(s, verification_reasons(s.measures, self.limits)) for s in self.embedder.analyse(audio)]

    def probe(self, audio: Waveform) -> Probe:
        (probe,) = self.probes([audio])
        return probe

    def decide(self, enrolment: Embedding | None, probe: Probe, more_reasons: Sequence[QualityReason] = ()) -> Verdict:
        """Accepts only when no quality reason stands and the score reaches the threshold."""
        return self.scorer.verdict(enrolment, probe.embedding, [*more_reasons, *probe.reasons])

    def verify(self, reference: Waveform, probe: Waveform) -> Comparison:
        """``probe`` against ``reference`` enrolled alone; a quality reason on either side rejects."""
        ref, test = self.probes([reference, probe])
        return Comparison(ref, test, self.decide(ref.embedding, test, ref.reasons))

    def verify_files(
        self,
        reference: str | Path,
        probe: str | Path,
        settings: CoreSettings | None = None,
        channel: Channel = Channel.CLEAN,
        raw_codec: RawCodec | None = None,
        declared_rate: int | None = None,
    ) -> Comparison:
        """``verify`` on two audio files (WAV/FLAC, or raw audio of ``raw_codec``), through ``channel``."""
        settings = settings or CoreSettings()
        ref, test = (load_waveform(Path(p), settings, channel, raw_codec, declared_rate) for p in (reference, probe))
        return self.verify(ref, test)
