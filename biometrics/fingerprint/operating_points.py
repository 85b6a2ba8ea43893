"""Thresholds for fingerprint scores: from a target false-match rate, and for 1:N from a target FPIR.

The impostor score distribution of each image extractor ships as ``impostor_scores.json`` (NBIS)
and ``impostor_scores_leader.json`` (LEADER), made by ``scripts/fingerprint_impostor_scores.py``:
every pair of impressions of different fingers in the
FVC2002 DB1_B-DB3_B images (three sensors), about 28,000 comparisons. Only the threshold comes from
those prints; the matcher's parameters are the literature's. Above the measured range (FMR below
1 / number of impostor pairs), the threshold extrapolates an exponential tail fitted to the top 1 %
of impostor scores, the usual generalised-Pareto approximation with shape 0.

For identification over a gallery of N fingers, each search makes N impostor comparisons for a
non-enrolled finger, so FPIR ~= N x FMR when FMR is small (ISO/IEC 19795-1): the 1:N threshold is
the 1:1 threshold at FMR = target FPIR / N. It rises as the gallery grows.
"""

from __future__ import annotations

import json
import math
from functools import lru_cache
from importlib import resources

TAIL_FRACTION = 0.01
TABLES = ("impostor_scores.json", "impostor_scores_leader.json")


@lru_cache(maxsize=1)
def _tables() -> dict[str, tuple[int, tuple[float, ...]]]:
    tables = {}
    for name in TABLES:
        text = resources.files("biometrics.fingerprint").joinpath(name).read_text(encoding="utf-8")
        data = json.loads(text)
        tables[data["fingerprint"]] = (
            int(data["pairs"]),
            tuple(sorted((float(s) for s in data["top_scores"]), reverse=True)),
        )
    return tables


def _impostors(fingerprint: str | None = None) -> tuple[int, tuple[float, ...]]:
    """The impostor table of ``fingerprint`` (default: the configured image extractor's).

    Templates from records (another extractor) have no table of their own: they get the NBIS one.
    """
    from biometrics.fingerprint.capture import NBIS_FINGERPRINT, image_fingerprint

    tables = _tables()
    return tables.get(fingerprint or image_fingerprint(), tables[NBIS_FINGERPRINT])


def default_threshold(target_fmr: float, fingerprint: str | None = None) -> float:
    """Score threshold at which the false-match rate is about ``target_fmr`` (accept when score >= it).

    ``fingerprint``: that of the templates compared (default: the configured image extractor's).
    """
    if not 0.0 < target_fmr < 1.0:
        raise ValueError("target false-match rate must be between 0 and 1")
    pairs, top = _impostors(fingerprint)
    k = target_fmr * pairs  # impostor scores allowed at or above the threshold
    if k >= 1.0 and int(k) < len(top):
        # Just above the (k+1)-th highest impostor score: at most k impostors pass.
        return float(math.nextafter(top[int(k)], math.inf))
    tail = max(2, int(TAIL_FRACTION * pairs))
    tail = min(tail, len(top))
    base = top[tail - 1]
    beta = max(sum(s - base for s in top[:tail]) / tail, 1e-6)
    # P(score >= t) ~= (tail / pairs) * exp(-(t - base) / beta)
    threshold = base + beta * math.log(tail / (pairs * target_fmr))
    return float(min(max(threshold, base), 1.0))


def identification_threshold(target_fpir: float, gallery_size: int, fingerprint: str | None = None) -> float:
    """Threshold for 1:N over ``gallery_size`` fingers at a target false-positive identification rate."""
    if not 0.0 < target_fpir < 1.0:
        raise ValueError("target false-positive identification rate must be between 0 and 1")
    if gallery_size < 1:
        raise ValueError("gallery size must be at least 1")
    return default_threshold(target_fpir / gallery_size, fingerprint)


def impostor_pairs(fingerprint: str | None = None) -> int:
    """How many impostor comparisons the packaged distribution holds."""
    return _impostors(fingerprint)[0]
