"""Accuracy audit of the deployed voice pipeline on a labelled dataset.

Every file goes through the production path once (decode, optional telephone channel, VAD and
quality measures, embedding; through the embedding cache when one is given). Then, with one
sample enrolled per trial:

- FTE (failure to enrol): the share of distinct enrolment samples that cannot be enrolled: the
  file cannot be decoded, holds no embeddable speech, or has signal reasons of its own
  (NO_SPEECH, TOO_NOISY, CLIPPED; ``signal_reasons``). The production minimum of total enrolment
  speech (``min_enrol_speech_s``, summed over several samples) is not applied to a one-sample
  enrolment; how many enrolment samples fall short of it is reported beside.
- FTA (failure to acquire): the share of distinct test samples the verification gates refuse
  (``verification_reasons``: NO_SPEECH, TOO_SHORT, TOO_NOISY, CLIPPED) or that cannot be decoded.

A trial is scored only when its enrolment sample enrols and its test sample is acquired; scores
are those of the production ``Scorer`` (cosine, or AS-Norm against the given cohort). FMR, FNMR,
EER and minDCF are over scored trials; the threshold table adds generalised rates over all trials
that count excluded genuine trials as rejected (ISO/IEC 19795-1 FAR/FRR).
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from biometrics.errors import AudioError, BiometricsError
from biometrics.evaluation.accuracy_report import (
    REPORT_FORMAT,
    REPORT_KIND,
    AccuracyReport,
    BootstrapRecord,
    CacheRecord,
    CalibrationRecord,
    CohortRecord,
    DatasetRecord,
    Failures,
    FnmrAtFmr,
    MixedRecord,
    MixedScoring,
    OperatingPointRecord,
    ScoringRecord,
    ThresholdRow,
    TrialCounts,
    TrialScores,
)
from biometrics.evaluation.cache import CachedAnalysis, EmbeddingCache, cache_key
from biometrics.evaluation.figures import (
    BOOTSTRAP_RESAMPLES,
    DCF_P_TARGETS,
    TABLE_FMRS,
    TARGET_FMRS,
    binomial_ci,
    failure_summary,
    operating_row,
    rate_key,
)
from biometrics.evaluation.metrics import (
    OperatingPoint,
    bootstrap_ci,
    eer_operating_point,
    equal_error_rate,
    min_dcf,
    operating_point_at_fmr,
    operating_point_at_threshold,
)
from biometrics.evaluation.trials import (
    DEFAULT_MAX_GENUINE,
    DEFAULT_MAX_IMPOSTORS,
    Trials,
    check_sampling,
    dataset_sha256,
    file_sha256,
    load_trials,
)
from biometrics.scoring.calibration import Calibration
from biometrics.scoring.operating_points import CALIBRATION_PAIR, ChannelScoring
from biometrics.scoring.operating_points import OperatingPoint as ServiceOperatingPoint
from biometrics.scoring.scorer import STATS_BLOCK, Scorer, top_k_stats
from biometrics.settings import CoreSettings
from biometrics.voice.audio.waveform import AudioChannel
from biometrics.voice.cohort import Cohort, ProgressFn
from biometrics.voice.embedding import VoiceEmbedder, require_same_model
from biometrics.voice.pipeline import COHORT_BATCH_FILES, Channel, load_waveform
from biometrics.voice.quality.gates import QualityLimits, signal_reasons, verification_reasons

MIXED = "mixed"  # the audit "channel" of wideband enrolments verified over the telephone
SCORER_SPOT_CHECKS = 64
_PAIR_CHUNK = 50_000


class AuditError(BiometricsError):
    """The audit cannot produce error rates (for instance no usable genuine or impostor trial)."""

    code = "audit_failed"


# --- analysis of every file, once ---------------------------------------------------------------


def analyse_dataset(
    embedder: VoiceEmbedder,
    paths: list[Path],
    content_sha256: list[str],
    settings: CoreSettings,
    channel: Channel,
    cache: EmbeddingCache | None = None,
    progress: ProgressFn | None = None,
) -> list[CachedAnalysis]:
    """The production analysis of each file, from the cache where it holds it; new results are cached."""
    results: list[CachedAnalysis | None] = [None] * len(paths)
    keys = [
        cache_key(h, str(channel), embedder.fingerprint, settings.max_audio_seconds, embedder.precision)
        for h in content_sha256
    ]
    pending: list[int] = []
    for i, key in enumerate(keys):
        cached = cache.get(key, embedder.fingerprint) if cache is not None else None
        if cached is None:
            pending.append(i)
        else:
            results[i] = cached
    done = len(paths) - len(pending)
    if progress is not None:
        progress(done, len(paths))
    for start in range(0, len(pending), COHORT_BATCH_FILES):
        chunk = pending[start : start + COHORT_BATCH_FILES]
        waveforms, decoded = [], []
        for i in chunk:
            try:
                waveforms.append(load_waveform(paths[i], settings, channel))
                decoded.append(i)
            except AudioError as exc:
                results[i] = CachedAnalysis(None, exc.code)
        samples = embedder.analyse(waveforms) if waveforms else []
        for i, sample in zip(decoded, samples, strict=True):
            results[i] = CachedAnalysis(sample)
        if cache is not None:
            for i in chunk:
                cache.put(keys[i], embedder.fingerprint, results[i])  # type: ignore[arg-type]
        done += len(chunk)
        if progress is not None:
            progress(done, len(paths))
    return results  # type: ignore[return-value]  # every slot is filled above


# --- failures to enrol and to acquire -------------------------------------------------------------


def _failure(analysis: CachedAnalysis, gate: Callable[..., list], limits: QualityLimits) -> list[str]:
    """Why a file cannot serve in a role (``gate``: signal_reasons to enrol, verification_reasons to test)."""
    if analysis.sample is None:
        return [str(analysis.error_code)]
    reasons = [str(r.code) for r in gate(analysis.sample.measures, limits)]
    if not reasons and analysis.sample.embedding is None:
        reasons = ["NO_EMBEDDING"]
    return reasons


# --- scores -----------------------------------------------------------------------------------------


def _unit_rows(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def trial_scores(scorer: Scorer, vectors: np.ndarray, enrol: np.ndarray, test: np.ndarray) -> np.ndarray:
    """``scorer``'s scores of many trials at once; ``vectors`` are the embeddings indexed by enrol/test.

    The same arithmetic as ``Scorer.score`` (cosine; AS-Norm with top-k cohort statistics of each
    side), computed once per file instead of once per trial. ``run_audit`` checks a sample of
    trials against ``Scorer.score`` itself.
    """
    unit = _unit_rows(vectors.astype(np.float64))
    raw = np.empty(len(enrol))
    for start in range(0, len(enrol), _PAIR_CHUNK):
        e, t = enrol[start : start + _PAIR_CHUNK], test[start : start + _PAIR_CHUNK]
        raw[start : start + _PAIR_CHUNK] = np.einsum("ij,ij->i", unit[e], unit[t])
    if scorer.cohort is None:
        return raw
    mean_e, std_e = _cohort_stats(unit, scorer.cohort, scorer.top_k)
    mean_t, std_t = _cohort_stats(unit, scorer.test_cohort, scorer.top_k)
    return 0.5 * ((raw - mean_e[enrol]) / std_e[enrol] + (raw - mean_t[test]) / std_t[test])


def _cohort_stats(unit: np.ndarray, cohort: Cohort, top_k: int) -> tuple[np.ndarray, np.ndarray]:
    """AS-Norm statistics of every vector against ``cohort``, in blocks (a row of cohort scores per vector)."""
    embeddings = cohort.embeddings.astype(np.float64)
    k = min(top_k, len(embeddings))
    mean, std = np.empty(len(unit)), np.empty(len(unit))
    for start in range(0, len(unit), STATS_BLOCK):
        block = slice(start, start + STATS_BLOCK)
        mean[block], std[block] = top_k_stats(unit[block], embeddings, k)
    return mean, std


def _scores(scorer: Scorer, embeddings: list, enrol: np.ndarray, test: np.ndarray) -> np.ndarray:
    dim = next(e.vector.shape[0] for e in embeddings if e is not None)
    vectors = np.stack([e.vector if e is not None else np.ones(dim, np.float32) for e in embeddings])
    return trial_scores(scorer, vectors, enrol, test)


def _mixed_record(
    direct: np.ndarray, twin: np.ndarray, genuine: np.ndarray, direct_scorer: Scorer, twin_scorer: Scorer
) -> MixedRecord:
    """The service's scores of telephone callers against wideband enrolments (direct), beside those against
    the enrolments' telephone twins (channel matching), each at FMR 0.001 and at its pair's default."""
    at = {}
    for name, scores, scorer in (("direct", direct, direct_scorer), ("telephone_twin", twin, twin_scorer)):
        gen, imp = scores[genuine], scores[~genuine]
        at[name] = MixedScoring(
            channels=str(scorer.channels),
            eer=equal_error_rate(gen, imp),
            fnmr_at_fmr_0_001=operating_point_at_fmr(gen, imp, 1e-3).fnmr,
            default_threshold=scorer.threshold,
            fmr_at_default=float(np.mean(imp >= scorer.threshold)),
            fnmr_at_default=float(np.mean(gen < scorer.threshold)),
        )
    return MixedRecord(direct=at["direct"], telephone_twin=at["telephone_twin"])


def _spot_check(scorer: Scorer, embeddings: list, enrol: np.ndarray, test: np.ndarray, scores: np.ndarray) -> int:
    rng = np.random.default_rng(0)
    picks = rng.choice(len(scores), size=min(SCORER_SPOT_CHECKS, len(scores)), replace=False)
    for j in picks:
        expected = scorer.score(embeddings[enrol[j]], embeddings[test[j]])
        if abs(expected - scores[j]) > 1e-4 * max(1.0, abs(expected)):
            raise AssertionError(f"batch score {scores[j]} differs from Scorer.score {expected}")
    return len(picks)


# --- the audit ----------------------------------------------------------------------------------------


def _cache_record(cache: EmbeddingCache | None, before: dict | None) -> CacheRecord | None:
    """This run's cache use: files found in the cache (their embedder call was skipped), computed, written."""
    if cache is None or before is None:
        return None
    after = cache.stats()
    return CacheRecord(directory=after["directory"], **{k: after[k] - before[k] for k in ("hits", "misses", "writes")})


def _settings_record(settings: CoreSettings) -> dict:
    names = (
        "max_audio_seconds",
        "min_verify_speech_s",
        "min_enrol_speech_s",
        "min_snr_db",
        "max_clipping_ratio",
        "vad_threshold",
        "asnorm_top_k",
        "cosine_threshold",
        "asnorm_threshold",
    )
    return {name: getattr(settings, name) for name in names}


def _file_record(path: Path | None) -> dict:
    """The file a cohort or calibration came from, and its hash: nothing when it was given as an object."""
    return {} if path is None else {"file": str(path), "file_sha256": file_sha256(path)}


def _calibration_record(calibration: Calibration, path: Path | None) -> CalibrationRecord:
    return CalibrationRecord(
        threshold=calibration.threshold,
        target_fmr=calibration.target_fmr,
        channel=calibration.channel,
        dataset_sha256=calibration.source.get("dataset_sha256"),
        **_file_record(path),
    )


def _cohort_record(cohort: Cohort, path: Path | None) -> CohortRecord:
    return CohortRecord(
        model_fingerprint=cohort.model_fingerprint,
        channel=cohort.channel,
        size=int(len(cohort.embeddings)),
        source_sha256=cohort.meta.get("source_sha256"),
        created_at=cohort.meta.get("created_at"),
        **_file_record(path),
    )


def run_audit(
    embedder: VoiceEmbedder,
    dataset: Path,
    settings: CoreSettings,
    channel: Channel | str = Channel.CLEAN,
    trials: Path | Trials | None = None,
    cohort: Cohort | Path | None = None,
    cache: EmbeddingCache | None = None,
    progress: ProgressFn | None = None,
    *,
    calibration: Calibration | Path | None = None,
    cosine: bool = False,
    max_impostors: int = DEFAULT_MAX_IMPOSTORS,
    max_genuine: int = DEFAULT_MAX_GENUINE,
    seed: int = 0,
    command: str | None = None,
    bootstrap_resamples: int = BOOTSTRAP_RESAMPLES,
) -> AccuracyReport:
    """Error rates of the production pipeline on ``dataset``, as a report (``to_dict()`` is its JSON form).

    ``trials`` is a trial-list file (or ready ``Trials``); without it every same-subject pair (at most
    ``max_genuine``) and every different-subject pair (at most ``max_impostors``) of the subject folders
    is a trial, each kind sampled with ``seed`` beyond its cap. Scores are the service's for the audit's
    pair of channels: AS-Norm over the deployment's cohorts (``cohort``, object or file, else
    ``BIOIDENT_COHORT_FILE``, else the packaged ones; ``cosine``: raw cosine), and the "configured" row
    and ``operating_point`` are at the service's threshold for that pair (the deployment's ``calibration``,
    object or file, when it fits the audit's scores; else the one set by the target FMR).
    """
    started = time.monotonic()
    mixed = str(channel) == MIXED
    # mixed: wideband enrolments, callers on the phone (each side through its own channel)
    enrol_channel = Channel.CLEAN if mixed else Channel(channel)
    test_channel = Channel.TELEPHONE if mixed else enrol_channel
    channel = MIXED if mixed else enrol_channel
    dataset = Path(dataset)
    warnings: list[str] = []
    cohort_path = None
    if isinstance(cohort, Path):
        cohort_path, cohort = cohort, Cohort.load(cohort)
    if cohort is not None:
        require_same_model(embedder.fingerprint, cohort.model_fingerprint)
        if cohort.channel != str(channel):
            warnings.append(f"the cohort was built for the {cohort.channel} channel; the audit is on {channel}")
    check_sampling(seed)
    if not isinstance(trials, Trials):
        trials = load_trials(dataset, trials, max_impostors=max_impostors, seed=seed, max_genuine=max_genuine)

    paths = [trials.path(i) for i in range(len(trials.files))]
    hashes = [file_sha256(p) for p in paths]
    cache_before = cache.stats() if cache is not None else None
    analyses = analyse_dataset(embedder, paths, hashes, settings, enrol_channel, cache, progress)
    heard = analyses if not mixed else analyse_dataset(embedder, paths, hashes, settings, test_channel, cache, progress)

    limits = QualityLimits.from_settings(settings)
    enrol_failures = {i: r for i, a in enumerate(analyses) if (r := _failure(a, signal_reasons, limits))}
    test_failures = {i: r for i, a in enumerate(heard) if (r := _failure(a, verification_reasons, limits))}
    enrol_files, test_files = np.unique(trials.enrol), np.unique(trials.test)
    fte = failure_summary(enrol_files, enrol_failures, trials.files)
    fta = failure_summary(test_files, test_failures, trials.files)
    short_of_enrolment = sum(
        1
        for i in enrol_files.tolist()
        if i not in enrol_failures and analyses[i].sample.measures.net_speech_s < limits.min_enrol_speech_s
    )

    enrol_ok = np.array([i not in enrol_failures for i in range(len(analyses))], dtype=bool)
    test_ok = np.array([i not in test_failures for i in range(len(analyses))], dtype=bool)
    scored = enrol_ok[trials.enrol] & test_ok[trials.test]
    genuine_mask = trials.genuine[scored]
    enrol, test = trials.enrol[scored], trials.test[scored]
    if genuine_mask.all() or not genuine_mask.any():
        raise AuditError("no genuine or no impostor trial is left once failures to enrol and acquire are removed")

    calibration_path = None
    if isinstance(calibration, Path):
        calibration_path, calibration = calibration, Calibration.load(calibration)
    # The service's own scoring: the deployment's cohorts (or the one given), calibration and target FMR.
    no_calibration = settings.model_copy(update={"calibration_file": None})
    if cohort is None and settings.cohort_file is None and not _has_packaged_cohorts(embedder.fingerprint):
        # A model the packaged cohorts were not made with: measure it anyway, by raw cosine.
        warnings.append("no cohort was made with this model: raw cosine scores, at BIOIDENT_COSINE_THRESHOLD")
        no_calibration = no_calibration.model_copy(
            update={"cosine_threshold": settings.cosine_threshold or Scorer().threshold}
        )
    scoring = ChannelScoring.for_model(no_calibration, embedder.fingerprint, cohort=cohort, cosine=cosine)
    if calibration is not None:
        try:
            scoring = ChannelScoring.for_model(
                no_calibration, embedder.fingerprint, cohort=cohort, calibration=calibration, cosine=cosine
            )
        except BiometricsError as exc:
            warnings.append(f"the configured calibration is not used: {exc.message}")
            calibration = None
        else:
            if calibration.channel != str(channel):
                warnings.append(
                    f"the calibration was made on the {calibration.channel} channel; the audit is on {channel}"
                )
    pair = CALIBRATION_PAIR[str(channel)]
    scorer = scoring.scorer(*pair)
    # The enrolment side's embeddings, then the test side's: a trial is (enrol, n + test).
    n = len(analyses)
    embeddings = [a.sample.embedding if a.sample is not None else None for a in (*analyses, *heard)]
    scores = _scores(scorer, embeddings, enrol, test + n)
    checked = _spot_check(scorer, embeddings, enrol, test + n, scores)
    mixed_record = None
    if mixed:  # the alternative measured against it: callers scored against the enrolment's telephone twin
        twin = scoring.scorer(AudioChannel.TELEPHONE, AudioChannel.TELEPHONE)
        twins = [a.sample.embedding if a.sample is not None else None for a in (*heard, *heard)]
        twin_scores = _scores(twin, twins, enrol, test + n)
        mixed_record = _mixed_record(scores, twin_scores, trials.genuine[scored], scorer, twin)
    genuine, impostor = scores[genuine_mask], scores[~genuine_mask]

    n_gen, n_imp = trials.n_genuine, trials.n_impostor
    excluded_gen, excluded_imp = n_gen - len(genuine), n_imp - len(impostor)
    fnmr_at: dict[str, FnmrAtFmr] = {}
    for target in TARGET_FMRS:
        point = operating_point_at_fmr(genuine, impostor, target)
        ci = bootstrap_ci(genuine, impostor, target, n_resamples=bootstrap_resamples, seed=seed)
        fnmr_at[rate_key(target)] = FnmrAtFmr(
            fnmr=point.fnmr,
            threshold=point.threshold,
            fmr=point.fmr,
            ci95=[ci.low, ci.high],
            bootstrap=BootstrapRecord(resamples=ci.resamples, seed=ci.seed, confidence=ci.confidence),
            # fewer impostor trials than 1/target: only "no impostor accepted" can be shown
            resolvable=len(impostor) * target >= 1,
        )

    def row(label: str, kind: str, point: OperatingPoint) -> ThresholdRow:
        return operating_row(label, kind, point, n_gen, n_imp, excluded_gen, excluded_imp)

    table = [row(f"FMR <= {rate_key(t)}", "fmr", operating_point_at_fmr(genuine, impostor, t)) for t in TABLE_FMRS]
    table.append(row("EER", "eer", eer_operating_point(genuine, impostor)))
    table.append(
        row("configured threshold", "configured", operating_point_at_threshold(genuine, impostor, scorer.threshold))
    )
    table.sort(key=lambda row: row.threshold)

    operating_point = _operating_point_record(scoring.points[pair], genuine, impostor)
    if len(impostor) < 1 / min(TARGET_FMRS):
        warnings.append(
            f"{len(impostor)} impostor trials cannot resolve FMR below {1 / len(impostor):.2g}; "
            "lower targets show the zero-false-match threshold"
        )
    return AccuracyReport(
        format=REPORT_FORMAT,
        kind=REPORT_KIND,
        created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        command=command,
        modality="voice",
        model_fingerprint=embedder.fingerprint,
        precision=embedder.precision,
        channel=str(channel),
        dataset_sha256=dataset_sha256(trials.files, hashes),
        dataset=DatasetRecord(path=str(dataset), files=len(trials.files), trials=trials.source),
        scoring=ScoringRecord(
            method=scorer.method,
            configured_threshold=scorer.threshold,
            top_k=scorer.top_k if scorer.cohort is not None else None,
            # the enrolment side's cohort; the packaged ones (no file) unless one was given
            cohort=_cohort_record(scorer.cohort, cohort_path) if scorer.cohort is not None else None,
            calibration=_calibration_record(calibration, calibration_path) if calibration is not None else None,
            checked_against_scorer=checked,
        ),
        settings=_settings_record(settings),
        protocol={
            "enrolment": "one sample per trial; it fails to enrol (FTE) when it cannot be decoded, has signal "
            "reasons (NO_SPEECH, TOO_NOISY, CLIPPED) or yields no embedding",
            "test": "it fails to acquire (FTA) when it cannot be decoded or the verification gates refuse it "
            "(NO_SPEECH, TOO_SHORT, TOO_NOISY, CLIPPED)",
            "scored_trials": "trials whose enrolment sample enrols and whose test sample is acquired",
            "enrol_samples_below_min_enrol_speech": short_of_enrolment,
        },
        genuine_trials=int(len(genuine)),
        impostor_trials=int(len(impostor)),
        counts=TrialCounts(
            files=len(trials.files),
            trials=int(len(trials.genuine)),
            genuine_trials=n_gen,
            impostor_trials=n_imp,
            scored_genuine_trials=int(len(genuine)),
            scored_impostor_trials=int(len(impostor)),
            excluded_genuine_trials=excluded_gen,
            excluded_impostor_trials=excluded_imp,
        ),
        fte=fte.rate,
        fta=fta.rate,
        failures=Failures(enrolment=fte, acquisition=fta),
        eer=equal_error_rate(genuine, impostor),
        min_dcf={rate_key(p): min_dcf(genuine, impostor, p) for p in DCF_P_TARGETS},
        fnmr_at_fmr=fnmr_at,
        threshold_table=table,
        scores=TrialScores(genuine=np.round(genuine, 6).tolist(), impostor=np.round(impostor, 6).tolist()),
        cache=_cache_record(cache, cache_before),
        warnings=warnings,
        elapsed_s=round(time.monotonic() - started, 2),
        operating_point=operating_point,
        mixed=mixed_record,
    )


def _has_packaged_cohorts(model_fingerprint: str) -> bool:
    from biometrics.voice import default_cohorts

    return default_cohorts.manifest()["model_fingerprint"] == model_fingerprint


def _operating_point_record(
    point: ServiceOperatingPoint, genuine: np.ndarray, impostor: np.ndarray
) -> OperatingPointRecord:
    false_matches = int(np.count_nonzero(impostor >= point.threshold))
    false_non_matches = int(np.count_nonzero(genuine < point.threshold))
    return OperatingPointRecord(
        channels=point.channels,
        method=point.method,
        threshold=point.threshold,
        source=point.source,
        target_fmr=point.target_fmr,
        cohort_impostor_trials=point.impostor_trials,
        fmr=false_matches / len(impostor),
        fmr_ci95=binomial_ci(false_matches, len(impostor)),
        fnmr=false_non_matches / len(genuine),
        fnmr_ci95=binomial_ci(false_non_matches, len(genuine)),
        resolvable_fmr=1 / len(impostor),
    )
