"""bf16 against fp32 on all the shared speech: embeddings, accuracy audits, and where a verification's time goes.

Run from the repository root::

    .venv/bin/python -m benchmarks.precision_fidelity [--out PATH] [--librispeech DIR] [--emulated-bf16]

1. Every shared LibriSpeech utterance (test-other and the cohort: 351 files) through the production
   pipeline (decoding, VAD, front end, model) on the clean channel, and test-other through the telephone
   channel as well, once with fp32 products and once with bf16: the cosine of each pair of embeddings
   (target: every one >= 0.9999).
2. The accuracy audit (``bioident audit run``) on test-other, clean and telephone, in each precision:
   the EER difference (target: within 0.05 percentage points) and the share of trials decided alike at
   the service's default operating point (target: at least 99.9 %).
3. The time of each stage of an embedding over test-other in each precision, one utterance at a time as
   a verification runs it: VAD with the quality measures, the filterbank front end, the model.

It takes minutes, so it is a script, not a test: ``tests/test_precision.py`` checks a subset in the suite.
Results go to a table on stdout and to JSON (default ``benchmarks/results/precision_fidelity.json``).
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import numpy as np

from benchmarks.common import RESULTS_DIR, TEST_OTHER, write_results
from benchmarks.host import cpu_model
from biometrics.settings import CoreSettings
from biometrics.torch_thread import run_on_torch_thread
from biometrics.voice.embedding import VoiceEmbedder, load_voice_embedder
from biometrics.voice.model.ecapa import SpeakerEncoder
from biometrics.voice.model.precision import NATIVE_BF16_FLAGS, cpu_flags

DEFAULT_OUT = RESULTS_DIR / "precision_fidelity.json"
TARGET_MIN_COSINE = 0.9999
TARGET_EER_PP = 0.05
TARGET_SAME_DECISIONS = 0.999


def embedders(settings: CoreSettings) -> dict[str, VoiceEmbedder]:
    """The production embedder in fp32 and the same model and VAD with bf16 products."""
    fp32 = load_voice_embedder(settings.model_copy(update={"precision": "fp32"}))
    encoder = SpeakerEncoder(fp32.encoder.weights, malloc_keep_freed=settings.malloc_keep_freed, precision="bf16")
    bf16 = VoiceEmbedder(encoder, fp32.vad, settings.batch_max_frames, settings.concurrent_passes)
    return {"fp32": fp32, "bf16": bf16}


def embedding_cosines(by_precision: dict[str, VoiceEmbedder], files: list[Path], settings: CoreSettings, channel):
    from biometrics.voice.pipeline import analyse_files

    analysed = {p: analyse_files(e, files, settings, channel) for p, e in by_precision.items()}
    cosines, unembedded = [], 0
    for a, b in zip(analysed["fp32"], analysed["bf16"], strict=True):
        if a.embedding is None or b.embedding is None:
            unembedded += 1  # too little speech: the VAD (fp32 in both) decides that, identically
            continue
        cosines.append(float(np.dot(a.embedding.vector, b.embedding.vector)))
    worst = int(np.argmin(cosines))
    return {
        "utterances": len(files),
        "embedded": len(cosines),
        "not_embedded_too_little_speech": unembedded,
        "min_cosine": float(min(cosines)),
        "mean_cosine": float(np.mean(cosines)),
        "below_target": sum(c < TARGET_MIN_COSINE for c in cosines),
        "worst_file": files[worst].name,
    }


def audit_pair(by_precision: dict[str, VoiceEmbedder], dataset: Path, settings: CoreSettings, channel: str) -> dict:
    from biometrics.evaluation.audit import run_audit

    reports = {p: run_audit(e, dataset, settings, channel=channel) for p, e in by_precision.items()}
    thresholds = {p: r.operating_point.threshold for p, r in reports.items()}
    if len(set(thresholds.values())) != 1:
        raise SystemExit(f"the operating points differ between precisions: {thresholds}")
    threshold = thresholds["fp32"]
    decisions = {}
    for p, r in reports.items():
        genuine, impostor = r.scores.arrays()
        decisions[p] = np.concatenate([genuine >= threshold, impostor >= threshold])
    if decisions["fp32"].shape != decisions["bf16"].shape:
        raise SystemExit("the precisions scored different trials")
    same = float(np.mean(decisions["fp32"] == decisions["bf16"]))
    eer = {p: r.eer for p, r in reports.items()}
    return {
        "channel": channel,
        "trials": int(decisions["fp32"].size),
        "eer": eer,
        "eer_difference_pp": abs(eer["bf16"] - eer["fp32"]) * 100,
        "threshold": threshold,
        "same_decisions": same,
        "different_decisions": int(np.sum(decisions["fp32"] != decisions["bf16"])),
        "fnmr_at_operating_point": {p: r.operating_point.fnmr for p, r in reports.items()},
        "fmr_at_operating_point": {p: r.operating_point.fmr for p, r in reports.items()},
    }


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def stage_times(embedder: VoiceEmbedder, waveforms: list) -> dict[str, float]:
    """Wall seconds of VAD + quality measures, front end, and model over ``waveforms``, one at a time."""
    encoder = embedder.encoder
    totals = {"vad_and_quality": 0.0, "front_end": 0.0, "model": 0.0}
    cpu_start = _cpu_s()
    for waveform in waveforms:
        start = time.perf_counter()
        speech, _ = embedder.speech_only(waveform)
        vad_done = time.perf_counter()
        if len(speech) < 16_000:  # under a second of speech: not embedded
            totals["vad_and_quality"] += vad_done - start
            continue
        features = encoder.features(speech)
        features_done = time.perf_counter()
        encoder.embed_features([features])
        totals["vad_and_quality"] += vad_done - start
        totals["front_end"] += features_done - vad_done
        totals["model"] += time.perf_counter() - features_done
    totals["cpu_s"] = _cpu_s() - cpu_start
    return totals


def main(argv: list[str] | None = None) -> dict:
    return run_on_torch_thread(_main, argv)


def _main(argv: list[str] | None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--librispeech", type=Path, default=TEST_OTHER.parent, help="folder of test-other and cohort")
    parser.add_argument("--skip-audits", action="store_true", help="only the embeddings and the stage times")
    parser.add_argument(
        "--emulated-bf16",
        action="store_true",
        help="run on a CPU without native bf16 as well (torch emulates bf16 products: hours, not minutes)",
    )
    args = parser.parse_args(argv)
    if not NATIVE_BF16_FLAGS & cpu_flags() and not args.emulated_bf16:
        raise SystemExit(
            "this CPU has no native bf16 (none of " + ", ".join(sorted(NATIVE_BF16_FLAGS)) + "): torch would emulate "
            "the bf16 products at about 1 GFLOP/s a core and this comparison would take hours; auto runs fp32 here. "
            "--emulated-bf16 runs it anyway"
        )

    from biometrics.voice.audio import read_audio_file
    from biometrics.voice.pipeline import Channel

    settings = CoreSettings(_env_file=None)
    by_precision = embedders(settings)
    test_other = sorted((args.librispeech / "test-other").glob("*/*.flac"))
    cohort = sorted((args.librispeech / "cohort").glob("*.flac"))
    if not test_other or not cohort:
        raise SystemExit(f"no LibriSpeech test-other/ and cohort/ under {args.librispeech}")

    embeddings = {
        "clean, test-other + cohort": embedding_cosines(by_precision, test_other + cohort, settings, Channel.CLEAN),
        "telephone, test-other": embedding_cosines(by_precision, test_other, settings, Channel.TELEPHONE),
    }
    audits = (
        []
        if args.skip_audits
        else [audit_pair(by_precision, args.librispeech / "test-other", settings, c) for c in ("clean", "telephone")]
    )
    waveforms = [read_audio_file(p) for p in test_other]
    for embedder in by_precision.values():  # warm-up: first calls allocate
        stage_times(embedder, waveforms[:2])
    stages = {p: stage_times(e, waveforms) for p, e in by_precision.items()}

    results = {
        "cpu_model": cpu_model(),
        "native_bf16_flags": sorted(NATIVE_BF16_FLAGS & cpu_flags()),
        "embeddings": embeddings,
        "audits": audits,
        "stage_seconds_test_other_one_at_a_time": stages,
        "audio_seconds_test_other": sum(w.duration_s for w in waveforms),
        "targets": {
            "min_cosine": TARGET_MIN_COSINE,
            "eer_within_pp": TARGET_EER_PP,
            "same_decisions_at_least": TARGET_SAME_DECISIONS,
        },
    }
    results["targets"]["met"] = all(e["below_target"] == 0 for e in embeddings.values()) and all(
        a["eer_difference_pp"] <= TARGET_EER_PP and a["same_decisions"] >= TARGET_SAME_DECISIONS for a in audits
    )
    print_table(results)
    write_results(args.out, results)
    return results


def print_table(r: dict) -> None:
    print(f"{r['cpu_model']}; native bf16: {', '.join(r['native_bf16_flags']) or 'none'}")
    print()
    header = f"{'bf16 vs fp32 embeddings':<30} {'files':>6} {'embedded':>9} {'min cosine':>11} {'mean':>9}"
    print(header + f" {'< 0.9999':>9}")
    for name, e in r["embeddings"].items():
        print(
            f"{name:<30} {e['utterances']:>6} {e['embedded']:>9} {e['min_cosine']:>11.6f} {e['mean_cosine']:>9.6f} "
            f"{e['below_target']:>9}"
        )
    if r["audits"]:
        print()
        header = f"{'audit, test-other':<18} {'trials':>7} {'EER fp32':>9} {'EER bf16':>9} {'diff pp':>8}"
        print(header + f" {'same decisions':>15}")
        for a in r["audits"]:
            print(
                f"{a['channel']:<18} {a['trials']:>7} {a['eer']['fp32']:>9.2%} {a['eer']['bf16']:>9.2%} "
                f"{a['eer_difference_pp']:>8.3f} {a['same_decisions']:>14.3%} ({a['different_decisions']} differ)"
            )
    print()
    audio = r["audio_seconds_test_other"]
    print(f"stages over test-other ({audio:.0f} s of audio), one utterance at a time: wall seconds (share)")
    for p, s in r["stage_seconds_test_other_one_at_a_time"].items():
        total = s["vad_and_quality"] + s["front_end"] + s["model"]
        shares = ", ".join(f"{k} {s[k]:.1f} ({s[k] / total:.0%})" for k in ("vad_and_quality", "front_end", "model"))
        print(f"  {p}: {shares}; {audio / total:.1f} audio s/s")
    print(f"targets met: {'yes' if r['targets']['met'] else 'NO'}")


if __name__ == "__main__":
    main()
