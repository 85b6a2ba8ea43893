"""Figures every accuracy audit reports, whatever the modality: failure summaries, threshold rows, intervals.

The voice audit (``audit.py``) and the fingerprint audit (``fingerprint_audit.py``) share them, so both
reports are computed and read the same way.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from biometrics.evaluation.accuracy_report import FailedFile, FailureSummary, ThresholdRow
from biometrics.evaluation.metrics import OperatingPoint

TARGET_FMRS = (1e-2, 1e-3, 1e-4)
DCF_P_TARGETS = (1e-2, 1e-3)
TABLE_FMRS = (1e-1, 1e-2, 1e-3, 1e-4)
BOOTSTRAP_RESAMPLES = 1000
_MAX_LISTED_FAILURES = 1000


def rate_key(value: float) -> str:
    """How rates are written as JSON keys: 0.01 -> "0.01", 1e-4 -> "0.0001"."""
    return np.format_float_positional(value, trim="-")


def failure_summary(role_files: np.ndarray, failures: dict[int, list[str]], files: tuple[str, ...]) -> FailureSummary:
    failed = [i for i in role_files.tolist() if failures.get(i)]
    reasons = Counter(code for i in failed for code in failures[i])
    return FailureSummary(
        rate=len(failed) / len(role_files) if len(role_files) else 0.0,
        failed=len(failed),
        samples=int(len(role_files)),
        reasons=dict(sorted(reasons.items())),
        files=[FailedFile(file=files[i], reasons=failures[i]) for i in failed[:_MAX_LISTED_FAILURES]],
        files_listed=min(len(failed), _MAX_LISTED_FAILURES),
    )


def operating_row(
    label: str, kind: str, point: OperatingPoint, n_gen: int, n_imp: int, excluded_gen: int, excluded_imp: int
) -> ThresholdRow:
    scored_gen, scored_imp = n_gen - excluded_gen, n_imp - excluded_imp
    return ThresholdRow(
        label=label,
        kind=kind,
        threshold=point.threshold,
        fmr=point.fmr,
        fnmr=point.fnmr,
        # over all trials: a genuine trial excluded by FTE/FTA is a rejection, an excluded impostor is too
        generalised_far=point.fmr * scored_imp / n_imp,
        generalised_frr=(excluded_gen + point.fnmr * scored_gen) / n_gen,
    )


def binomial_ci(errors: int, trials: int, confidence: float = 0.95) -> list[float]:
    """Exact (Clopper-Pearson) interval of an error rate; trials are taken as independent."""
    from scipy.stats import beta

    alpha = 1 - confidence
    low = 0.0 if errors == 0 else float(beta.ppf(alpha / 2, errors, trials - errors + 1))
    high = 1.0 if errors == trials else float(beta.ppf(1 - alpha / 2, errors + 1, trials - errors))
    return [low, high]
