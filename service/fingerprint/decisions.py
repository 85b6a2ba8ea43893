"""How the till decides: a customer's fused score over the fingers presented, and the thresholds.

Fusion. The terminal may present one finger or two. Each finger presented is compared with the
customer's template of the same finger position when it names one the customer enrolled, else with each
of the customer's fingers (keeping the best); the customer's score is the mean over the fingers
presented. For an impostor the mean can pass a threshold only if at least one of the ``k`` comparisons
behind it does, so its false-match rate is at most ``k`` times the single comparison's: the threshold
is the matcher's for the target rate divided by ``k``. Two genuine fingers raise the mean; one poor
capture among two good ones is carried by the other.

Thresholds. Card + finger (1:1) decides at the matcher's threshold for ``BIOIDENT_FINGERPRINT_TARGET_FMR``
divided by ``k``. Finger only (1:N) decides at the matcher's identification threshold for
``BIOIDENT_FINGERPRINT_TARGET_FPIR`` over a gallery of (fingers presented x fingers the tenant has
enrolled): FPIR ~= N x FMR for small FMR, so the threshold rises with the gallery. Finger + PIN
identifies among the customers with that PIN: their number is not known (the PIN is only hashed), so
the gallery is taken as ``PIN_SHARE`` of the tenant's, the share of customers who choose the most
common PIN at most.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from biometrics.fingerprint.matcher import compare, default_threshold, identification_threshold
from biometrics.fingerprint.templates import FingerprintTemplate
from service.fingerprint.templates import EnrolledFinger

PIN_SHARE = 0.1


@dataclass(frozen=True)
class ProbeFinger:
    """A finger presented at the till: its template, and its finger position when the terminal knows it."""

    position: int | None
    template: FingerprintTemplate


@dataclass(frozen=True)
class FusedScore:
    score: float
    comparisons: int


def fused_score(
    probes: Sequence[ProbeFinger],
    fingers: Sequence[EnrolledFinger],
    known: Sequence[Mapping[str, float]] | None = None,
) -> FusedScore:
    """The mean over the fingers presented of each one's best score against the customer's fingers.

    ``known`` (one mapping per finger presented, template id -> score) holds scores the gallery's search
    already computed in full: a finger presented that met one of the customer's fingers there is given its
    best such score (the others were not among the search's best, so they score lower), and only the rest
    are compared here."""
    best, comparisons = [], 0
    for i, probe in enumerate(probes):
        same = [f for f in fingers if probe.position is not None and f.position == probe.position]
        against = same or list(fingers)
        found = [known[i][f.template_id] for f in against if f.template_id in known[i]] if known else []
        best.append(max(found) if found else max(compare(probe.template, f.template) for f in against))
        comparisons += len(against)
    return FusedScore(sum(best) / len(best), comparisons)


def verification_threshold(target_fmr: float, comparisons: int, fingerprint: str | None = None) -> float:
    """``fingerprint``: the templates' extractor and matcher (each has its own impostor table)."""
    return float(default_threshold(target_fmr / max(1, comparisons), fingerprint))


def finger_only_threshold(
    target_fpir: float, probes: int, gallery_fingers: int, fingerprint: str | None = None
) -> float:
    return float(identification_threshold(target_fpir, max(1, probes * gallery_fingers), fingerprint))


def pin_threshold(target_fpir: float, probes: int, gallery_fingers: int, fingerprint: str | None = None) -> float:
    gallery = max(1, probes * math.ceil(gallery_fingers * PIN_SHARE))
    return float(identification_threshold(target_fpir, gallery, fingerprint))
