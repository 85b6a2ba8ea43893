"""Scores between a template and a test embedding: cosine, and AS-Norm against an impostor cohort.

AS-Norm (adaptive symmetric score normalisation, Matejka et al. 2017) scales each raw score by the
mean and spread of the top-k cohort scores of the enrolment side and of the test side, so that
impostor scores are about N(0, 1) whatever the speakers and channel. That makes one threshold
mean the same false-accept rate across customers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from biometrics.scoring.calibration import Calibration, CalibrationError
from biometrics.voice.cohort import Cohort
from biometrics.voice.embedding import Embedding, require_same_model
from biometrics.voice.quality.gates import QualityReason

STATS_BLOCK = 1024


class Decision(StrEnum):
    ACCEPT = "accept"
    REJECT = "reject"


def cosine_score(enrol: Embedding, test: Embedding) -> float:
    require_same_model(enrol.model_fingerprint, test.model_fingerprint)
    return float(np.dot(enrol.vector, test.vector) / (np.linalg.norm(enrol.vector) * np.linalg.norm(test.vector)))


def top_k_stats(vectors: np.ndarray, cohort: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation (at least 1e-6) of the ``k`` highest cohort scores of each vector
    (one vector or rows of them); AS-Norm's per-side statistics."""
    scores = (vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)) @ cohort.T
    top = np.partition(scores, scores.shape[-1] - k, axis=-1)[..., -k:]
    return top.mean(axis=-1), np.maximum(top.std(axis=-1), 1e-6)


def asnorm_score(
    enrol: Embedding, test: Embedding, cohort: Cohort, top_k: int, test_cohort: Cohort | None = None
) -> float:
    """AS-Norm; each side's statistics come from the cohort of its own channel (``test_cohort`` for the
    test side when the channels differ)."""
    raw = cosine_score(enrol, test)
    test_cohort = test_cohort or cohort
    require_same_model(enrol.model_fingerprint, cohort.model_fingerprint)
    require_same_model(test.model_fingerprint, test_cohort.model_fingerprint)
    mu_e, sd_e = top_k_stats(enrol.vector, cohort.embeddings, min(top_k, len(cohort.embeddings)))
    mu_t, sd_t = top_k_stats(test.vector, test_cohort.embeddings, min(top_k, len(test_cohort.embeddings)))
    return float(0.5 * ((raw - mu_e) / sd_e + (raw - mu_t) / sd_t))


@dataclass(frozen=True)
class Verdict:
    decision: Decision
    score: float | None
    threshold: float
    method: str  # "cosine" or "as-norm"
    reasons: list[QualityReason]
    llr: float | None = None  # calibrated log-likelihood ratio, when a calibration is loaded
    channels: str | None = None  # the channel pair scored, "enrolment/probe" (e.g. "telephone/telephone")


class Scorer:
    """Scores with AS-Norm when a cohort is given, else plain cosine, and decides against a threshold.

    With a calibration (from ``bioident audit calibrate``) the threshold is the one that met the
    audited false-match rate, and verdicts also carry the calibrated log-likelihood ratio.
    """

    def __init__(
        self,
        cohort: Cohort | None = None,
        *,
        test_cohort: Cohort | None = None,
        top_k: int = 100,
        cosine_threshold: float = 0.25,
        asnorm_threshold: float = 3.0,
        calibration: Calibration | None = None,
        channels: str | None = None,
    ) -> None:
        """``cohort`` normalises the enrolment side, ``test_cohort`` (default: the same) the test side;
        ``channels`` names the pair of channels this scorer is for, carried into its verdicts."""
        self.cohort = cohort
        self.test_cohort = test_cohort if test_cohort is not None else cohort
        self.channels = channels
        self.top_k = top_k
        self.method = "as-norm" if cohort is not None else "cosine"
        self.threshold = asnorm_threshold if cohort is not None else cosine_threshold
        self.calibration = calibration
        if calibration is not None:
            if calibration.method != self.method:
                raise CalibrationError(f"calibration is for {calibration.method} scores, the scorer uses {self.method}")
            self.threshold = calibration.threshold

    def score(self, enrol: Embedding, test: Embedding) -> float:
        if self.cohort is None:
            return cosine_score(enrol, test)
        return asnorm_score(enrol, test, self.cohort, self.top_k, self.test_cohort)

    def scores_against(self, enrols: Sequence[Embedding], test: Embedding) -> np.ndarray:
        """``score(e, test)`` for every template ``e`` (1:N), with the test side's cohort statistics taken once."""
        for enrol in enrols:
            require_same_model(enrol.model_fingerprint, test.model_fingerprint)
        if not enrols:
            return np.empty(0)
        vectors = np.stack([e.vector for e in enrols])
        raw = (vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)) @ (test.vector / np.linalg.norm(test.vector))
        if self.cohort is None:
            return raw
        require_same_model(test.model_fingerprint, self.test_cohort.model_fingerprint)
        mu_t, sd_t = top_k_stats(
            test.vector, self.test_cohort.embeddings, min(self.top_k, len(self.test_cohort.embeddings))
        )
        k = min(self.top_k, len(self.cohort.embeddings))
        scores = np.empty(len(enrols))
        for start in range(0, len(enrols), STATS_BLOCK):  # a row of cohort scores per template, in blocks
            block = slice(start, start + STATS_BLOCK)
            mu_e, sd_e = top_k_stats(vectors[block], self.cohort.embeddings, k)
            scores[block] = 0.5 * ((raw[block] - mu_e) / sd_e + (raw[block] - mu_t) / sd_t)
        return scores

    def verdict(self, enrol: Embedding | None, test: Embedding | None, reasons: list[QualityReason]) -> Verdict:
        """Accepts only when no quality reason stands and the score reaches the threshold."""
        score = self.score(enrol, test) if enrol is not None and test is not None else None
        accepted = not reasons and score is not None and score >= self.threshold
        return Verdict(
            decision=Decision.ACCEPT if accepted else Decision.REJECT,
            score=score,
            threshold=self.threshold,
            method=self.method,
            reasons=list(reasons),
            llr=None if self.calibration is None or score is None else self.calibration.llr(score),
            channels=self.channels,
        )
