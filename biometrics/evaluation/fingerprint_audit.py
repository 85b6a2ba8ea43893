"""Accuracy audit of the fingerprint pipeline on a labelled set of impressions.

The dataset is a folder with one sub-folder per finger holding its impressions, or a flat folder
named the FVC way, ``<finger>_<impression>.<ext>``. Impressions are images (TIFF, PNG, BMP) or, with
``records="iso"`` (or ``"ansi"``), finger-minutiae records with the same stem (``.iso`` / ``.ansi``),
to audit the matcher on another extractor's minutiae.

Trials follow the FVC protocol unless a trial list is given: genuine trials are all pairs of
impressions of a finger, impostor trials the first impressions of every pair of different fingers
(each a seeded sample when there are more than its cap, as for voice); each trial is one impression
against one impression. Each file goes through the production path once (decode, extraction,
quality gates, template): FTE is the share of enrolment-side files that give no template, FTA the
share of test-side ones (the same gates at both ends). Scores are
``biometrics.fingerprint.matcher.compare``; the report is the voice audit's (same figures, same HTML).
"""

from __future__ import annotations

import datetime as dt
import re
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from biometrics.errors import BiometricsError
from biometrics.evaluation.accuracy_report import (
    REPORT_FORMAT,
    REPORT_KIND,
    AccuracyReport,
    BootstrapRecord,
    DatasetRecord,
    Failures,
    FnmrAtFmr,
    OperatingPointRecord,
    ScoringRecord,
    ThresholdRow,
    TrialCounts,
    TrialScores,
)
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
    DatasetError,
    Trials,
    check_sampling,
    dataset_sha256,
    file_sha256,
    group_pairs,
    trials_from_list,
)
from biometrics.fingerprint.capture import Capture, analyse_capture, capture_from_record
from biometrics.fingerprint.images import decode_image
from biometrics.fingerprint.matcher import compare, default_threshold
from biometrics.fingerprint.operating_points import impostor_pairs
from biometrics.fingerprint.similarity import SCORE_VERSION
from biometrics.fingerprint.templates import MATCHER_NAME
from biometrics.settings import CoreSettings

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".bmp")
RECORD_SUFFIX = {"iso": ".iso", "ansi": ".ansi"}
SCORING_METHOD = f"{MATCHER_NAME}/score-{SCORE_VERSION}"  # what a report's scores and threshold are on
_FLAT_NAME = re.compile(r"^(?P<finger>.+)_(?P<impression>\d+)$")

Analyse = Callable[[Path], Capture]


class FingerprintAuditError(BiometricsError):
    code = "audit_failed"


def _natural(name: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def finger_files(root: Path, records: str | None = None) -> dict[str, list[str]]:
    """Relative paths of each finger's impressions, in impression order (sub-folders, or FVC flat names)."""
    if not root.is_dir():
        raise DatasetError(f"{root} is not a directory")
    suffixes = (RECORD_SUFFIX[records],) if records else IMAGE_SUFFIXES
    kind = f"{records.upper()} records ({suffixes[0]})" if records else "images (TIFF, PNG, BMP)"
    fingers: dict[str, list[str]] = {}
    folders = sorted(
        (p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: _natural(p.name)
    )
    for folder in folders:
        files = sorted(
            (p.relative_to(root).as_posix() for p in folder.rglob("*") if p.suffix.lower() in suffixes and p.is_file()),
            key=_natural,
        )
        if files:
            fingers[folder.name] = files
    if not fingers:  # the flat FVC naming
        for path in sorted(root.iterdir(), key=lambda p: _natural(p.name)):
            match = _FLAT_NAME.match(path.stem)
            if path.is_file() and path.suffix.lower() in suffixes and match:
                fingers.setdefault(match["finger"], []).append(path.name)
        for files in fingers.values():
            files.sort(key=lambda name: int(_FLAT_NAME.match(Path(name).stem)["impression"]))
    if len(fingers) < 2:
        raise DatasetError(
            f"{root} needs at least two fingers of {kind}: one sub-folder per finger, "
            "or files named <finger>_<impression>"
        )
    if not any(len(files) >= 2 for files in fingers.values()):
        raise DatasetError(f"no finger in {root} has two impressions, so there is no genuine trial")
    return fingers


def fvc_trials(
    root: Path,
    records: str | None = None,
    *,
    max_genuine: int = DEFAULT_MAX_GENUINE,
    max_impostors: int = DEFAULT_MAX_IMPOSTORS,
    seed: int = 0,
) -> Trials:
    """FVC protocol: all pairs of impressions of a finger; first impressions of different fingers.

    More pairs of either kind than its cap: a sample of that many, drawn with ``seed``.
    """
    check_sampling(seed, max_impostors=max_impostors, max_genuine=max_genuine)
    fingers = finger_files(root, records)
    files = [f for names in fingers.values() for f in names]
    sizes = np.array([len(names) for names in fingers.values()], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    impressions = [np.arange(start, start + size) for start, size in zip(starts, sizes, strict=True)]
    g_enrol, g_test, n_genuine = group_pairs(impressions, max_genuine, np.random.default_rng([1, seed]))
    i_enrol, i_test, n_impostor = group_pairs([starts], max_impostors, np.random.default_rng(seed))
    return Trials(
        root=root,
        files=tuple(files),
        enrol=np.concatenate([g_enrol, i_enrol]).astype(np.int64),
        test=np.concatenate([g_test, i_test]).astype(np.int64),
        genuine=np.concatenate([np.ones(len(g_enrol), bool), np.zeros(len(i_enrol), bool)]),
        source={
            "kind": "fvc",
            "fingers": len(fingers),
            "records": records or "none",
            "genuine_pairs_available": n_genuine,
            "genuine_sampled": n_genuine > max_genuine,
            "max_genuine": max_genuine,
            "impostor_pairs_available": n_impostor,
            "impostors_sampled": n_impostor > max_impostors,
            "max_impostors": max_impostors,
            "seed": seed,
        },
    )


def production_analyse(settings: CoreSettings, records: str | None = None) -> Analyse:
    """The service's path from a file to a capture: image decoding and extraction, or a record reader."""

    def analyse(path: Path) -> Capture:
        data = path.read_bytes()
        if records:
            return capture_from_record(data, records, settings=settings)  # type: ignore[arg-type]
        return analyse_capture(decode_image(data, settings=settings), settings=settings)

    return analyse


def _failure(path: Path, analyse: Analyse) -> tuple[Capture | None, list[str]]:
    try:
        capture = analyse(path)
    except BiometricsError as exc:
        return None, [exc.code]
    return capture, [r.code for r in capture.reasons]


def run_fingerprint_audit(
    dataset: Path,
    settings: CoreSettings,
    *,
    records: str | None = None,
    trials: Path | Trials | None = None,
    analyse: Analyse | None = None,
    seed: int = 0,
    max_genuine: int = DEFAULT_MAX_GENUINE,
    max_impostors: int = DEFAULT_MAX_IMPOSTORS,
    command: str | None = None,
    bootstrap_resamples: int = BOOTSTRAP_RESAMPLES,
) -> AccuracyReport:
    """Error rates of the fingerprint pipeline on ``dataset``, as the voice audit's report.

    ``analyse`` turns a file into a capture (default: the production path); tests pass a cached one.
    ``seed`` draws the trials when there are more pairs than ``max_genuine`` / ``max_impostors``, and the
    bootstrap.
    """
    started = time.monotonic()
    dataset = Path(dataset)
    if records is not None and records not in RECORD_SUFFIX:
        raise DatasetError("records must be 'iso' or 'ansi'")
    check_sampling(seed)
    if not isinstance(trials, Trials):
        if trials is not None:
            trials = trials_from_list(dataset, trials)
        else:
            trials = fvc_trials(dataset, records, max_genuine=max_genuine, max_impostors=max_impostors, seed=seed)
    analyse = analyse or production_analyse(settings, records)
    paths = [trials.path(i) for i in range(len(trials.files))]
    hashes = [file_sha256(p) for p in paths]
    outcomes = [_failure(p, analyse) for p in paths]
    failures = {i: reasons for i, (_, reasons) in enumerate(outcomes) if reasons}
    enrol_files, test_files = np.unique(trials.enrol), np.unique(trials.test)
    fte = failure_summary(enrol_files, failures, trials.files)
    fta = failure_summary(test_files, failures, trials.files)
    ok = np.array([i not in failures for i in range(len(paths))], bool)
    scored = ok[trials.enrol] & ok[trials.test]
    if trials.genuine[scored].all() or not trials.genuine[scored].any():
        raise FingerprintAuditError(
            "no genuine or no impostor trial is left once failures to enrol and acquire are removed"
        )
    templates = [c.template if c is not None else None for c, _ in outcomes]
    scores = np.array(
        [compare(templates[t], templates[e]) for e, t in zip(trials.enrol[scored], trials.test[scored], strict=True)]
    )
    genuine_mask = trials.genuine[scored]
    genuine, impostor = scores[genuine_mask], scores[~genuine_mask]
    fingerprint = next(t.fingerprint for t in templates if t is not None)
    threshold = default_threshold(settings.target_fmr, fingerprint)
    warnings = []
    if records:
        warnings.append(
            "scores of another extractor's minutiae: the configured threshold was set on our extractor's impostors"
        )

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
            resolvable=len(impostor) * target >= 1,
        )

    def row(label: str, kind: str, point: OperatingPoint) -> ThresholdRow:
        return operating_row(label, kind, point, n_gen, n_imp, excluded_gen, excluded_imp)

    table = [row(f"FMR <= {rate_key(t)}", "fmr", operating_point_at_fmr(genuine, impostor, t)) for t in TABLE_FMRS]
    table.append(row("EER", "eer", eer_operating_point(genuine, impostor)))
    table.append(row("configured threshold", "configured", operating_point_at_threshold(genuine, impostor, threshold)))
    table.sort(key=lambda r: r.threshold)
    if len(impostor) < 1 / min(TARGET_FMRS):
        warnings.append(
            f"{len(impostor)} impostor trials cannot resolve FMR below {1 / len(impostor):.2g}; "
            "lower targets show the zero-false-match threshold"
        )
    false_matches = int(np.count_nonzero(impostor >= threshold))
    false_non_matches = int(np.count_nonzero(genuine < threshold))
    channel = f"{records}-record" if records else "image"
    return AccuracyReport(
        format=REPORT_FORMAT,
        kind=REPORT_KIND,
        created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        command=command,
        modality="fingerprint",
        model_fingerprint=fingerprint,
        channel=channel,
        dataset_sha256=dataset_sha256(trials.files, hashes),
        dataset=DatasetRecord(path=str(dataset), files=len(trials.files), trials=trials.source),
        scoring=ScoringRecord(
            method=SCORING_METHOD, configured_threshold=threshold, top_k=None, cohort=None, checked_against_scorer=0
        ),
        settings={
            name: getattr(settings, name)
            for name in (
                "fingerprint_min_minutiae",
                "fingerprint_min_nfiq2",
                "fingerprint_min_area_mm2",
                "fingerprint_max_image_side",
                "fingerprint_max_pixels",
                "fingerprint_extractor",
                "target_fmr",
            )
        },
        protocol={
            "trials": "FVC: genuine = all pairs of impressions of a finger; impostor = first impressions of "
            "different fingers; one impression against one impression"
            if trials.source.get("kind") == "fvc"
            else "trial list",
            "enrolment": "an impression fails to enrol (FTE) when it cannot be decoded or read, or the capture "
            "gates refuse it (too_few_minutiae, low_quality, small_print_area)",
            "test": "an impression fails to acquire (FTA) on the same grounds",
            "scored_trials": "trials whose two impressions both give a template",
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
        cache=None,
        warnings=warnings,
        elapsed_s=round(time.monotonic() - started, 2),
        operating_point=OperatingPointRecord(
            channels=f"{channel}/{channel}",
            method=SCORING_METHOD,
            threshold=threshold,
            source="impostor-distribution",
            target_fmr=settings.target_fmr,
            cohort_impostor_trials=impostor_pairs(settings.target_fmr, fingerprint),
            fmr=false_matches / len(impostor),
            fmr_ci95=binomial_ci(false_matches, len(impostor)),
            fnmr=false_non_matches / len(genuine),
            fnmr_ci95=binomial_ci(false_non_matches, len(genuine)),
            resolvable_fmr=1 / len(impostor),
        ),
    )
