"""One capture: minutiae, quality and the gates that decide whether it can be used.

Gates (limits in :class:`biometrics.settings.CoreSettings`, ``BIOIDENT_FINGERPRINT_*``):
too few minutiae, NFIQ 2 below its limit (skipped when NFIQ 2 cannot be computed for the image),
too small a print (foreground area in mm2 at the image's resolution). A refused capture lists every
gate it failed as ``{code, measured, limit}``; it has no template.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from biometrics.fingerprint.extraction import EXTRACTOR_NAME, LEADER_NAME, extract, extractor_name
from biometrics.fingerprint.images import FingerprintImage
from biometrics.fingerprint.minutiae import Minutiae
from biometrics.fingerprint.records import RecordFormat, read_record
from biometrics.fingerprint.templates import FingerprintTemplate, fingerprint_of
from biometrics.settings import CoreSettings

TOO_FEW_MINUTIAE = "too_few_minutiae"
LOW_QUALITY = "low_quality"
SMALL_PRINT_AREA = "small_print_area"
RECORD_EXTRACTOR = "iso-19794-2-record"


def record_fingerprint(format: RecordFormat = "iso") -> str:
    """Fingerprint of templates made from records: another extractor's minutiae, so not comparable to ours."""
    return fingerprint_of(RECORD_EXTRACTOR if format == "iso" else "ansi-378-record")


IMAGE_FINGERPRINT = fingerprint_of(LEADER_NAME)  # of the default extractor (leader)
NBIS_FINGERPRINT = fingerprint_of(EXTRACTOR_NAME)


def image_fingerprint(settings: CoreSettings | None = None) -> str:
    """Fingerprint of templates made from images with the configured extractor."""
    return fingerprint_of(extractor_name((settings or CoreSettings()).fingerprint_extractor))


@dataclass(frozen=True)
class QualityReason:
    code: Literal["too_few_minutiae", "low_quality", "small_print_area"]
    measured: float
    limit: float

    def as_dict(self) -> dict[str, object]:
        return {"code": self.code, "measured": self.measured, "limit": self.limit}


@dataclass(frozen=True)
class Capture:
    minutiae: Minutiae
    quality: int | None  # NFIQ 2, 0-100; None where it cannot be computed (records, some images)
    area_mm2: float | None
    reasons: list[QualityReason] = field(default_factory=list)
    template: FingerprintTemplate | None = None

    @property
    def usable(self) -> bool:
        return not self.reasons


def _gate(
    minutiae: Minutiae, quality: int | None, area_mm2: float | None, settings: CoreSettings
) -> list[QualityReason]:
    reasons = []
    count = len(minutiae.points)
    if count < settings.fingerprint_min_minutiae:
        reasons.append(QualityReason(TOO_FEW_MINUTIAE, float(count), float(settings.fingerprint_min_minutiae)))
    if quality is not None and quality < settings.fingerprint_min_nfiq2:
        reasons.append(QualityReason(LOW_QUALITY, float(quality), float(settings.fingerprint_min_nfiq2)))
    if area_mm2 is not None and area_mm2 < settings.fingerprint_min_area_mm2:
        reasons.append(QualityReason(SMALL_PRINT_AREA, round(area_mm2, 1), float(settings.fingerprint_min_area_mm2)))
    return reasons


def analyse_capture(image: FingerprintImage, *, settings: CoreSettings | None = None) -> Capture:
    """Extract, measure and gate one impression; the template is there only when every gate passes."""
    settings = settings or CoreSettings()
    result = extract(image, settings.fingerprint_extractor)
    area = None
    if result.foreground_pixels is not None:
        mm_per_pixel = 25.4 / float(image.resolution_dpi)
        area = result.foreground_pixels * mm_per_pixel * mm_per_pixel
    reasons = _gate(result.minutiae, result.nfiq2, area, settings)
    template = None if reasons else FingerprintTemplate((result.minutiae,), image_fingerprint(settings))
    return Capture(result.minutiae, result.nfiq2, area, reasons, template)


def capture_from_record(
    record_bytes: bytes, format: RecordFormat = "iso", *, settings: CoreSettings | None = None
) -> Capture:
    """A capture from a finger-minutiae record's first view (quality: the view's finger quality)."""
    settings = settings or CoreSettings()
    record = read_record(record_bytes, format)
    view = record.views[0]
    minutiae = view.minutiae
    reasons = _gate(minutiae, None, None, settings)
    template = None if reasons else FingerprintTemplate((minutiae,), record_fingerprint(format))
    return Capture(minutiae, view.finger_quality or None, None, reasons, template)
