"""The ``bioident`` command: one job per verb."""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydantic import ValidationError

from biometrics.errors import BiometricsError
from biometrics.voice.audio import RawCodec

EXIT_INPUT_ERROR = 2
EXIT_NO_SPEECH = 1  # compare: a file holds no usable speech, so nothing was decided


def _add_audio_options(
    parser: argparse.ArgumentParser, codec_help: str = "the files are raw audio in this codec"
) -> None:
    parser.add_argument(
        "--telephone",
        action="store_true",
        help="pass the audio through a simulated 8 kHz G.711 mu-law channel",
    )
    parser.add_argument("--codec", choices=[c.value for c in RawCodec], help=codec_help)
    parser.add_argument("--rate", type=int, help="declared sample rate (required with --codec)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bioident", description="Biometric customer identification.")
    verbs = parser.add_subparsers(dest="verb", required=True)

    model = verbs.add_parser("model", help="the speaker model").add_subparsers(dest="action", required=True)
    info = model.add_parser("info", help="print the model source, file hashes and fingerprint")
    info.add_argument("--json", action="store_true")
    info.set_defaults(run=cmd_model_info)

    embed = verbs.add_parser("embed", help="quality report and speaker embedding of audio files")
    embed.add_argument("files", nargs="+", type=Path)
    embed.add_argument("--out", type=Path, help="write the embeddings to this .npz file")
    embed.add_argument("--json", action="store_true", help="JSON lines, embeddings included")
    _add_audio_options(embed)
    embed.set_defaults(run=cmd_embed)

    compare = verbs.add_parser(
        "compare",
        help="verify B against A enrolled alone",
        description="Exit status: 0 decided (accept or reject), 1 a file holds no usable speech, 2 bad input.",
    )
    compare.add_argument("a", type=Path, help="enrolment sample")
    compare.add_argument("b", type=Path, help="test sample")
    compare.add_argument("--cohort", type=Path, help="cohort file for AS-Norm (default: BIOIDENT_COHORT_FILE)")
    compare.add_argument("--threshold", type=_finite, help="decision threshold (default: from settings)")
    compare.add_argument("--calibration", type=Path, help="calibration file (default: BIOIDENT_CALIBRATION_FILE)")
    compare.add_argument("--json", action="store_true")
    _add_audio_options(compare, "the test file (B) is raw audio in this codec")
    compare.add_argument("--enrol-codec", choices=[c.value for c in RawCodec], help="the enrolment file (A) is raw")
    compare.add_argument("--enrol-rate", type=int, help="declared sample rate of A (required with --enrol-codec)")
    compare.set_defaults(run=cmd_compare)

    cohort = verbs.add_parser("cohort", help="impostor cohorts").add_subparsers(dest="action", required=True)
    build = cohort.add_parser("build", help="build a cohort file from a folder of speech")
    build.add_argument("folder", type=Path)
    build.add_argument("--out", type=Path, required=True)
    build.add_argument("--channel", choices=["clean", "telephone"], default="clean")
    build.add_argument("--max-speech-s", type=_speech_seconds, help="use at most this many seconds of speech per file")
    build.set_defaults(run=cmd_cohort_build)
    show = cohort.add_parser("info", help="describe a cohort file")
    show.add_argument("file", type=Path)
    show.set_defaults(run=cmd_cohort_info)
    return parser


def _finite(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = float("nan")
    if not math.isfinite(number):
        raise argparse.ArgumentTypeError(f"not a finite number: {value!r}")
    return number


def _speech_seconds(value: str) -> float:
    from biometrics.voice.quality.gates import NO_SPEECH_BELOW_S

    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {value!r}") from None
    if not NO_SPEECH_BELOW_S <= seconds < float("inf"):
        raise argparse.ArgumentTypeError(f"must be at least {NO_SPEECH_BELOW_S} s and finite")
    return seconds


def _settings():  # noqa: ANN202
    from biometrics.settings import CoreSettings

    return CoreSettings()


def _embedder(settings):  # noqa: ANN001, ANN202
    from biometrics.voice.embedding import load_voice_embedder

    return load_voice_embedder(settings)


def _raw_codec(codec: str | None, rate: int | None, flag: str = "--codec") -> RawCodec | None:
    if codec is None:
        return None  # WAV/FLAC; a --rate given for them is checked against the header
    if rate is None:
        rate_flag = flag.replace("codec", "rate")
        raise BiometricsError(f"{flag} needs {rate_flag} (the sample rate of the raw audio)")
    return RawCodec(codec)


def _load(  # noqa: ANN202
    args: argparse.Namespace,
    settings,
    paths: Sequence[Path],
    codec: str | None,
    rate: int | None,
    flag: str = "--codec",
):
    """The files as waveforms, raw in ``codec`` at ``rate`` or WAV/FLAC, through the channel asked for."""
    from biometrics.voice.pipeline import Channel, load_waveform

    channel = Channel.TELEPHONE if args.telephone else Channel.CLEAN
    raw = _raw_codec(codec, rate, flag)
    return [load_waveform(p, settings, channel, raw_codec=raw, declared_rate=rate) for p in paths]


def cmd_model_info(args: argparse.Namespace) -> int:
    from biometrics.voice.model.precision import NATIVE_BF16_FLAGS, cpu_flags
    from biometrics.voice.quality.vad import SILERO_VERSION

    settings = _settings()
    embedder = _embedder(settings)
    weights = embedder.encoder.weights
    info = {
        "model": "speechbrain/spkrec-ecapa-voxceleb (ECAPA-TDNN)",
        "source": weights.source,
        "location": weights.location,
        "files": {name: {"path": str(path), "sha256": weights.sha256[name]} for name, path in weights.files.items()},
        "vad": {"model": f"silero-vad {SILERO_VERSION} (TorchScript)", "sha256": embedder.vad.model_sha256},
        "fingerprint": embedder.fingerprint,
        # Recorded alongside the fingerprint, not in it: embeddings of either precision are interchangeable.
        "precision": {
            "in_use": embedder.precision,
            "setting": settings.precision,
            "native_bf16_flags": sorted(NATIVE_BF16_FLAGS & cpu_flags()),
            "kernels": embedder.encoder.kernels,
        },
    }
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"model        {info['model']}")
    print(f"source       {weights.source}: {weights.location}")
    for name, entry in info["files"].items():
        print(f"file         {name}  sha256 {entry['sha256']}")
    print(f"vad          {info['vad']['model']}  sha256 {embedder.vad.model_sha256}")
    print(f"fingerprint  {embedder.fingerprint}")
    native = ", ".join(info["precision"]["native_bf16_flags"]) or "none"
    print(
        f"precision    {embedder.precision} (BIOIDENT_PRECISION={settings.precision}; native bf16: {native}; "
        f"kernels: {embedder.encoder.kernels})"
    )
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    from biometrics.voice.quality.gates import QualityLimits, signal_reasons

    settings = _settings()
    embedder = _embedder(settings)
    samples = embedder.analyse(_load(args, settings, args.files, args.codec, args.rate))
    limits = QualityLimits.from_settings(settings)
    vectors = {}
    for path, sample in zip(args.files, samples, strict=True):
        reasons = [r.as_dict() for r in signal_reasons(sample.measures, limits)]
        row = {
            "file": str(path),
            **sample.measures.as_dict(),
            "fingerprint": embedder.fingerprint,
            "reasons": reasons,
        }
        if sample.embedding is not None:
            vectors[str(path)] = sample.embedding.vector
        if args.json:
            row["embedding"] = (
                None if sample.embedding is None else [round(float(x), 7) for x in sample.embedding.vector]
            )
            print(json.dumps(row))
        else:
            codes = ",".join(r["code"] for r in reasons) or "ok"
            print(f"{path}  speech {sample.measures.net_speech_s:.2f}s  snr {sample.measures.snr_db:.1f} dB  {codes}")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        np.savez(
            args.out,
            files=np.array(list(vectors)),
            embeddings=np.array(list(vectors.values())),
            fingerprint=np.array(embedder.fingerprint),
        )
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from biometrics.scoring.calibration import Calibration
    from biometrics.scoring.operating_points import ChannelScoring
    from biometrics.voice.cohort import Cohort
    from biometrics.voice.quality.gates import QualityLimits
    from biometrics.voice.verification import VoiceVerifier

    settings = _settings()
    channel = "telephone" if args.telephone else "clean"
    cohort = Cohort.load(args.cohort) if args.cohort is not None else None
    calibration = Calibration.load(args.calibration) if args.calibration is not None else None
    embedder = _embedder(settings)
    scoring = ChannelScoring.for_model(settings, embedder.fingerprint, cohort=cohort, calibration=calibration)
    if args.threshold is not None:  # the threshold of the method in force, for every pair of channels
        override = "cosine_threshold" if scoring.method == "cosine" else "asnorm_threshold"
        settings = settings.model_copy(update={override: args.threshold})
        scoring = ChannelScoring.for_model(settings, embedder.fingerprint, cohort=cohort, calibration=calibration)
    verifier = VoiceVerifier(embedder, scoring, QualityLimits.from_settings(settings))
    (enrol_audio,) = _load(args, settings, [args.a], args.enrol_codec, args.enrol_rate, "--enrol-codec")
    (test_audio,) = _load(args, settings, [args.b], args.codec, args.rate)
    compared = verifier.verify(enrol_audio, test_audio)
    enrol, test, verdict = compared.reference.sample, compared.probe.sample, compared.verdict
    reasons = [("a", r) for r in compared.reference.reasons] + [("b", r) for r in compared.probe.reasons]
    result = {
        "decision": str(verdict.decision),
        "score": None if verdict.score is None else round(verdict.score, 6),
        "threshold": verdict.threshold,
        "method": verdict.method,
        "llr": None if verdict.llr is None else round(verdict.llr, 4),
        "net_speech_s": round(test.measures.net_speech_s, 3),
        "enrol_net_speech_s": round(enrol.measures.net_speech_s, 3),
        "reasons": [{"sample": side, **r.as_dict()} for side, r in reasons],
        "model_fingerprint": embedder.fingerprint,
        "channel": channel,
        "channels": verdict.channels,
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        score = "n/a" if verdict.score is None else f"{verdict.score:.4f}"
        print(f"{result['decision']}  score {score} ({verdict.method}, threshold {verdict.threshold})")
        for item in result["reasons"]:
            print(f"  {item['sample']}: {item['code']} measured {item['measured']} limit {item['limit']}")
    return EXIT_NO_SPEECH if enrol.embedding is None or test.embedding is None else 0


def cmd_cohort_build(args: argparse.Namespace) -> int:
    from biometrics.voice.pipeline import Channel, build_cohort

    settings = _settings()
    embedder = _embedder(settings)

    def progress(done: int, total: int) -> None:
        print(f"\rembedding cohort {done}/{total}", end="", file=sys.stderr, flush=True)

    cohort = build_cohort(embedder, args.folder, settings, Channel(args.channel), args.max_speech_s, progress)
    print(file=sys.stderr)
    cohort.save(args.out)
    print(
        f"cohort of {len(cohort.embeddings)} written to {args.out} "
        f"({len(cohort.meta['skipped'])} skipped, channel {cohort.channel})"
    )
    return 0


def cmd_cohort_info(args: argparse.Namespace) -> int:
    from biometrics.voice.cohort import Cohort

    cohort = Cohort.load(args.file)
    print(json.dumps(cohort.meta, indent=2))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except BiometricsError as exc:
        print(f"bioident: error: {exc.message}", file=sys.stderr)
        return EXIT_INPUT_ERROR
    except OSError as exc:
        print(f"bioident: error: cannot read {exc.filename or 'input'}: {exc.strerror}", file=sys.stderr)
        return EXIT_INPUT_ERROR
    except ValidationError as exc:  # a BIOIDENT_* setting out of range; the message names it, not its value
        print_settings_error(exc)
        return EXIT_INPUT_ERROR


def print_settings_error(exc: ValidationError) -> None:
    """One line per bad ``BIOIDENT_*`` setting: its name and what is wrong, never the value given."""
    for error in exc.errors():
        name = "BIOIDENT_" + "_".join(str(part) for part in error["loc"]).upper()
        print(f"bioident: error: {name}: {error['msg']}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
