"""The accuracy audit report as a type: what ``run_audit`` returns and every reader of a report takes.

``AccuracyReport.to_dict()`` is the report's one serialisation (report.json, the service's stored
report, its API response) and ``AccuracyReport.from_dict()`` reads any of them back.

A field with a default is one an earlier report may lack (``ScoringRecord.calibration``) or one
written only when it is known (the ``file`` of a cohort or calibration record). A report writes
out the fields it was given and keeps keys it does not know, so a report read from a dict writes
out that same dict: reports stored by earlier versions, or by a newer replica, pass through as
they are.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, SerializerFunctionWrapHandler, ValidationError, model_serializer

from biometrics.errors import BiometricsError

REPORT_FORMAT = 1
REPORT_KIND = "bioident-accuracy-audit"
_ERRORS_SHOWN = 5


class ReportError(BiometricsError):
    """A dict or file is not an accuracy audit report this version can read; the message says why."""

    code = "audit_report_invalid"


class _ReportPart(BaseModel):
    model_config = ConfigDict(frozen=True, extra="allow", protected_namespaces=())

    @model_serializer(mode="wrap")
    def _given_fields_only(self, handler: SerializerFunctionWrapHandler) -> Any:  # noqa: ANN401
        return {k: v for k, v in handler(self).items() if k in self.model_fields_set}


class DatasetRecord(_ReportPart):
    path: str
    files: int
    trials: dict[str, Any]  # how the trials were made: list file and its hash, or pairs, cap, seed


class CohortRecord(_ReportPart):
    model_fingerprint: str
    channel: str
    size: int
    source_sha256: str | None
    created_at: str | None
    file: str | None = None  # with its sha256, when the cohort was given as a file
    file_sha256: str | None = None


class CalibrationRecord(_ReportPart):
    threshold: float
    target_fmr: float
    channel: str
    dataset_sha256: str | None
    file: str | None = None  # with its sha256, when the calibration was given as a file
    file_sha256: str | None = None


class ScoringRecord(_ReportPart):
    method: str
    configured_threshold: float
    top_k: int | None  # AS-Norm's, with a cohort
    cohort: CohortRecord | None
    calibration: CalibrationRecord | None = None  # absent from reports made before audits applied one
    checked_against_scorer: int


class TrialCounts(_ReportPart):
    files: int
    trials: int
    genuine_trials: int
    impostor_trials: int
    scored_genuine_trials: int
    scored_impostor_trials: int
    excluded_genuine_trials: int
    excluded_impostor_trials: int


class FailedFile(_ReportPart):
    file: str
    reasons: list[str]


class FailureSummary(_ReportPart):
    rate: float
    failed: int
    samples: int
    reasons: dict[str, int]
    files: list[FailedFile]  # the first ones only
    files_listed: int


class Failures(_ReportPart):
    enrolment: FailureSummary  # FTE
    acquisition: FailureSummary  # FTA


class BootstrapRecord(_ReportPart):
    resamples: int
    seed: int
    confidence: float


class FnmrAtFmr(_ReportPart):
    fnmr: float
    threshold: float
    fmr: float
    ci95: list[float]  # [low, high]
    bootstrap: BootstrapRecord
    resolvable: bool  # False: fewer impostor trials than 1/target, only "no impostor accepted" is shown


class ThresholdRow(_ReportPart):
    label: str
    kind: str  # "fmr", "eer" or "configured"
    threshold: float
    fmr: float
    fnmr: float
    generalised_far: float
    generalised_frr: float


class TrialScores(_ReportPart):
    genuine: list[float]
    impostor: list[float]

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """Genuine and impostor scores as float64 arrays."""
        return np.asarray(self.genuine, dtype=np.float64), np.asarray(self.impostor, dtype=np.float64)


class OperatingPointRecord(_ReportPart):
    """The service's own operating point for the audit's pair of channels, and what it did on this data."""

    channels: str  # enrolment/probe
    method: str
    threshold: float
    source: str  # "cohort" (at target_fmr), "calibration" or "override"
    target_fmr: float | None
    cohort_impostor_trials: int | None  # behind a cohort-set threshold
    fmr: float
    fmr_ci95: list[float]  # exact binomial (Clopper-Pearson) over the audit's scored trials
    fnmr: float
    fnmr_ci95: list[float]
    resolvable_fmr: float  # 1 / the audit's impostor trials: no smaller FMR can be shown by them


class MixedScoring(_ReportPart):
    channels: str  # the pair scored
    eer: float
    fnmr_at_fmr_0_001: float
    default_threshold: float  # the service's for that pair
    fmr_at_default: float
    fnmr_at_default: float


class MixedRecord(_ReportPart):
    """A mixed audit (wideband enrolments, telephone callers): the service's direct scoring beside the
    alternative of scoring callers against the enrolment's audio passed through a phone line."""

    direct: MixedScoring  # callers against the wideband enrolment (what the service does)
    telephone_twin: MixedScoring  # callers against the enrolment's telephone twin


class CacheRecord(_ReportPart):
    directory: str
    hits: int
    misses: int
    writes: int


class AccuracyReport(_ReportPart):
    """An accuracy audit of the voice pipeline on a labelled dataset (see ``biometrics.evaluation.audit``)."""

    # What a status poll shows of a finished audit, in this order: its figures and what they were measured on.
    HEADLINE_FIELDS: ClassVar[tuple[str, ...]] = (
        "eer",
        "min_dcf",
        "fnmr_at_fmr",
        "fte",
        "fta",
        "genuine_trials",
        "impostor_trials",
        "model_fingerprint",
        "dataset_sha256",
    )

    format: Literal[1]
    kind: Literal["bioident-accuracy-audit"]
    created_at: str
    command: str | None  # the command that repeats the audit
    modality: str
    model_fingerprint: str
    # fp32 or bf16, the precision the embeddings were computed in (not part of the fingerprint); None in
    # reports written before it was recorded.
    precision: str | None = None
    channel: str
    dataset_sha256: str
    dataset: DatasetRecord
    scoring: ScoringRecord
    settings: dict[str, Any]  # BIOIDENT_* settings the audit ran with, by name
    protocol: dict[str, str | int]
    genuine_trials: int  # scored
    impostor_trials: int  # scored
    counts: TrialCounts
    fte: float
    fta: float
    failures: Failures
    eer: float
    min_dcf: dict[str, float]  # by p_target, written as in rate_key
    fnmr_at_fmr: dict[str, FnmrAtFmr]  # by target FMR, written as in rate_key
    threshold_table: list[ThresholdRow]  # by threshold, ascending
    scores: TrialScores
    cache: CacheRecord | None
    warnings: list[str]
    elapsed_s: float
    operating_point: OperatingPointRecord | None = None  # absent from reports made before the service had one
    mixed: MixedRecord | None = None  # a mixed audit's comparison of channel matching with direct scoring

    def to_dict(self) -> dict:
        """The report as a JSON-ready dict: the form of report.json and of the service's stored reports."""
        return self.model_dump()

    @classmethod
    def from_dict(cls, data: object) -> AccuracyReport:
        """The report a dict holds (``to_dict``'s, or one stored by an earlier version); ``ReportError`` if none."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            problems = [f"{'.'.join(map(str, e['loc'])) or 'report'}: {e['msg']}" for e in exc.errors()]
            more = f" and {len(problems) - _ERRORS_SHOWN} more" if len(problems) > _ERRORS_SHOWN else ""
            raise ReportError(f"not an accuracy audit report: {'; '.join(problems[:_ERRORS_SHOWN])}{more}") from None

    def headline(self) -> dict:
        """The headline figures (``HEADLINE_FIELDS``), as a finished audit job shows them without the whole report."""
        data = self.model_dump(include=set(self.HEADLINE_FIELDS))
        return {name: data[name] for name in self.HEADLINE_FIELDS}
