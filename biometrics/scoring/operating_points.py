"""The operating point in force for each pair of channels (enrolment x probe): how scores are made, the
threshold they must reach, and where that threshold came from.

Narrowband audio pushes every pair's cosine up, so one threshold cannot serve both channels. Each pair
gets its own scorer and a threshold chosen for a target false-match rate (``BIOIDENT_TARGET_FMR``) from
the impostor scores of the cohorts of its two channels (the packaged LibriSpeech cohorts, or
``BIOIDENT_COHORT_FILE``): every cohort speaker against every other. Only impostor scores are needed to
set a threshold by FMR. A calibration file (from ``audit calibrate`` on the user's own data) wins for the
pair it was made on; ``BIOIDENT_COSINE_THRESHOLD`` or ``BIOIDENT_ASNORM_THRESHOLD`` set explicitly
override every other pair.

Scores are raw cosine by default. AS-Norm (``BIOIDENT_SCORING=as-norm``, or a cohort file of one's own)
normalises each side by the cohort of its own channel, each cohort speaker without itself, as a caller
who is not in the cohort is. It separates speakers a little better, but its scores depend on how close
the audio's recording conditions are to the cohort's: on LibriSpeech test-other over the telephone,
the AS-Norm threshold set on the (clean) cohort accepted 2.0 % of impostors against a 0.1 % target,
while the raw-cosine threshold set on the same cohort accepted 0.15 %. A default must hold on audio it
has never seen, so it is cosine; AS-Norm is for deployments that calibrate it on their own data.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from biometrics.errors import CohortError
from biometrics.scoring.calibration import Calibration
from biometrics.scoring.scorer import Scorer
from biometrics.settings import CoreSettings
from biometrics.voice.audio.waveform import AudioChannel
from biometrics.voice.cohort import Cohort
from biometrics.voice.embedding import require_same_model

ChannelPair = tuple[AudioChannel, AudioChannel]  # (enrolment, probe)
PAIRS: tuple[ChannelPair, ...] = tuple((e, p) for e in AudioChannel for p in AudioChannel)
# An audit's simulated channel ("clean" or "telephone") is the pair both its sides went through.
CALIBRATION_PAIR = {
    "clean": (AudioChannel.WIDEBAND, AudioChannel.WIDEBAND),
    "telephone": (AudioChannel.TELEPHONE, AudioChannel.TELEPHONE),
    "mixed": (AudioChannel.WIDEBAND, AudioChannel.TELEPHONE),  # wideband enrolments, callers on the phone
}


def pair_name(pair: ChannelPair) -> str:
    return f"{pair[0]}/{pair[1]}"


@dataclass(frozen=True)
class OperatingPoint:
    channels: str
    method: str
    threshold: float
    source: str  # "cohort" (at target_fmr), "calibration" or "override"
    target_fmr: float | None = None
    impostor_trials: int | None = None  # cohort impostor scores the threshold was chosen on
    resolvable_fmr: float | None = None  # the smallest FMR that many impostor trials can show

    def as_dict(self) -> dict:
        return asdict(self)


def _unit(vectors: np.ndarray) -> np.ndarray:
    vectors = vectors.astype(np.float64)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _leave_one_out_stats(unit: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each cohort member's AS-Norm statistics against the rest of its cohort, itself left out."""
    scores = unit @ unit.T
    np.fill_diagonal(scores, -np.inf)
    k = min(k, len(unit) - 1)
    top = np.partition(scores, scores.shape[1] - k, axis=1)[:, -k:]
    return top.mean(axis=1), np.maximum(top.std(axis=1), 1e-6)


def cohort_impostor_scores(enrol: Cohort, test: Cohort, method: str, top_k: int) -> np.ndarray:
    """Scores of every cohort speaker enrolled in ``enrol``'s channel against every other speaker heard in
    ``test``'s channel. The two cohorts must hold the same speakers in the same order (the packaged ones
    do: the same files, through each channel), so that row i of each is one speaker."""
    if len(enrol.embeddings) != len(test.embeddings) or enrol.meta.get("skipped") != test.meta.get("skipped"):
        raise CohortError("the two channels' cohorts do not hold the same speakers")
    require_same_model(enrol.model_fingerprint, test.model_fingerprint)
    e, t = _unit(enrol.embeddings), _unit(test.embeddings)
    raw = e @ t.T
    if method == "as-norm":
        mu_e, sd_e = _leave_one_out_stats(e, top_k)
        mu_t, sd_t = _leave_one_out_stats(t, top_k)
        raw = 0.5 * ((raw - mu_e[:, None]) / sd_e[:, None] + (raw - mu_t[None, :]) / sd_t[None, :])
    return raw[~np.eye(len(raw), dtype=bool)]  # a speaker against itself is no impostor trial


def threshold_at_fmr(impostor: np.ndarray, target_fmr: float) -> float:
    """The lowest threshold at which at most ``target_fmr`` of the impostor scores are accepted (score >=)."""
    ranked = np.sort(impostor)[::-1]
    allowed = math.floor(target_fmr * len(ranked))
    return float(np.nextafter(ranked[allowed], np.inf)) if allowed < len(ranked) else float(ranked[-1])


class ChannelScoring:
    """A scorer and its operating point for each pair of channels."""

    def __init__(self, scorers: dict[ChannelPair, Scorer], points: dict[ChannelPair, OperatingPoint]) -> None:
        self._scorers = scorers
        self.points = points

    @property
    def method(self) -> str:
        return next(iter(self.points.values())).method

    @property
    def calibration(self) -> Calibration | None:
        return next((s.calibration for s in self._scorers.values() if s.calibration is not None), None)

    def scorer(self, enrolment: AudioChannel | None, probe: AudioChannel) -> Scorer:
        """The scorer of a pair. A template whose channel is not known (enrolled before channels were
        recorded) gets the stricter of the two pairs that end in the probe's channel."""
        if enrolment is not None:
            return self._scorers[(enrolment, probe)]
        candidates = [self._scorers[(e, probe)] for e in AudioChannel]
        return max(candidates, key=lambda s: s.threshold)

    def summary(self) -> dict:
        return {pair_name(pair): point.as_dict() for pair, point in self.points.items()}

    @classmethod
    def for_model(
        cls,
        settings: CoreSettings,
        model_fingerprint: str,
        *,
        cohort: Cohort | None = None,
        calibration: Calibration | None = None,
        cosine: bool = False,
    ) -> ChannelScoring:
        """The deployment's scoring for the model in use: ``cohort`` (else ``BIOIDENT_COHORT_FILE``, else the
        packaged cohorts) and ``calibration`` (else ``BIOIDENT_CALIBRATION_FILE``), each checked against it.
        ``cosine``: raw cosine scores, the cohorts only setting the thresholds."""
        from biometrics.voice.default_cohorts import load_default_cohorts

        if cohort is None and settings.cohort_file is not None:
            cohort = Cohort.load(settings.cohort_file)
        if cohort is not None and settings.cosine_threshold is None:  # a cohort of one's own is for AS-Norm
            settings = settings.model_copy(update={"scoring": "as-norm"})
        if cohort is not None:
            require_same_model(cohort.model_fingerprint, model_fingerprint)
            cohorts = dict.fromkeys(AudioChannel, cohort)
        elif settings.cosine_threshold is not None:
            cohorts = None  # raw cosine at the threshold given: no cohort is needed
        else:
            cohorts = load_default_cohorts(model_fingerprint)
        if calibration is None and settings.calibration_file is not None:
            calibration = Calibration.load(settings.calibration_file)
        scoring = cls.from_settings(settings, cohorts, calibration=calibration, cosine=cosine)
        if calibration is not None:
            calibration.check_compatible(scoring.method, model_fingerprint)
        return scoring

    @classmethod
    def from_settings(
        cls,
        settings: CoreSettings,
        cohorts: dict[AudioChannel, Cohort] | None,
        *,
        calibration: Calibration | None = None,
        cosine: bool = False,
    ) -> ChannelScoring:
        """The operating points ``settings`` describe, over ``cohorts`` (one per channel; a single user
        cohort may serve both). See the module for the order of precedence."""
        if calibration is not None:  # the user's own data says which scores its threshold is for
            cosine = cosine or calibration.method == "cosine"
        else:
            cosine = cosine or settings.cosine_threshold is not None or settings.scoring == "cosine"
        method = "cosine" if cosine else "as-norm"
        override = settings.cosine_threshold if cosine else settings.asnorm_threshold
        calibrated = CALIBRATION_PAIR.get(calibration.channel) if calibration is not None else None
        scorers, points = {}, {}
        for pair in PAIRS:
            enrol, test = (None, None) if cohorts is None else (cohorts[pair[0]], cohorts[pair[1]])
            if pair == calibrated:
                point = OperatingPoint(
                    pair_name(pair), method, calibration.threshold, "calibration", calibration.target_fmr
                )
            elif override is not None:
                point = OperatingPoint(pair_name(pair), method, float(override), "override")
            elif enrol is None:
                raise CohortError(f"no cohort to set the {pair_name(pair)} threshold by: set BIOIDENT_COHORT_FILE")
            else:
                impostor = cohort_impostor_scores(enrol, test, method, settings.asnorm_top_k)
                point = OperatingPoint(
                    pair_name(pair),
                    method,
                    math.ceil(threshold_at_fmr(impostor, settings.target_fmr) * 1e6) / 1e6,  # never below it
                    "cohort",
                    settings.target_fmr,
                    int(len(impostor)),
                    1 / len(impostor),
                )
            if not cosine and enrol is None:
                raise CohortError("AS-Norm needs a cohort: set BIOIDENT_COHORT_FILE or BIOIDENT_COSINE_THRESHOLD")
            scorers[pair] = Scorer(
                None if cosine else enrol,
                test_cohort=None if cosine else test,
                top_k=settings.asnorm_top_k,
                cosine_threshold=point.threshold,
                asnorm_threshold=point.threshold,
                calibration=calibration if pair == calibrated else None,
                channels=pair_name(pair),
            )
            points[pair] = point
        return cls(scorers, points)
