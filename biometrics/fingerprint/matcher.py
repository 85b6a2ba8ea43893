"""1:1 comparison of fingerprint templates and the thresholds that go with it.

``compare`` is the MCC LSS-R score (:mod:`.similarity`) of the best pair of impressions, in [0, 1]:
higher is more similar, deterministic, and symmetric. Thresholds come from the impostor score
distribution in ``impostor_scores.json`` (see :mod:`.operating_points`).
"""

from __future__ import annotations

from biometrics.errors import FingerprintTemplateError
from biometrics.fingerprint.index import FingerprintIndex
from biometrics.fingerprint.operating_points import default_threshold, identification_threshold
from biometrics.fingerprint.similarity import global_similarity
from biometrics.fingerprint.templates import FingerprintTemplate


def check_comparable(probe: FingerprintTemplate, reference: FingerprintTemplate) -> None:
    if probe.fingerprint != reference.fingerprint:
        raise FingerprintTemplateError(
            "fingerprint templates come from different extractors or matchers and cannot be compared"
        )


def compare(probe: FingerprintTemplate, reference: FingerprintTemplate) -> float:
    """Similarity of two templates: the best score over their pairs of impressions."""
    check_comparable(probe, reference)
    best = 0.0
    for a in probe.cylinders():
        for b in reference.cylinders():
            best = max(best, global_similarity(a, b))
    return best


__all__ = [
    "FingerprintIndex",
    "check_comparable",
    "compare",
    "default_threshold",
    "identification_threshold",
]
