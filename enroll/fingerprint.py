"""Fingerprint enrolment as pure logic: judge each capture, decide whether two fingers' captures make an
enrolment, and consolidate each finger's captures into one template. No SQL and no HTTP: the service
seals and stores what this returns, and turns its reasons into errors.

The rules, for a customer who will pay with a finger:

- two different fingers, each named by its ISO/IEC 19794-2 finger position (1 right thumb ... 10 left
  little finger);
- at least ``MIN_GOOD_CAPTURES`` usable captures of each finger (the core's quality gates), each a capture of
  its own (the same image sent twice counts once);
- each capture of a finger matches at least one other capture of it at the verification threshold, so a
  slip (another finger, a smudge the gates let through) never becomes part of the template;
- no capture of one finger matches a capture of the other: the same finger presented twice under two
  positions is refused, since it would give no second finger to fall back on and doubles an impostor's
  chances in a fused decision.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from biometrics.fingerprint.capture import Capture
from biometrics.fingerprint.templates import FingerprintTemplate

FINGER_POSITIONS = range(1, 11)  # ISO/IEC 19794-2 finger position codes of the ten fingers
FINGERS_TO_ENROL = 2
MIN_GOOD_CAPTURES = 2

Comparator = Callable[[FingerprintTemplate, FingerprintTemplate], float]


@dataclass(frozen=True)
class CaptureReport:
    """One capture as the terminal is told about it: accepted, or why not, with its measures."""

    position: int
    index: int  # its place among the captures of that finger, from 0
    quality: int | None
    minutiae: int
    reasons: list[dict]

    @property
    def accepted(self) -> bool:
        return not self.reasons

    def as_dict(self) -> dict:
        return {
            "finger_position": self.position,
            "capture": self.index,
            "accepted": self.accepted,
            "quality": self.quality,
            "minutiae": self.minutiae,
            "reasons": self.reasons,
        }


def judge_capture(position: int, index: int, capture: Capture) -> CaptureReport:
    reasons = [_reason_dict(r) for r in capture.reasons]
    if not capture.usable and not reasons:  # the core said no without saying why
        reasons = [{"code": "UNUSABLE", "measured": 0.0, "limit": 1.0}]
    return CaptureReport(position, index, capture.quality, len(capture.minutiae), reasons)


def _reason_dict(reason: object) -> dict:
    if hasattr(reason, "as_dict"):
        return reason.as_dict()
    return {"code": str(reason.code), "measured": float(reason.measured), "limit": float(reason.limit)}


@dataclass(frozen=True)
class FingerprintEnrolmentPlan:
    """Captures given at once: each one's report, what stands against enrolling them (nothing: go), and
    one consolidated template per finger position when nothing does."""

    reports: list[CaptureReport]
    reasons: list[dict]
    templates: dict[int, FingerprintTemplate] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return not self.reasons and len(self.templates) == FINGERS_TO_ENROL


def plan_fingerprint_enrolment(
    fingers: Mapping[int, Sequence[Capture]], compare: Comparator, threshold: float
) -> FingerprintEnrolmentPlan:
    """Judges two fingers' captures (``fingers``: finger position -> its captures) and, when they make an
    enrolment, consolidates each finger's usable captures into one template. ``compare`` and ``threshold``
    are the matcher's score and the verification threshold in force."""
    reports = _without_repeats(
        [judge_capture(p, i, c) for p, captures in fingers.items() for i, c in enumerate(captures)],
        [c for captures in fingers.values() for c in captures],
    )
    accepted = {(r.position, r.index) for r in reports if r.accepted}
    reasons = _position_reasons(list(fingers))
    good: dict[int, list[FingerprintTemplate]] = {}
    for position, captures in fingers.items():
        templates = [
            c.template for i, c in enumerate(captures) if (position, i) in accepted and c.template is not None
        ]
        if len(templates) < MIN_GOOD_CAPTURES:
            reasons.append(_reason("TOO_FEW_GOOD_CAPTURES", len(templates), MIN_GOOD_CAPTURES, position))
            continue
        weakest = _weakest_link(templates, compare)
        if weakest < threshold:
            reasons.append(_reason("CAPTURES_DO_NOT_MATCH", weakest, threshold, position))
            continue
        good[position] = templates
    if len(good) == FINGERS_TO_ENROL and not reasons:
        (a, first), (b, second) = good.items()
        closest = max(compare(x, y) for x in first for y in second)
        if closest >= threshold:
            reasons.append({**_reason("SAME_FINGER", closest, threshold, a), "other_finger_position": b})
    if reasons:
        return FingerprintEnrolmentPlan(reports, reasons)
    return FingerprintEnrolmentPlan(reports, [], {p: consolidate(t) for p, t in good.items()})


def _without_repeats(reports: list[CaptureReport], captures: list[Capture]) -> list[CaptureReport]:
    """``reports`` with each usable capture whose minutiae repeat an earlier one's refused as DUPLICATE_CAPTURE:
    the same image sent twice (in any format) is one capture, not two that match each other."""
    seen: dict[object, CaptureReport] = {}
    out = []
    for report, capture in zip(reports, captures, strict=True):
        first = seen.get(capture.minutiae) if report.accepted else None
        if first is not None:
            same_as = {"finger_position": first.position, "capture": first.index}
            repeat = {"code": "DUPLICATE_CAPTURE", "same_as": same_as}
            report = CaptureReport(report.position, report.index, report.quality, report.minutiae, [repeat])
        elif report.accepted:
            seen[capture.minutiae] = report
        out.append(report)
    return out


def _position_reasons(positions: list[int]) -> list[dict]:
    reasons = []
    if len(positions) != FINGERS_TO_ENROL:
        reasons.append({"code": "TWO_FINGERS_NEEDED", "measured": float(len(positions)), "limit": 2.0})
    for position in positions:
        if position not in FINGER_POSITIONS:
            reasons.append(_reason("UNKNOWN_FINGER_POSITION", position, 10, position))
    return reasons


def _reason(code: str, measured: float, limit: float, position: int) -> dict:
    return {"code": code, "measured": round(float(measured), 6), "limit": float(limit), "finger_position": position}


def _weakest_link(templates: Sequence[FingerprintTemplate], compare: Comparator) -> float:
    """The lowest, over the captures, of each capture's best score against another capture of the finger."""
    best = [max(compare(t, u) for j, u in enumerate(templates) if j != i) for i, t in enumerate(templates)]
    return min(best)


def consolidate(templates: Sequence[FingerprintTemplate]) -> FingerprintTemplate:
    """One template holding every impression of the finger: the matcher scores a probe against the best of
    them, so a later touch at another angle or pressure is met by the capture closest to it."""
    consolidated = templates[0]
    for template in templates[1:]:
        for impression in template.impressions:
            consolidated = consolidated.with_impression(impression)
    return consolidated
