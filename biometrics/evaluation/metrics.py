"""Error rates of a verifier from genuine and impostor scores (higher score = more alike)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ErrorRates:
    thresholds: np.ndarray  # ascending; accept when score >= threshold
    fmr: np.ndarray  # false match rate at each threshold
    fnmr: np.ndarray  # false non-match rate at each threshold


def _scores(genuine: np.ndarray, impostor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    genuine = np.sort(np.asarray(genuine, dtype=np.float64))
    impostor = np.sort(np.asarray(impostor, dtype=np.float64))
    if len(genuine) == 0 or len(impostor) == 0:
        raise ValueError("need at least one genuine and one impostor score")
    return genuine, impostor


def error_rates(genuine: np.ndarray, impostor: np.ndarray) -> ErrorRates:
    """FMR and FNMR at every distinct score used as threshold (plus one above all scores)."""
    genuine, impostor = _scores(genuine, impostor)
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


# --- operating points, detection cost, confidence ----------------------------------------------


@dataclass(frozen=True)
class OperatingPoint:
    threshold: float  # accept when score >= threshold
    fmr: float
    fnmr: float


def _allowed_false_matches(n_impostor: int, target_fmr: float) -> int:
    """The most impostors a threshold may accept and keep FMR <= target (with a little float slack)."""
    if not 0 <= target_fmr <= 1:
        raise ValueError("target_fmr must lie in [0, 1]")
    return int(np.floor(target_fmr * n_impostor * (1 + 1e-12)))


def operating_point_at_fmr(genuine: np.ndarray, impostor: np.ndarray, target_fmr: float) -> OperatingPoint:
    """The lowest threshold whose FMR is at most ``target_fmr``: there FNMR is the lowest such threshold allows.

    When the data hold fewer than ``1 / target_fmr`` impostor scores, this is the threshold that
    accepts no impostor at all; the FMR it shows (0) says nothing finer than ``1 / len(impostor)``.
    """
    rates = error_rates(genuine, impostor)
    k = _allowed_false_matches(len(impostor), target_fmr)
    accepted = np.round(rates.fmr * len(impostor)).astype(np.int64)
    i = int(np.argmax(accepted <= k))  # fmr falls as the threshold rises; the last threshold accepts none
    return OperatingPoint(float(rates.thresholds[i]), float(rates.fmr[i]), float(rates.fnmr[i]))


def fnmr_at_fmr(genuine: np.ndarray, impostor: np.ndarray, target_fmr: float) -> float:
    """Lowest FNMR among thresholds whose FMR is at most ``target_fmr``."""
    return operating_point_at_fmr(genuine, impostor, target_fmr).fnmr


def operating_point_at_threshold(genuine: np.ndarray, impostor: np.ndarray, threshold: float) -> OperatingPoint:
    genuine, impostor = _scores(genuine, impostor)
    fnmr = np.searchsorted(genuine, threshold, side="left") / len(genuine)
    fmr = 1.0 - np.searchsorted(impostor, threshold, side="left") / len(impostor)
    return OperatingPoint(float(threshold), float(fmr), float(fnmr))


def eer_operating_point(genuine: np.ndarray, impostor: np.ndarray) -> OperatingPoint:
    """The threshold where FMR and FNMR are closest (the measured rates there, not interpolated)."""
    rates = error_rates(genuine, impostor)
    i = int(np.argmin(np.abs(rates.fmr - rates.fnmr)))
    return OperatingPoint(float(rates.thresholds[i]), float(rates.fmr[i]), float(rates.fnmr[i]))


def min_dcf(
    genuine: np.ndarray, impostor: np.ndarray, p_target: float, c_miss: float = 1.0, c_fa: float = 1.0
) -> float:
    """Normalised minimum detection cost (NIST SRE).

    DCF(t) = c_miss * p_target * FNMR(t) + c_fa * (1 - p_target) * FMR(t), minimised over every
    threshold (accept-all and reject-all included) and divided by the cost of the better of those
    two trivial systems, min(c_miss * p_target, c_fa * (1 - p_target)); so 1 means no better than
    always deciding the same way and 0 means no errors.
    """
    if not 0 < p_target < 1:
        raise ValueError("p_target must lie strictly between 0 and 1")
    if c_miss <= 0 or c_fa <= 0:
        raise ValueError("costs must be positive")
    rates = error_rates(genuine, impostor)
    dcf = c_miss * p_target * rates.fnmr + c_fa * (1 - p_target) * rates.fmr
    return float(dcf.min() / min(c_miss * p_target, c_fa * (1 - p_target)))


def det_points(genuine: np.ndarray, impostor: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(FMR, FNMR) at every threshold, FMR falling, for a DET curve; plot on normal-deviate axes."""
    rates = error_rates(genuine, impostor)
    return rates.fmr, rates.fnmr


def probit(p: np.ndarray | float, eps: float = 1e-6) -> np.ndarray:
    """Normal deviate of probabilities clipped to [eps, 1 - eps] (the DET plot's axis scale)."""
    from scipy.special import ndtri

    return ndtri(np.clip(np.asarray(p, dtype=np.float64), eps, 1 - eps))


@dataclass(frozen=True)
class ConfidenceInterval:
    low: float
    high: float
    confidence: float
    resamples: int
    seed: int


def bootstrap_fnmr_at_fmr(
    genuine: np.ndarray,
    impostor: np.ndarray,
    target_fmr: float,
    n_resamples: int = 1000,
    seed: int = 0,
) -> np.ndarray:
    """FNMR@FMR on ``n_resamples`` bootstrap replicates, genuine and impostor scores resampled separately.

    Exact but cheap: on a replicate the operating point accepts at most k = floor(target * n)
    impostors, so its threshold lies just above v, the (k+1)-th largest resampled impostor score,
    and FNMR is the share of resampled genuine scores <= v. Both are drawn from their exact
    resampling laws: P(v <= x_j) = P(Binomial(n, share of impostors above x_j) <= k), and the
    count of resampled genuine scores <= v is Binomial(n_genuine, share of genuine <= v). This is
    the same distribution as resampling the score arrays themselves, in O(n + resamples) memory.
    """
    from scipy.stats import binom

    genuine, impostor = _scores(genuine, impostor)
    if n_resamples < 1:
        raise ValueError("n_resamples must be positive")
    rng = np.random.default_rng(seed)
    n = len(impostor)
    k = _allowed_false_matches(n, target_fmr)
    if k >= n:  # accepting everything is allowed: no genuine is ever rejected
        return np.zeros(n_resamples)
    above = (n - 1 - np.arange(n)) / n  # share of impostors strictly above position j (sorted, ties aside)
    cdf = binom.cdf(k, n, above)  # P(v <= impostor[j]); reaches 1 at the top position
    cdf[-1] = 1.0
    v = impostor[np.minimum(np.searchsorted(cdf, rng.random(n_resamples), side="right"), n - 1)]
    share_below = np.searchsorted(genuine, v, side="right") / len(genuine)
    return rng.binomial(len(genuine), share_below) / len(genuine)


def bootstrap_ci(
    genuine: np.ndarray,
    impostor: np.ndarray,
    target_fmr: float,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> ConfidenceInterval:
    """Percentile bootstrap interval for FNMR@FMR (see ``bootstrap_fnmr_at_fmr``)."""
    if not 0 < confidence < 1:
        raise ValueError("confidence must lie strictly between 0 and 1")
    replicates = bootstrap_fnmr_at_fmr(genuine, impostor, target_fmr, n_resamples, seed)
    tail = (1 - confidence) / 2
    low, high = np.quantile(replicates, [tail, 1 - tail])
    return ConfidenceInterval(float(low), float(high), confidence, n_resamples, seed)
