"""Thresholds for fingerprint scores: from a target false-match rate, and for 1:N from a target FPIR.

The impostor score distributions of each image extractor ship as ``impostor_scores.json`` (NBIS)
and ``impostor_scores_leader.json`` (LEADER), made by ``scripts/fingerprint_impostor_scores.py``: for
each of the FVC2002 DB1_B, DB2_B and DB3_B sets (three sensors), every pair of impressions of different
fingers of that set, 2,880 comparisons each. Only the thresholds and the matcher's impostor centre
(:mod:`.similarity`) come from those prints; the matcher's other parameters are the literature's.

A deployment has one sensor, so the target must hold on one sensor's prints, not on a pool of several
(pairs across sensors score lower and would hide the worst sensor's tail): the threshold is the highest
of the per-sensor thresholds. The matcher puts small prints' scores on the impostor scale of large prints'
(:mod:`.similarity`), so the sensors' thresholds nearly agree (LEADER at 1e-3: 0.0219, 0.0196, 0.0213).
Held out one at a time (``scripts/fingerprint_threshold_transfer.py``, benchmarks/RESULTS.md), the rule
gives 0.03 % false matches at a 0.1 % target on the set of small prints (DB3_B), where the unscaled scores
gave 0.35 % (1.11 % with a threshold pooled across sensors), and 0.14 % and 0 % on DB1_B and DB2_B: near the
target, not always under it. A deployment with another sensor should still audit its own prints.

Above the measured range (FMR below 1 / number of impostor pairs), a threshold extrapolates an
exponential tail fitted to the top 1 % of the sensor's impostor scores, the usual generalised-Pareto
approximation with shape 0.

For identification over a gallery of N fingers, each search makes N impostor comparisons for a
non-enrolled finger, so FPIR ~= N x FMR when FMR is small (ISO/IEC 19795-1): the 1:N threshold is
the 1:1 threshold at FMR = target FPIR / N. It rises as the gallery grows.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

TAIL_FRACTION = 0.01
TABLES = ("impostor_scores.json", "impostor_scores_leader.json")


@dataclass(frozen=True)
class ImpostorTable:
    """One sensor's impostor comparisons: how many, and the highest scores, best first."""

    pairs: int
    top: tuple[float, ...]

    def threshold(self, target_fmr: float) -> float:
        k = target_fmr * self.pairs  # impostor scores allowed at or above the threshold
        if k >= 1.0 and int(k) < len(self.top):
            # Just above the (k+1)-th highest impostor score: at most k impostors pass.
            return float(math.nextafter(self.top[int(k)], math.inf))
        tail = min(max(2, int(TAIL_FRACTION * self.pairs)), len(self.top))
        base = self.top[tail - 1]
        beta = max(sum(s - base for s in self.top[:tail]) / tail, 1e-6)
        # P(score >= t) ~= (tail / pairs) * exp(-(t - base) / beta)
        threshold = base + beta * math.log(tail / (self.pairs * target_fmr))
        return float(min(max(threshold, base), 1.0))


@lru_cache(maxsize=1)
def _tables() -> dict[str, dict[str, ImpostorTable]]:
    """Per template fingerprint: one impostor table per sensor."""
    tables = {}
    for name in TABLES:
        text = resources.files("biometrics.fingerprint").joinpath(name).read_text(encoding="utf-8")
        data = json.loads(text)
        tables[data["fingerprint"]] = {
            sensor: ImpostorTable(int(t["pairs"]), tuple(sorted((float(s) for s in t["top_scores"]), reverse=True)))
            for sensor, t in data["sensors"].items()
        }
    return tables


def _impostors(fingerprint: str | None = None) -> dict[str, ImpostorTable]:
    """The impostor tables of ``fingerprint`` (default: the configured image extractor's).

    Templates from records (another extractor) have no tables of their own: they get the NBIS ones.
    """
    from biometrics.fingerprint.capture import NBIS_FINGERPRINT, image_fingerprint

    tables = _tables()
    return tables.get(fingerprint or image_fingerprint(), tables[NBIS_FINGERPRINT])


def default_threshold(target_fmr: float, fingerprint: str | None = None) -> float:
    """Score threshold at which the false-match rate is at most about ``target_fmr`` on each sensor's
    prints (accept when score >= it). ``fingerprint``: that of the templates compared (default: the
    configured image extractor's)."""
    if not 0.0 < target_fmr < 1.0:
        raise ValueError("target false-match rate must be between 0 and 1")
    return max(table.threshold(target_fmr) for table in _impostors(fingerprint).values())


def identification_threshold(target_fpir: float, gallery_size: int, fingerprint: str | None = None) -> float:
    """Threshold for 1:N over ``gallery_size`` fingers at a target false-positive identification rate."""
    if not 0.0 < target_fpir < 1.0:
        raise ValueError("target false-positive identification rate must be between 0 and 1")
    if gallery_size < 1:
        raise ValueError("gallery size must be at least 1")
    return default_threshold(target_fpir / gallery_size, fingerprint)


def impostor_pairs(target_fmr: float, fingerprint: str | None = None) -> int:
    """How many impostor comparisons back the threshold at ``target_fmr``: those of the sensor that sets it."""
    return max(_impostors(fingerprint).values(), key=lambda table: table.threshold(target_fmr)).pairs
