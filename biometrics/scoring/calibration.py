"""Score calibration from an audit: log-likelihood ratios, and the threshold for a chosen false-match rate.

``llr = a * score + b`` is fitted by prior-weighted logistic regression on the audit's genuine and
impostor scores (Brümmer's linear calibration, as in the BOSARIS toolkit): each class carries the
weight of its prior, whatever its trial count, and the fitted ``llr`` is free of that prior. The
threshold is the raw score that meets the target FMR on the audit data. A calibration belongs to
one scoring method, model fingerprint and channel; ``check_compatible`` refuses any other.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from biometrics.errors import BiometricsError, IncompatibleModel
from biometrics.evaluation.metrics import operating_point_at_fmr

if TYPE_CHECKING:
    from biometrics.evaluation.accuracy_report import AccuracyReport

CALIBRATION_FORMAT = 1
CALIBRATION_KIND = "bioident-calibration"
METHODS = ("cosine", "as-norm")
CHANNELS = ("clean", "telephone", "mixed")
_RIDGE = 1e-4  # keeps the slope finite when the audit scores are perfectly separated


class CalibrationError(BiometricsError):
    """A calibration cannot be made, read or used as asked; the message says why."""

    code = "calibration_invalid"


@dataclass(frozen=True)
class Calibration:
    a: float  # llr = a * score + b, a > 0
    b: float
    threshold: float  # raw score; accept when score >= threshold
    target_fmr: float
    method: str  # the scorer's: "cosine" or "as-norm"
    model_fingerprint: str
    channel: str
    source: dict  # dataset_sha256, report, genuine/impostor trial counts, created_at, prior, ...

    def llr(self, score: float) -> float:
        """Log-likelihood ratio (natural log) of same speaker against different speakers."""
        return float(self.a * score + self.b)

    def check_compatible(self, method: str, model_fingerprint: str, channel: str | None = None) -> None:
        """Raises unless this calibration was made for scores of ``method`` from ``model_fingerprint``."""
        if model_fingerprint != self.model_fingerprint:
            raise IncompatibleModel(
                f"calibration is for model {self.model_fingerprint}, the scores come from {model_fingerprint}"
            )
        if method != self.method:
            raise CalibrationError(f"calibration is for {self.method} scores, the scorer uses {method}")
        if channel is not None and channel != self.channel:
            raise CalibrationError(f"calibration is for the {self.channel} channel, not {channel}")

    def as_dict(self) -> dict:
        return {"format": CALIBRATION_FORMAT, "kind": CALIBRATION_KIND, **asdict(self)}

    def save(self, path: Path) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.as_dict(), indent=2, allow_nan=False) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> Calibration:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise CalibrationError(f"calibration file {path} not found") from None
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise CalibrationError(f"{path} is not a calibration file: {exc}") from None
        return cls.from_dict(data, str(path))

    @classmethod
    def from_dict(cls, data: object, where: str = "calibration") -> Calibration:
        def bad(why: str) -> CalibrationError:
            return CalibrationError(f"{where} is not a calibration of format {CALIBRATION_FORMAT}: {why}")

        if not isinstance(data, dict):
            raise bad("not a JSON object")
        if data.get("kind") != CALIBRATION_KIND or data.get("format") != CALIBRATION_FORMAT:
            raise bad("wrong kind or format")
        numbers = {}
        for name in ("a", "b", "threshold", "target_fmr"):
            value = data.get(name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise bad(f"{name} must be a finite number")
            numbers[name] = float(value)
        if numbers["a"] <= 0:
            raise bad("the slope a must be positive")
        if not 0 < numbers["target_fmr"] < 1:
            raise bad("target_fmr must lie strictly between 0 and 1")
        if data.get("method") not in METHODS:
            raise bad(f"method must be one of {', '.join(METHODS)}")
        if data.get("channel") not in CHANNELS:
            raise bad(f"channel must be one of {', '.join(CHANNELS)}")
        if not isinstance(data.get("model_fingerprint"), str) or not data["model_fingerprint"]:
            raise bad("model_fingerprint missing")
        if not isinstance(data.get("source"), dict):
            raise bad("source missing")
        return cls(
            **numbers,
            method=data["method"],
            model_fingerprint=data["model_fingerprint"],
            channel=data["channel"],
            source=data["source"],
        )


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
