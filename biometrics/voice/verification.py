"""Verification as a library call, in the manner of SpeechBrain's ``verify_files`` / ``verify_batch``:
analyse the audio, find what stands against its quality, and decide against an enrolment.

The sequence analyse -> quality reasons -> verdict is written here once; the CLI's ``compare`` and
the service (a stored template against a caller's audio) both go through ``VoiceVerifier``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from biometrics.scoring.operating_points import ChannelScoring
from biometrics.scoring.scorer import Verdict
from biometrics.settings import CoreSettings
from biometrics.voice.audio import RawCodec
from biometrics.voice.audio.waveform import AudioChannel, Waveform
from biometrics.voice.embedding import AnalysedSample, Embedding, VoiceEmbedder
from biometrics.voice.pipeline import Channel, analyse_for_enrolment, load_waveform
from biometrics.voice.quality.gates import QualityLimits, QualityReason, verification_reasons
from biometrics.voice.templates import VoiceTemplate


@dataclass(frozen=True)
class Probe:
    """A sample analysed for verification, with the quality reasons that stand against deciding on it."""

    sample: AnalysedSample
    reasons: list[QualityReason]
    channel: AudioChannel = AudioChannel.WIDEBAND

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
    """Scores by the operating point of the pair of channels (the template's, the probe's): a caller on the
    phone is scored against the template's telephone-matched mean, at the telephone threshold."""

    def __init__(self, embedder: VoiceEmbedder, scoring: ChannelScoring, limits: QualityLimits) -> None:
        self.embedder = embedder
        self.scoring = scoring
        self.limits = limits

    @classmethod
    def from_settings(
        cls, settings: CoreSettings | None = None, embedder: VoiceEmbedder | None = None
    ) -> VoiceVerifier:
        """The verifier ``BIOIDENT_*`` describes: the verified model, the cohorts, the calibration, the target FMR."""
        from biometrics.voice.embedding import load_voice_embedder

        settings = settings or CoreSettings()
        embedder = embedder or load_voice_embedder(settings)
        scoring = ChannelScoring.for_model(settings, embedder.fingerprint)
        return cls(embedder, scoring, QualityLimits.from_settings(settings))

    def probes(self, audio: Sequence[Waveform]) -> list[Probe]:
        """Each waveform analysed (in one batch) with its verification reasons."""
        analysed = self.embedder.analyse(audio)
        return [
            Probe(s, verification_reasons(s.measures, self.limits), w.channel)
            for s, w in zip(analysed, audio, strict=True)
        ]

    def probe(self, audio: Waveform) -> Probe:
        (probe,) = self.probes([audio])
        return probe

    def decide(
        self, template: VoiceTemplate | None, probe: Probe, more_reasons: Sequence[QualityReason] = ()
    ) -> Verdict:
        """Accepts only when no quality reason stands and the score reaches the pair's threshold."""
        reasons = [*more_reasons, *probe.reasons]
        if template is None:
            return self.scoring.scorer(probe.channel, probe.channel).verdict(None, probe.embedding, reasons)
        enrolled, channel = template.for_probe(probe.channel)
        return self.scoring.scorer(channel, probe.channel).verdict(enrolled, probe.embedding, reasons)

    def verify(self, reference: Waveform, probe: Waveform) -> Comparison:
        """``probe`` against ``reference`` enrolled alone, at the threshold of their pair of channels;
        a quality reason on either side rejects."""
        enrolment, *_ = analyse_for_enrolment(self.embedder, [reference])
        ref = Probe(enrolment.sample, verification_reasons(enrolment.sample.measures, self.limits), enrolment.channel)
        test = self.probe(probe)
        template = VoiceTemplate.from_captures([enrolment.capture()]) if ref.embedding is not None else None
        return Comparison(ref, test, self.decide(template, test, ref.reasons))

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
