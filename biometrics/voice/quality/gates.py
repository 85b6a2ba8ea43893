"""Quality gates for verification and enrolment, with structured reasons."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from enum import StrEnum

from biometrics.settings import CoreSettings

# Below this much speech nothing can be embedded at all, whatever the configured minimum.
NO_SPEECH_BELOW_S = 0.25


class ReasonCode(StrEnum):
    NO_SPEECH = "NO_SPEECH"
    TOO_SHORT = "TOO_SHORT"
    TOO_NOISY = "TOO_NOISY"
    CLIPPED = "CLIPPED"
    DUPLICATE_SAMPLE = "DUPLICATE_SAMPLE"  # an enrolment's sample that repeats another of it (enroll.voice)


@dataclass(frozen=True)
class QualityReason:
    code: ReasonCode
    measured: float
    limit: float

    def as_dict(self) -> dict[str, object]:
        return {"code": str(self.code), "measured": round(self.measured, 4), "limit": self.limit}


@dataclass(frozen=True)
class QualityMeasures:
    duration_s: float
    net_speech_s: float
    snr_db: float
    clipping_ratio: float

    def as_dict(self) -> dict[str, float | None]:
        return {k: (None if isinstance(v, float) and math.isnan(v) else round(v, 4)) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class QualityLimits:
    """Configured limits; defaults live in one place, ``CoreSettings``."""

    min_verify_speech_s: float
    min_enrol_speech_s: float
    min_snr_db: float
    max_clipping_ratio: float

    @classmethod
    def from_settings(cls, settings: CoreSettings | None = None) -> QualityLimits:
        settings = settings or CoreSettings()
        return cls(
            min_verify_speech_s=settings.min_verify_speech_s,
            min_enrol_speech_s=settings.min_enrol_speech_s,
            min_snr_db=settings.min_snr_db,
            max_clipping_ratio=settings.max_clipping_ratio,
        )


def signal_reasons(m: QualityMeasures, limits: QualityLimits) -> list[QualityReason]:
    """Reasons that apply to one sample on its own, whatever it is used for."""
    if m.net_speech_s < NO_SPEECH_BELOW_S:
        return [QualityReason(ReasonCode.NO_SPEECH, m.net_speech_s, NO_SPEECH_BELOW_S)]
    reasons = []
    if not math.isnan(m.snr_db) and m.snr_db < limits.min_snr_db:
        reasons.append(QualityReason(ReasonCode.TOO_NOISY, m.snr_db, limits.min_snr_db))
    if m.clipping_ratio > limits.max_clipping_ratio:
        reasons.append(QualityReason(ReasonCode.CLIPPED, m.clipping_ratio, limits.max_clipping_ratio))
    return reasons


def verification_reasons(m: QualityMeasures, limits: QualityLimits) -> list[QualityReason]:
    reasons = signal_reasons(m, limits)
    if reasons and reasons[0].code is ReasonCode.NO_SPEECH:
        return reasons
    if m.net_speech_s < limits.min_verify_speech_s:
        reasons.insert(0, QualityReason(ReasonCode.TOO_SHORT, m.net_speech_s, limits.min_verify_speech_s))
    return reasons


def enrolment_reasons(samples: Sequence[QualityMeasures], limits: QualityLimits) -> list[QualityReason]:
    """Reasons against an enrolment as a whole: too little usable speech over all its samples.

    A sample with signal reasons of its own (see ``signal_reasons``) is not used, so its speech
    does not count; its own reasons are reported with that sample.
    """
    usable_speech = sum(m.net_speech_s for m in samples if not signal_reasons(m, limits))
    if usable_speech < limits.min_enrol_speech_s:
        return [QualityReason(ReasonCode.TOO_SHORT, usable_speech, limits.min_enrol_speech_s)]
    return []
