"""Accuracy audit reports for tests: one as the service stored it before reports recorded the deployment's
calibration, and reports built around given scores."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from biometrics.evaluation.accuracy_report import AccuracyReport

# An AS-Norm audit of the tone dataset (tests/test_audit_metrics.py) as an API job stored it before the
# report's scoring recorded a calibration: no "calibration" key, and a cohort given as an object, so
# without "file". Its score lists are shortened.
STORED_BEFORE_CALIBRATION: dict = json.loads(
    (Path(__file__).parent / "data" / "audit_report_before_calibration.json").read_text(encoding="utf-8")
)


def report_with_scores(
    genuine: Sequence[float],
    impostor: Sequence[float],
    *,
    method: str = "cosine",
    model_fingerprint: str = "ecapa-voxceleb-test",
    dataset_sha256: str = "ab" * 32,
) -> AccuracyReport:
    """A whole report (the stored one's other parts) around these scores, of this scoring method and model."""
    return AccuracyReport.from_dict(
        {
            **STORED_BEFORE_CALIBRATION,
            "scores": {"genuine": list(map(float, genuine)), "impostor": list(map(float, impostor))},
            "scoring": {**STORED_BEFORE_CALIBRATION["scoring"], "method": method},
            "model_fingerprint": model_fingerprint,
            "dataset_sha256": dataset_sha256,
        }
    )
