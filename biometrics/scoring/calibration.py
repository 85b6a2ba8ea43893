"""A score calibration, as the service loads and applies it: ``llr = a * score + b`` and the threshold
that met a target false-match rate on the audit it was fitted on (``biometrics.evaluation.calibration_fit``).
A calibration belongs to one scoring method, model fingerprint and channel; ``check_compatible``
refuses any other.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

from biometrics.errors import BiometricsError, IncompatibleModel

CALIBRATION_FORMAT = 1
CALIBRATION_KIND = "bioident-calibration"
METHODS = ("cosine", "as-norm")
CHANNELS = ("clean", "telephone", "mixed")


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
        if data["method"] == "cosine" and not -1 <= numbers["threshold"] <= 1:
            raise bad("a cosine threshold lies between -1 and 1")
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
