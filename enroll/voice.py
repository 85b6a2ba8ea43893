"""Voice enrolment as pure logic: judge each sample, decide whether the samples make an enrolment,
and consolidate the accepted ones into one template. No SQL and no HTTP: the service seals and
stores what this returns, and turns its reasons into errors.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from biometrics.scoring.operating_points import ChannelScoring
from biometrics.scoring.scorer import Decision
from biometrics.voice.audio.waveform import AudioChannel
from biometrics.voice.embedding import AnalysedSample, Embedding
from biometrics.voice.pipeline import EnrolmentSample
from biometrics.voice.quality.gates import (
    QualityLimits,
    QualityReason,
    ReasonCode,
    enrolment_reasons,
    signal_reasons,
)
from biometrics.voice.templates import Capture, VoiceTemplate

# How long an enrolment session stays open for more samples.
SESSION_TTL = dt.timedelta(hours=1)
# Samples one enrolment takes (a call, or a session's accepted ones): more speech adds little to a mean.
MAX_SAMPLES = 10
# Two samples whose embeddings agree this closely are one recording sent twice (the same audio in any container
# or encoding embeds alike): different utterances of one speaker stay well below (LibriSpeech test-other, 12
# speakers x 6 utterances: at most 0.88). Not a defence against a doctored copy (noise added brings a copy
# to ~0.93); it keeps the net-speech rule from being met by one short recording sent several times.
DUPLICATE_COSINE = 0.98


@dataclass(frozen=True)
class SampleReport:
    """One sample as the caller is told about it: accepted, or why not, with its measures."""

    sample: AnalysedSample
    reasons: list[QualityReason]

    @property
    def accepted(self) -> bool:
        return not self.reasons and self.sample.embedding is not None

    def as_dict(self) -> dict:
        return {
            "accepted": self.accepted,
            **self.sample.measures.as_dict(),
            "reasons": [r.as_dict() for r in self.reasons],
        }


def judge_sample(sample: AnalysedSample, limits: QualityLimits) -> SampleReport:
    return SampleReport(sample, signal_reasons(sample.measures, limits))


@dataclass(frozen=True)
class EnrolmentPlan:
    """Samples given at once: each one's report, and what stands against enrolling them (nothing: go)."""

    samples: list[EnrolmentSample]
    reports: list[SampleReport]
    reasons: list[QualityReason]

    @property
    def usable(self) -> list[AnalysedSample]:
        return [r.sample for r in self.reports if r.accepted]

    @property
    def captures(self) -> list[Capture]:
        return [s.capture() for s, r in zip(self.samples, self.reports, strict=True) if r.accepted]

    @property
    def net_speech_s(self) -> float:
        return sum(s.measures.net_speech_s for s in self.usable)


def repeat_reason(embedding: Embedding, earlier: Sequence[Embedding]) -> QualityReason | None:
    """DUPLICATE_SAMPLE when ``embedding`` repeats one of ``earlier`` (the same enrolment's accepted samples)."""
    closest = max((float(np.dot(embedding.vector, e.vector)) for e in earlier), default=-1.0)
    if closest < DUPLICATE_COSINE:
        return None
    return QualityReason(ReasonCode.DUPLICATE_SAMPLE, DUPLICATE_COSINE, DUPLICATE_COSINE)  # no score is told


def plan_enrolment(samples: Sequence[EnrolmentSample], limits: QualityLimits) -> EnrolmentPlan:
    reports, kept, counted = [], [], []
    for s in samples:
        report = judge_sample(s.sample, limits)
        repeated = repeat_reason(s.sample.embedding, kept) if report.accepted else None
        if repeated is not None:  # refused, and its speech is not the enrolment's
            reports.append(SampleReport(s.sample, [repeated]))
            continue
        if report.accepted:
            kept.append(s.sample.embedding)
        counted.append(s.sample.measures)
        reports.append(report)
    return EnrolmentPlan(samples=list(samples), reports=reports, reasons=enrolment_reasons(counted, limits))


def completion_shortfall(usable_speech_s: float, limits: QualityLimits) -> QualityReason | None:
    """Why a session's accepted samples cannot complete an enrolment yet (None: they can)."""
    if usable_speech_s < limits.min_enrol_speech_s:
        return QualityReason(ReasonCode.TOO_SHORT, usable_speech_s, limits.min_enrol_speech_s)
    return None


@dataclass(frozen=True)
class Mismatch:
    """A new sample that does not verify against the template it would be added to (or, in a new enrolment,
    against the template the other samples make: ``code`` SAMPLES_DO_NOT_MATCH)."""

    sample: int  # its position among the captures compared (the service names it as its caller knows it)
    score: float
    threshold: float
    code: str = "NOT_THE_ENROLLED_VOICE"

    def as_dict(self) -> dict:
        # No score: an enrolment call must not be an oracle for how close a voice came.
        return {"code": self.code, "sample": self.sample}


def samples_not_matching(
    existing: VoiceTemplate, captures: Sequence[Capture], scoring: ChannelScoring
) -> list[Mismatch]:
    """The captures that would not be accepted as the enrolled voice at the operating point in force.

    Adding samples to a template must not let another voice in (enrolment poisoning): each one has to
    verify against the template first, as a caller in its channel would; anything else is a
    re-enrolment, which needs fresh consent.
    """
    mismatches = []
    for i, capture in enumerate(captures):
        probe_channel = capture.channel or AudioChannel.WIDEBAND
        enrolled, channel = existing.for_probe(probe_channel)
        verdict = scoring.scorer(channel, probe_channel).verdict(enrolled, capture.embedding, [])
        if verdict.decision != Decision.ACCEPT:
            mismatches.append(Mismatch(i, float(verdict.score), verdict.threshold))
    return mismatches


def samples_not_agreeing(captures: Sequence[Capture], scoring: ChannelScoring) -> list[Mismatch]:
    """The captures of a new enrolment that do not verify, at the operating point in force, against the template
    the others make (each left out in turn).

    Whoever holds the phone at a first enrolment could otherwise mix a second person's recordings in, and
    both voices would pass afterwards: an enrolment is one voice, as a fingerprint enrolment's captures must
    be one finger. A single capture has nothing to agree with.
    """
    if len(captures) < 2:
        return []
    mismatches = []
    for i, capture in enumerate(captures):
        others = VoiceTemplate.from_captures([c for j, c in enumerate(captures) if j != i])
        for mismatch in samples_not_matching(others, [capture], scoring):
            mismatches.append(Mismatch(i, mismatch.score, mismatch.threshold, "SAMPLES_DO_NOT_MATCH"))
    return mismatches


def consolidate(existing: VoiceTemplate | None, captures: Sequence[Capture]) -> VoiceTemplate:
    """One template from the captures: a new one (also when replacing), or the existing one with these absorbed."""
    if existing is None:
        return VoiceTemplate.from_captures(captures)
    return existing.absorb_captures(captures)
