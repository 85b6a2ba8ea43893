"""Error rates of a verifier from genuine and impostor scores (higher score = more alike)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ErrorRates:
    thresholds: np.ndarray  # ascending; accept when score >= threshold
    fmr: np.ndarray  # false match rate at each threshold
    fnmr: np.ndarray  # false non-match rate at each threshold


def error_rates(genuine: np.ndarray, impostor: np.ndarray) -> ErrorRates:
    """FMR and FNMR at every distinct score used as threshold (plus one above all scores)."""
    genuine = np.sort(np.asarray(genuine, dtype=np.float64))
    impostor = np.sort(np.asarray(impostor, dtype=np.float64))
    if len(genuine) == 0 or len(impostor) == 0:
        raise ValueError("need at least one genuine and one impostor score")
    scores = np.unique(np.concatenate([genuine, impostor]))
    thresholds = np.append(scores, np.nextafter(scores[-1], np.inf))
    fnmr = np.searchsorted(genuine, thresholds, side="left") / len(genuine)
    fmr = 1.0 - np.searchsorted(impostor, thresholds, side="left") / len(impostor)
    return ErrorRates(thresholds, fmr, fnmr)


def equal_error_rate(genuine: np.ndarray, impostor: np.ndarray) -> float:
    """EER: where FMR and FNMR cross, interpolated linearly between the two thresholds around it."""
    rates = error_rates(genuine, impostor)
    diff = rates.fmr - rates.fnmr  # starts >= 0 (accept all), ends <= 0 (reject all)
    i = int(np.argmax(diff <= 0))
    if i == 0:
        return float(rates.fmr[0])
    d0, d1 = diff[i - 1], diff[i]
    w = d0 / (d0 - d1) if d0 != d1 else 0.0
    fmr = rates.fmr[i - 1] + w * (rates.fmr[i] - rates.fmr[i - 1])
    fnmr = rates.fnmr[i - 1] + w * (rates.fnmr[i] - rates.fnmr[i - 1])
    return float((fmr + fnmr) / 2)
