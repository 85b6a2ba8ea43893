"""``bioident audit run`` and ``bioident audit calibrate``: accuracy audits of the deployed pipeline.

``add_audit_commands`` adds both verbs to an ``audit`` sub-parser; each sets ``run`` to a handler
that takes the parsed arguments and returns an exit code, and raises ``BiometricsError`` on bad input.
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from biometrics.errors import BiometricsError

if TYPE_CHECKING:
    from biometrics.evaluation.accuracy_report import AccuracyReport

DEFAULT_TARGET_FMR = 1e-3
CALIBRATION_FILE = "calibration.json"


def _whole_number(text: str, least: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"must be at least {least}, not {value}")
    return value


def _seed(text: str) -> int:
    return _whole_number(text, 0)  # numpy's generators take no negative seed


def _cap(text: str) -> int:
    return _whole_number(text, 1)


def add_audit_commands(audit: argparse._SubParsersAction) -> None:
    from biometrics.evaluation.trials import DEFAULT_MAX_GENUINE, DEFAULT_MAX_IMPOSTORS

    run = audit.add_parser(
        "run",
        help="measure EER, minDCF, FNMR at fixed FMRs, FTE and FTA of the production pipeline on a dataset",
        description="Audit accuracy on a folder with one sub-folder of WAV/FLAC files per subject; "
        "writes OUT/report.json and OUT/report.html.",
    )
    run.add_argument(
        "--dataset",
        type=Path,
        required=True,
        help="folder with one sub-folder per subject (fingerprint: per finger, or FVC names <finger>_<impression>)",
    )
    run.add_argument("--out", type=Path, required=True, help="folder for report.json and report.html")
    run.add_argument("--trials", type=Path, help="trial list: 'label enrol test' lines, paths relative to --dataset")
    run.add_argument(
        "--channel",
        choices=["clean", "telephone", "mixed"],
        default="clean",
        help="mixed: wideband enrolments, telephone probes (channel matching against direct scoring)",
    )
    run.add_argument("--modality", choices=["voice", "fingerprint"], default="voice")
    run.add_argument(
        "--records",
        choices=["iso", "ansi"],
        help="fingerprint only: audit the matcher on the .iso (ISO 19794-2) or .ansi (ANSI 378) minutiae "
        "records with the same stem as each image, instead of extracting from the images",
    )
    scoring = run.add_mutually_exclusive_group()
    scoring.add_argument(
        "--cohort", type=Path, help="cohort file for AS-Norm (default: BIOIDENT_COHORT_FILE, else the packaged ones)"
    )
    scoring.add_argument("--no-cohort", action="store_true", help="score with plain cosine (no normalisation)")
    cache = run.add_mutually_exclusive_group()
    cache.add_argument("--cache-dir", type=Path, help="embedding cache (default: ~/.cache/bioident/embeddings)")
    cache.add_argument("--no-cache", action="store_true", help="do not read or write the embedding cache")
    run.add_argument(
        "--max-impostors",
        type=_cap,
        default=DEFAULT_MAX_IMPOSTORS,
        help="without --trials: at most this many different-subject pairs, a seeded sample when there are more",
    )
    run.add_argument(
        "--max-genuine",
        type=_cap,
        default=DEFAULT_MAX_GENUINE,
        help="without --trials: at most this many same-subject pairs, a seeded sample when there are more",
    )
    run.add_argument(
        "--seed",
        type=_seed,
        default=0,
        help="seed (0 or more) for sampling genuine and impostor pairs, and the bootstrap",
    )
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    run.set_defaults(run=cmd_audit_run)

    calibrate = audit.add_parser(
        "calibrate",
        help="fit score-to-LLR calibration and the threshold for a target FMR from an audit report",
    )
    calibrate.add_argument("--report", type=Path, required=True, help="audit output folder or its report.json")
    calibrate.add_argument("--target-fmr", type=float, default=DEFAULT_TARGET_FMR)
    calibrate.add_argument("--prior", type=float, default=0.5, help="target prior of the logistic fit")
    calibrate.add_argument(
        "--out", type=Path, help=f"calibration file (default: next to the report, {CALIBRATION_FILE})"
    )
    calibrate.add_argument(
        "--allow-unresolved",
        action="store_true",
        help="write the calibration even when the audit has too few impostor trials to show the target FMR",
    )
    calibrate.set_defaults(run=cmd_audit_calibrate)


def _settings():  # noqa: ANN202
    from biometrics.settings import CoreSettings

    return CoreSettings()


def _embedder(settings):  # noqa: ANN001, ANN202
    from biometrics.voice.embedding import load_voice_embedder

    return load_voice_embedder(settings)


def canonical_command(args: argparse.Namespace, cohort: Path | None) -> str:
    """The command that repeats this audit, every choice spelled out."""
    words = ["bioident", "audit", "run", "--dataset", str(args.dataset), "--out", str(args.out)]
    if args.trials is not None:
        words += ["--trials", str(args.trials)]
    words += ["--channel", args.channel, "--modality", args.modality]
    if cohort is not None:
        words += ["--cohort", str(cohort)]
    elif args.no_cohort:
        words += ["--no-cohort"]
    words += _sampling_words(args)
    return shlex.join(words)


def _sampling_words(args: argparse.Namespace) -> list[str]:
    if args.trials is not None:
        return ["--seed", str(args.seed)]
    return [
        "--max-genuine",
        str(args.max_genuine),
        "--max-impostors",
        str(args.max_impostors),
        "--seed",
        str(args.seed),
    ]


class _ProgressBar:
    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bar = None

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc="analysing files", unit="file", file=sys.stderr)
        self.bar.n = done
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def cmd_fingerprint_audit_run(args: argparse.Namespace) -> int:
    from biometrics.evaluation.fingerprint_audit import run_fingerprint_audit
    from biometrics.evaluation.report import write_report

    if args.channel != "clean" or args.cohort is not None or args.no_cohort:
        raise BiometricsError("--channel, --cohort and --no-cohort are voice options")
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BiometricsError(f"cannot write the report to {args.out}: {exc.strerror}") from None
    words = ["bioident", "audit", "run", "--modality", "fingerprint", "--dataset", str(args.dataset)]
    words += ["--out", str(args.out)]
    if args.records:
        words += ["--records", args.records]
    if args.trials is not None:
        words += ["--trials", str(args.trials)]
    words += _sampling_words(args)
    report = run_fingerprint_audit(
        args.dataset,
        _settings(),
        records=args.records,
        trials=args.trials,
        seed=args.seed,
        max_genuine=args.max_genuine,
        max_impostors=args.max_impostors,
        command=shlex.join(words),
    )
    json_path, html_path = write_report(report, args.out)
    for warning in report.warnings:
        print(f"bioident: warning: {warning}", file=sys.stderr)
    _print_summary(report)
    print(f"report: {json_path} and {html_path}")
    return 0


def cmd_audit_run(args: argparse.Namespace) -> int:
    from biometrics.evaluation.audit import run_audit

    if args.modality == "fingerprint":
        return cmd_fingerprint_audit_run(args)
    if args.records:
        raise BiometricsError("--records is a fingerprint option (with --modality fingerprint)")
    from biometrics.evaluation.cache import DEFAULT_CACHE_DIR, EmbeddingCache
    from biometrics.evaluation.report import write_report

    try:  # before the audit, not after it: an unusable --out must not cost a whole run
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BiometricsError(f"cannot write the report to {args.out}: {exc.strerror}") from None
    settings = _settings()
    cohort = None if args.no_cohort else (args.cohort or settings.cohort_file)
    cache = None if args.no_cache else EmbeddingCache(args.cache_dir or DEFAULT_CACHE_DIR)
    embedder = _embedder(settings)
    progress = _ProgressBar(enabled=not args.quiet)
    try:
        report = run_audit(
            embedder,
            args.dataset,
            settings,
            args.channel,
            trials=args.trials,
            cohort=cohort,
            cache=cache,
            progress=progress,
            calibration=settings.calibration_file,
            cosine=args.no_cohort,
            max_impostors=args.max_impostors,
            max_genuine=args.max_genuine,
            seed=args.seed,
            command=canonical_command(args, cohort),
        )
    finally:
        progress.close()
    json_path, html_path = write_report(report, args.out)
    for warning in report.warnings:
        print(f"bioident: warning: {warning}", file=sys.stderr)
    _print_summary(report)
    print(f"report: {json_path} and {html_path}")
    return 0


def _print_summary(report: AccuracyReport) -> None:
    counts = report.counts
    print(
        f"{report.scoring.method} scores, {report.channel} channel, "
        f"{counts.scored_genuine_trials} genuine / {counts.scored_impostor_trials} impostor trials"
    )
    trials = report.dataset.trials  # how the trials were made: a sample says so, and of how many pairs
    for kind, made, flag, pairs in (
        ("genuine", counts.genuine_trials, "genuine_sampled", "same"),
        ("impostor", counts.impostor_trials, "impostors_sampled", "different"),
    ):
        if trials.get(flag):
            available = trials[f"{kind}_pairs_available"]
            print(f"{kind} trials: {made} sampled of {available} {pairs}-subject pairs (seed {trials['seed']})")
    print(f"EER {100 * report.eer:.2f}%   FTE {100 * report.fte:.2f}%   FTA {100 * report.fta:.2f}%")
    for p, value in report.min_dcf.items():
        print(f"minDCF(p_target={p})  {value:.4f}")
    print(f"{'target FMR':>10}  {'threshold':>10}  {'FNMR':>7}  95% CI")
    for target, v in report.fnmr_at_fmr.items():
        mark = "" if v.resolvable else "  (too few impostor trials to resolve)"
        print(
            f"{target:>10}  {v.threshold:>10.4f}  {100 * v.fnmr:>6.2f}%  "
            f"{100 * v.ci95[0]:.2f}-{100 * v.ci95[1]:.2f}%{mark}"
        )


def _check_calibration_out(out: Path, report_path: Path) -> None:
    """Refuses to write the calibration over the report it comes from, over a folder, or over any existing
    file that is not a calibration (a calibration is replaced: that is calibrating again)."""
    import json

    from biometrics.scoring.calibration import CALIBRATION_KIND, CalibrationError

    if out.is_dir():
        raise CalibrationError(f"--out {out} is a folder; name the calibration file, e.g. {out / CALIBRATION_FILE}")
    if not out.exists():
        return
    if report_path.exists() and out.samefile(report_path):  # the same file by any path or link
        raise CalibrationError(f"--out {out} is the audit report itself; write the calibration to another file")
    kind = None
    if out.is_file() and out.stat().st_size <= 1 << 20:  # a calibration is a small file; not a device or a FIFO
        try:
            kind = json.loads(out.read_text(encoding="utf-8")).get("kind")
        except (OSError, UnicodeDecodeError, ValueError, AttributeError):
            kind = None
    if kind != CALIBRATION_KIND:
        raise CalibrationError(
            f"--out {out} exists and is not a calibration file; it is not overwritten: choose another --out"
        )


def cmd_audit_calibrate(args: argparse.Namespace) -> int:
    from biometrics.evaluation.accuracy_report import ReportError
    from biometrics.evaluation.calibration_fit import calibrate
    from biometrics.evaluation.report import REPORT_JSON, load_report
    from biometrics.scoring.calibration import CalibrationError

    report_path = args.report / REPORT_JSON if args.report.is_dir() else args.report
    out = args.out or report_path.parent / CALIBRATION_FILE
    _check_calibration_out(out, report_path)
    try:
        report = load_report(report_path)
    except FileNotFoundError:
        raise CalibrationError(f"audit report {report_path} not found") from None
    except (ValueError, ReportError) as exc:
        raise CalibrationError(f"{report_path} is not an audit report: {exc}") from None
    calibration = calibrate(report, args.target_fmr, prior=args.prior, report_path=report_path)
    source = calibration.source
    if not source["resolvable"] and not args.allow_unresolved:
        # Its threshold would only say that none of these impostors passed: the service would claim a false-match
        # rate nothing measured.
        raise CalibrationError(
            f"{source['impostor_trials']} impostor trials cannot show FMR {calibration.target_fmr:g} (that needs at "
            f"least {math.ceil(1 / calibration.target_fmr)}): audit more impostor pairs ('audit run "
            "--max-impostors'), choose a larger --target-fmr, or pass --allow-unresolved to write a threshold that "
            "only shows that no impostor of this audit passed"
        )
    if calibration.method == "cosine" and not -1 <= calibration.threshold <= 1:  # the service would refuse it
        raise CalibrationError(
            f"no cosine threshold meets FMR {calibration.target_fmr:g} on this audit: impostor trials scored a "
            "perfect cosine (the same recording filed under two subjects?); nothing written"
        )
    calibration.save(out)
    print(
        f"threshold {calibration.threshold:.4f} ({calibration.method}) for FMR <= {calibration.target_fmr:g}: "
        f"measured FMR {100 * source['fmr_at_threshold']:.3f}%, FNMR {100 * source['fnmr_at_threshold']:.2f}% "
        f"on {source['impostor_trials']} impostor / {source['genuine_trials']} genuine trials"
    )
    print(
        f"llr = {calibration.a:.4f} * score {calibration.b:+.4f}   "
        f"(llr at threshold {calibration.llr(calibration.threshold):.2f})"
    )
    if not source["resolvable"]:
        print(
            f"bioident: warning: {source['impostor_trials']} impostor trials cannot show "
            f"FMR {calibration.target_fmr:g}; "
            "the threshold only shows that no impostor passed",
            file=sys.stderr,
        )
    print(f"calibration written to {out}")
    return 0
