"""Fitting a calibration from an accuracy audit: log-likelihood ratios, and the threshold for a chosen
false-match rate (``bioident audit calibrate``). The calibration itself, as the service loads and applies
it, is ``biometrics.scoring.calibration``.

``llr = a * score + b`` is fitted by prior-weighted logistic regression on the audit's genuine and
impostor scores (Brümmer's linear calibration, as in the BOSARIS toolkit): each class carries the
weight of its prior, whatever its trial count, and the fitted ``llr`` is free of that prior. The
threshold is the raw score that meets the target FMR on the audit data.
"""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path

import numpy as np

from biometrics.evaluation.accuracy_report import AccuracyReport
from biometrics.evaluation.metrics import operating_point_at_fmr
from biometrics.scoring.calibration import Calibration, CalibrationError

_RIDGE = 1e-4  # keeps the slope finite when the audit scores are perfectly separated


def fit_llr(genuine: np.ndarray, impostor: np.ndarray, prior: float = 0.5) -> tuple[float, float]:
    """(a, b) of ``llr = a * s + b`` by prior-weighted logistic regression, solved by Newton's method.

    Minimises  prior * mean(log(1 + exp(-(llr(s_gen) + logit(prior)))))
             + (1 - prior) * mean(log(1 + exp(llr(s_imp) + logit(prior))))
    on standardised scores (plus a tiny ridge on the slope, so perfectly separated scores still
    give a finite, steep mapping).
    """
    from scipy.special import expit

    genuine = np.asarray(genuine, dtype=np.float64)
    impostor = np.asarray(impostor, dtype=np.float64)
    if len(genuine) == 0 or len(impostor) == 0:
        raise CalibrationError("calibration needs genuine and impostor scores")
    if not 0 < prior < 1:
        raise CalibrationError("prior must lie strictly between 0 and 1")
    both = np.concatenate([genuine, impostor])
    centre, scale = float(both.mean()), float(both.std()) or 1.0
    x = (both - centre) / scale
    y = np.concatenate([np.ones(len(genuine)), np.zeros(len(impostor))])
    w = np.concatenate(
        [np.full(len(genuine), prior / len(genuine)), np.full(len(impostor), (1 - prior) / len(impostor))]
    )
    offset = math.log(prior / (1 - prior))
    sign = 2 * y - 1

    def cost(theta: np.ndarray) -> float:
        m = theta[0] * x + theta[1] + offset
        return float(np.sum(w * np.logaddexp(0.0, -sign * m)) + 0.5 * _RIDGE * theta[0] ** 2)

    theta = np.zeros(2)
    current = cost(theta)
    for _ in range(200):
        p = expit(theta[0] * x + theta[1] + offset)
        g = w * (p - y)
        h = w * p * (1 - p)
        grad = np.array([g @ x + _RIDGE * theta[0], g.sum()])
        hess = np.array([[h @ (x * x) + _RIDGE, h @ x], [h @ x, h.sum() + 1e-12]])
        step = np.linalg.solve(hess, grad)
        t = 1.0
        while t > 1e-10 and (new := cost(theta - t * step)) > current:
            t /= 2
        if new > current:  # no descent left: at the optimum to machine precision
            break
        theta, improvement, current = theta - t * step, current - new, new
        if np.max(np.abs(t * step)) < 1e-10 or improvement < 1e-15:
            break
    alpha, beta = float(theta[0]), float(theta[1])
    return alpha / scale, beta - alpha * centre / scale


def calibrate(
    report: AccuracyReport, target_fmr: float, *, prior: float = 0.5, report_path: Path | str | None = None
) -> Calibration:
    """Calibration of an audit report's scores, with the raw threshold that meets ``target_fmr`` on them."""
    if not 0 < target_fmr < 1:
        raise CalibrationError("the target FMR must lie strictly between 0 and 1")
    genuine, impostor = report.scores.arrays()
    if len(genuine) == 0 or len(impostor) == 0:
        raise CalibrationError("the report has no genuine or no impostor scores")
    a, b = fit_llr(genuine, impostor, prior)
    if not a > 0:
        raise CalibrationError("genuine scores are not higher than impostor scores; no monotone calibration exists")
    point = operating_point_at_fmr(genuine, impostor, target_fmr)
    return Calibration(
        a=a,
        b=b,
        threshold=point.threshold,
        target_fmr=float(target_fmr),
        method=report.scoring.method,
        model_fingerprint=report.model_fingerprint,
        channel=report.channel,
        source={
            "dataset_sha256": report.dataset_sha256,
            "report": None if report_path is None else str(report_path),
            "report_created_at": report.created_at,
            "genuine_trials": int(len(genuine)),
            "impostor_trials": int(len(impostor)),
            "prior": prior,
            "fmr_at_threshold": point.fmr,
            "fnmr_at_threshold": point.fnmr,
            # fewer impostor trials than 1/target: the threshold only shows that no impostor passed
            "resolvable": len(impostor) * target_fmr >= 1,
            "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        },
    )
