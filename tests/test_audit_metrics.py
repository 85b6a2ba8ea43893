"""Audit metrics, trials, cache, calibration and the audit machinery, on hand-computed and synthetic data.

Fast: no speaker model. The audit itself runs here with a stand-in embedder on generated tones; the
real model's accuracy is checked in tests/test_audit_run.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from biometrics.errors import BiometricsError, IncompatibleModel
from biometrics.evaluation.accuracy_report import AccuracyReport, ReportError
from biometrics.evaluation.calibration_fit import calibrate, fit_llr
from biometrics.evaluation.metrics import (
    bootstrap_ci,
    bootstrap_fnmr_at_fmr,
    det_points,
    fnmr_at_fmr,
    min_dcf,
    operating_point_at_fmr,
)
from biometrics.evaluation.trials import (
    DatasetError,
    dataset_sha256,
    group_pairs,
    trials_from_folders,
    trials_from_list,
)
from biometrics.scoring.calibration import Calibration, CalibrationError
from tests.audit_reports import STORED_BEFORE_CALIBRATION, report_with_scores

# --- minDCF -----------------------------------------------------------------------------------------


def test_perfectly_separated_scores_cost_nothing():
    assert min_dcf(np.array([0.8, 0.9]), np.array([0.1, 0.2]), p_target=0.01) == 0.0


def test_min_dcf_matches_a_hand_computation():
    genuine, impostor = np.array([0.9, 0.8, 0.7, 0.6]), np.array([0.1, 0.65])
    # p_target 0.5: at 0.7 one genuine of four is missed and no impostor passes: 0.5 * 1/4 / 0.5.
    assert min_dcf(genuine, impostor, p_target=0.5) == pytest.approx(0.25)
    # p_target 0.9: misses cost more; best is 0.6 (no miss, half the impostors pass): 0.1 * 1/2 / 0.1.
    assert min_dcf(genuine, impostor, p_target=0.9) == pytest.approx(0.5)
    # costs weigh in: c_fa = 4 at p_target 0.5 favours rejecting (0.5 * 1/4) / min(0.5, 2).
    assert min_dcf(genuine, impostor, p_target=0.5, c_fa=4) == pytest.approx(0.25)


def test_min_dcf_of_useless_scores_is_one():
    assert min_dcf(np.array([0.1, 0.2]), np.array([0.8, 0.9]), p_target=0.01) == pytest.approx(1.0)


def test_min_dcf_refuses_a_prior_outside_zero_one():
    with pytest.raises(ValueError):
        min_dcf(np.array([1.0]), np.array([0.0]), p_target=1.0)


# --- FNMR at a fixed FMR ----------------------------------------------------------------------------


def test_fnmr_at_fmr_is_zero_for_separated_scores():
    assert fnmr_at_fmr(np.array([0.8, 0.9]), np.array([0.1, 0.2, 0.3]), 1e-3) == 0.0


def test_fnmr_at_fmr_takes_the_lowest_threshold_that_meets_the_target():
    genuine = np.array([0.9, 0.8, 0.7, 0.6])
    impostor = np.array([0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.75])
    # FMR <= 0.1 lets one impostor of ten pass (0.75): the threshold lands on 0.6, nothing rejected.
    point = operating_point_at_fmr(genuine, impostor, 0.1)
    assert (point.threshold, point.fmr, point.fnmr) == pytest.approx((0.6, 0.1, 0.0))
    # FMR <= 0.05 lets none pass: the threshold must rise above 0.75, to 0.8, rejecting 0.7 and 0.6.
    point = operating_point_at_fmr(genuine, impostor, 0.05)
    assert (point.threshold, point.fmr, point.fnmr) == (0.8, 0.0, 0.5)


def test_det_points_run_from_accept_all_to_reject_all():
    fmr, fnmr = det_points(np.array([0.5, 0.9]), np.array([0.1, 0.5]))
    assert (fmr[0], fnmr[0]) == (1.0, 0.0) and (fmr[-1], fnmr[-1]) == (0.0, 1.0)
    assert np.all(np.diff(fmr) <= 0) and np.all(np.diff(fnmr) >= 0)


# --- bootstrap --------------------------------------------------------------------------------------


def test_bootstrap_interval_of_separated_scores_is_zero_wide():
    ci = bootstrap_ci(np.array([0.8, 0.9, 0.95]), np.array([0.1, 0.2, 0.3]), 1e-2, seed=1)
    assert (ci.low, ci.high) == (0.0, 0.0)


def test_bootstrap_is_reproducible_from_its_seed():
    rng = np.random.default_rng(0)
    genuine, impostor = rng.normal(2, 1, 200), rng.normal(0, 1, 2000)
    assert bootstrap_ci(genuine, impostor, 1e-2, seed=7) == bootstrap_ci(genuine, impostor, 1e-2, seed=7)


def test_bootstrap_matches_resampling_the_scores_themselves():
    rng = np.random.default_rng(1)
    genuine = np.round(rng.normal(2, 1, 150), 1)  # rounded: ties must be handled too
    impostor = np.round(rng.normal(0, 1, 600), 1)
    fast = bootstrap_fnmr_at_fmr(genuine, impostor, 0.01, n_resamples=20_000, seed=3)
    naive = np.array(
        [fnmr_at_fmr(rng.choice(genuine, len(genuine)), rng.choice(impostor, len(impostor)), 0.01) for _ in range(2000)]
    )
    assert np.quantile(fast, [0.025, 0.5, 0.975]) == pytest.approx(np.quantile(naive, [0.025, 0.5, 0.975]), abs=0.03)


def test_bootstrap_interval_surrounds_the_estimate():
    rng = np.random.default_rng(2)
    genuine, impostor = rng.normal(2, 1, 2000), rng.normal(0, 1, 100_000)
    ci = bootstrap_ci(genuine, impostor, 1e-3)
    assert ci.low < fnmr_at_fmr(genuine, impostor, 1e-3) < ci.high
    assert ci.high - ci.low < 0.1 and ci.resamples == 1000 and ci.confidence == 0.95


# --- calibration ------------------------------------------------------------------------------------


def _report(genuine, impostor, method="cosine") -> AccuracyReport:
    return report_with_scores(genuine, impostor, method=method, model_fingerprint="ecapa-voxceleb-test")


@pytest.fixture(scope="module")
def gaussian_scores():
    rng = np.random.default_rng(3)
    return rng.normal(2, 1, 20_000), rng.normal(0, 1, 20_000)


def test_calibration_recovers_the_llr_of_gaussian_scores(gaussian_scores):
    # Genuine N(2, 1) against impostor N(0, 1): the true log-likelihood ratio is 2s - 2.
    a, b = fit_llr(*gaussian_scores)
    assert a == pytest.approx(2.0, abs=0.1) and b == pytest.approx(-2.0, abs=0.1)


def test_calibration_threshold_meets_the_target_fmr(gaussian_scores):
    genuine, impostor = gaussian_scores
    calibration = calibrate(_report(genuine, impostor), target_fmr=1e-3, report_path="out/report.json")
    assert np.mean(impostor >= calibration.threshold) <= 1e-3
    assert np.mean(impostor >= np.max(impostor[impostor < calibration.threshold])) > 1e-3  # and it is the lowest
    llrs = [calibration.llr(s) for s in np.linspace(-3, 5, 9)]
    assert all(np.diff(llrs) > 0)
    assert calibration.method == "cosine" and calibration.source["impostor_trials"] == 20_000
    assert calibration.source["report"] == "out/report.json" and calibration.source["resolvable"]


def test_perfectly_separated_scores_still_calibrate_to_a_finite_steep_mapping():
    calibration = calibrate(_report([0.7, 0.8, 0.9], [0.0, 0.1, 0.2]), target_fmr=1e-3)
    assert np.isfinite(calibration.a) and calibration.a > 0
    assert calibration.llr(0.9) > 0 > calibration.llr(0.0)
    assert not calibration.source["resolvable"]


def test_calibration_round_trips_through_its_file(tmp_path, gaussian_scores):
    calibration = calibrate(_report(*gaussian_scores, method="as-norm"), target_fmr=1e-2)
    calibration.save(tmp_path / "calibration.json")
    assert Calibration.load(tmp_path / "calibration.json") == calibration


@pytest.mark.parametrize(
    "content",
    [
        "not json",
        "[1, 2]",
        json.dumps({"kind": "something-else", "format": 1}),
        "MISSING_A",
        "NEGATIVE_SLOPE",
        "BAD_METHOD",
        "COSINE_BELOW_MINUS_ONE",
    ],
)
def test_a_malformed_calibration_file_is_refused(tmp_path, gaussian_scores, content):
    good = calibrate(_report(*gaussian_scores), target_fmr=1e-2).as_dict()
    if content == "MISSING_A":
        content = json.dumps({k: v for k, v in good.items() if k != "a"})
    elif content == "NEGATIVE_SLOPE":
        content = json.dumps({**good, "a": -1.0})
    elif content == "BAD_METHOD":
        content = json.dumps({**good, "method": "plda"})
    elif content == "COSINE_BELOW_MINUS_ONE":  # edited by hand to accept every caller
        assert good["method"] == "cosine"
        content = json.dumps({**good, "threshold": -2.0})
    path = tmp_path / "calibration.json"
    path.write_text(content)
    with pytest.raises(CalibrationError) as caught:
        Calibration.load(path)
    assert caught.value.code == "calibration_invalid" and isinstance(caught.value, BiometricsError)


def test_no_calibration_is_written_when_impostors_score_a_perfect_cosine(tmp_path):
    """Two impostor trials at 1.0 put the FMR point past the largest cosine: the service would refuse that file."""
    from biometrics.evaluation.report import write_report

    write_report(_report([0.8, 0.9, 0.95], [0.1] * 998 + [1.0, 1.0]), tmp_path)
    args = _parser().parse_args(["audit", "calibrate", "--report", str(tmp_path), "--target-fmr", "0.001"])
    with pytest.raises(CalibrationError, match="impostor trials scored a perfect cosine"):
        args.run(args)
    assert not (tmp_path / "calibration.json").exists()


def test_a_missing_calibration_file_is_a_calibration_error(tmp_path):
    with pytest.raises(CalibrationError):
        Calibration.load(tmp_path / "nowhere.json")


def test_a_calibration_is_only_for_its_model_and_method(gaussian_scores):
    calibration = calibrate(_report(*gaussian_scores), target_fmr=1e-2)
    calibration.check_compatible("cosine", "ecapa-voxceleb-test", "clean")
    with pytest.raises(IncompatibleModel):
        calibration.check_compatible("cosine", "ecapa-voxceleb-other")
    with pytest.raises(CalibrationError):
        calibration.check_compatible("as-norm", "ecapa-voxceleb-test")


def test_a_report_without_scores_cannot_be_calibrated():
    with pytest.raises(CalibrationError):
        calibrate(_report([], []), target_fmr=1e-3)


def test_inverted_scores_cannot_be_calibrated():
    with pytest.raises(CalibrationError):
        calibrate(_report([0.1, 0.2, 0.3], [0.7, 0.8, 0.9]), target_fmr=1e-2)


# --- trials -----------------------------------------------------------------------------------------


def _touch_dataset(root, sizes):
    for s, n in enumerate(sizes):
        for i in range(n):
            path = root / f"spk{s}" / "session" / f"utt{i}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(f"{s}-{i}".encode())
    return root


def test_folders_give_every_genuine_pair_and_every_impostor_pair(tmp_path):
    trials = trials_from_folders(_touch_dataset(tmp_path, [2, 3, 1]))
    assert (trials.n_genuine, trials.n_impostor) == (1 + 3, 15 - 4)
    assert all(
        trials.files[e].split("/")[0] == trials.files[t].split("/")[0]
        for e, t, g in zip(trials.enrol, trials.test, trials.genuine, strict=True)
        if g
    )
    assert np.all(trials.enrol < trials.test)


def test_impostors_above_the_cap_are_a_seeded_sample(tmp_path):
    root = _touch_dataset(tmp_path, [4, 4, 4, 4])
    first = trials_from_folders(root, max_impostors=20, seed=5)
    again = trials_from_folders(root, max_impostors=20, seed=5)
    other = trials_from_folders(root, max_impostors=20, seed=6)
    assert first.n_impostor == 20 and first.n_genuine == 4 * 6
    assert np.array_equal(first.enrol, again.enrol) and np.array_equal(first.test, again.test)
    assert not (np.array_equal(first.enrol, other.enrol) and np.array_equal(first.test, other.test))
    pairs = {(int(e), int(t)) for e, t in zip(first.enrol, first.test, strict=True)}
    assert len(pairs) == len(first.enrol)  # no pair twice
    assert first.source["impostors_sampled"] and first.source["impostor_pairs_available"] == 120 - 24


def _pairs(trials, genuine: bool) -> set[tuple[int, int]]:
    keep = trials.genuine == genuine
    return {(int(e), int(t)) for e, t in zip(trials.enrol[keep], trials.test[keep], strict=True)}


def test_genuine_pairs_above_the_cap_are_a_seeded_sample(tmp_path):
    root = _touch_dataset(tmp_path, [6, 5, 4, 1])
    whole = trials_from_folders(root, max_impostors=30, seed=5)
    first = trials_from_folders(root, max_impostors=30, seed=5, max_genuine=10)
    again = trials_from_folders(root, max_impostors=30, seed=5, max_genuine=10)
    other = trials_from_folders(root, max_impostors=30, seed=6, max_genuine=10)
    assert (whole.n_genuine, first.n_genuine, first.n_impostor) == (15 + 10 + 6, 10, 30)
    assert not whole.source["genuine_sampled"]
    assert first.source["genuine_sampled"] and first.source["genuine_pairs_available"] == 31
    assert first.source["max_genuine"] == 10 and first.source["seed"] == 5
    assert np.array_equal(first.enrol, again.enrol) and np.array_equal(first.test, again.test)
    assert _pairs(first, True) != _pairs(other, True)
    assert len(_pairs(first, True)) == 10 and _pairs(first, True) < _pairs(whole, True)  # distinct, all same-subject
    assert _pairs(first, False) == _pairs(whole, False)  # the impostor sample of a seed does not change
    assert np.all(first.enrol < first.test)


def test_many_files_per_subject_are_sampled_without_listing_every_pair(tmp_path):
    import tracemalloc

    root = _touch_dataset(tmp_path, [2000, 2000])  # 3,998,000 same-subject pairs: listing them takes 64 MB
    tracemalloc.start()
    try:
        trials = trials_from_folders(root, max_impostors=1000, max_genuine=1000, seed=1)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (trials.n_genuine, trials.n_impostor) == (1000, 1000)
    assert trials.source["genuine_pairs_available"] == 2 * 2000 * 1999 // 2
    assert peak < 16 * 2**20, peak


def test_pairs_are_drawn_uniformly_and_decoded_exactly_in_groups_of_any_size():
    # 19,999,900,000 pairs in the big group: a sample must be drawn and decoded without listing them.
    groups = [np.arange(3), np.empty(0, np.int64), np.arange(10, 11), np.arange(100, 200_100)]
    first, second, available = group_pairs(groups, 50_000, np.random.default_rng(0))
    assert available == 3 + 200_000 * 199_999 // 2 and len(first) == 50_000
    assert len({(int(a), int(b)) for a, b in zip(first, second, strict=True)}) == 50_000
    big = first >= 100
    assert np.all(second[big] > first[big]) and np.all(second[big] < 200_100) and np.all(second[~big] < 3)
    # every pair of a small group is equally likely
    counts = np.zeros((5, 5))
    for seed in range(2000):
        a, b, _ = group_pairs([np.arange(5)], 3, np.random.default_rng(seed))
        np.add.at(counts, (a, b), 1)
    assert np.all(np.abs(counts[np.triu_indices(5, 1)] / (2000 * 3 / 10) - 1) < 0.15)


def test_the_default_genuine_cap_keeps_an_ordinary_dataset_whole(tmp_path):
    trials = trials_from_folders(_touch_dataset(tmp_path, [90] * 33))  # LibriSpeech test-other's size
    assert trials.n_genuine == 33 * 90 * 89 // 2 and not trials.source["genuine_sampled"]


def test_fingerprint_trials_cap_genuine_and_impostor_pairs_too(tmp_path):
    from biometrics.evaluation.fingerprint_audit import fvc_trials

    for finger in range(1, 31):
        for impression in range(1, 9):
            (tmp_path / f"{finger}_{impression}.tif").write_bytes(b"")
    whole = fvc_trials(tmp_path)
    capped = fvc_trials(tmp_path, max_genuine=100, max_impostors=50, seed=2)
    assert (whole.n_genuine, whole.n_impostor) == (30 * 28, 30 * 29 // 2)
    assert (capped.n_genuine, capped.n_impostor) == (100, 50)
    assert _pairs(capped, True) < _pairs(whole, True) and _pairs(capped, False) < _pairs(whole, False)
    assert capped.source["genuine_pairs_available"] == 840 and capped.source["impostors_sampled"]
    assert np.array_equal(fvc_trials(tmp_path, max_genuine=100, max_impostors=50, seed=2).test, capped.test)


def test_a_negative_seed_or_a_cap_under_one_is_refused(tmp_path):
    root = _touch_dataset(tmp_path, [2, 2])
    for kwargs in ({"seed": -1}, {"max_genuine": 0}, {"max_impostors": 0}):
        with pytest.raises(DatasetError):
            trials_from_folders(root, **kwargs)


def test_a_trial_list_names_its_pairs(tmp_path):
    root = _touch_dataset(tmp_path / "data", [2, 2])
    listing = tmp_path / "trials.txt"
    listing.write_text(
        "1 spk0/session/utt0.wav spk0/session/utt1.wav\n0 spk0/session/utt0.wav spk1/session/utt0.wav\n\n"
    )
    trials = trials_from_list(root, listing)
    assert (trials.n_genuine, trials.n_impostor) == (1, 1)
    assert trials.files == ("spk0/session/utt0.wav", "spk0/session/utt1.wav", "spk1/session/utt0.wav")
    assert trials.source["kind"] == "list" and len(trials.source["list_sha256"]) == 64


@pytest.mark.parametrize(
    "line",
    ["2 spk0/session/utt0.wav spk0/session/utt1.wav", "1 spk0/session/utt0.wav", "1 spk0/session/utt0.wav nope.wav"],
)
def test_a_bad_trial_list_is_refused(tmp_path, line):
    root = _touch_dataset(tmp_path / "data", [2, 2])
    listing = tmp_path / "trials.txt"
    listing.write_text(f"0 spk0/session/utt0.wav spk1/session/utt0.wav\n{line}\n")
    with pytest.raises(DatasetError):
        trials_from_list(root, listing)


def test_a_folder_without_two_subjects_is_refused(tmp_path):
    with pytest.raises(DatasetError):
        trials_from_folders(_touch_dataset(tmp_path, [3]))


def test_dataset_hash_follows_names_and_contents():
    base = dataset_sha256(["a/1.wav", "b/1.wav"], ["11" * 32, "22" * 32])
    assert base == dataset_sha256(["b/1.wav", "a/1.wav"], ["22" * 32, "11" * 32])  # order does not matter
    assert base != dataset_sha256(["a/1.wav", "b/2.wav"], ["11" * 32, "22" * 32])
    assert base != dataset_sha256(["a/1.wav", "b/1.wav"], ["11" * 32, "33" * 32])


# --- batch scoring is the production scorer's ------------------------------------------------------------


def test_batch_scores_equal_the_scorer_one_trial_at_a_time():
    from biometrics.evaluation.audit import trial_scores
    from biometrics.scoring.scorer import Scorer
    from biometrics.voice.cohort import Cohort
    from biometrics.voice.embedding import Embedding

    rng = np.random.default_rng(4)
    vectors = rng.normal(size=(12, 192)).astype(np.float32)
    cohort_vectors = rng.normal(size=(40, 192)).astype(np.float32)
    cohort = Cohort(cohort_vectors / np.linalg.norm(cohort_vectors, axis=1, keepdims=True), "fp", "clean")
    enrol, test = np.triu_indices(12, 1)
    for scorer in (Scorer(), Scorer(cohort, top_k=10)):
        batch = trial_scores(scorer, vectors, enrol, test)
        one_by_one = [
            scorer.score(Embedding(vectors[e], "fp"), Embedding(vectors[t], "fp"))
            for e, t in zip(enrol, test, strict=True)
        ]
        assert batch == pytest.approx(one_by_one, abs=1e-5)


# --- the audit, end to end, with a stand-in embedder ----------------------------------------------------


class ToneEmbedder:
    """Stands in for the model: a file's 'voice' is its tone's pitch; silence has no speech."""

    fingerprint = "stand-in-tones"
    precision = "fp32"

    def __init__(self) -> None:
        self.analysed = 0

    def analyse(self, waveforms, max_speech_s=None):
        from biometrics.voice.embedding import AnalysedSample, Embedding
        from biometrics.voice.quality.gates import QualityMeasures

        self.analysed += len(waveforms)
        out = []
        for w in waveforms:
            rms = float(np.sqrt(np.mean(w.samples**2)))
            speech = w.duration_s if rms > 1e-3 else 0.0
            measures = QualityMeasures(w.duration_s, speech, 30.0, w.clipping_ratio)
            embedding = None
            if speech > 0:
                spectrum = np.abs(np.fft.rfft(w.samples))
                pitch = int(np.argmax(spectrum) * w.sample_rate / len(w.samples) / 50)  # 50 Hz bands
                voice = np.random.default_rng(pitch).normal(size=192)
                noise = np.random.default_rng(int(1e6 * rms)).normal(size=192)
                vector = voice + 0.5 * noise
                embedding = Embedding((vector / np.linalg.norm(vector)).astype(np.float32), self.fingerprint)
            out.append(AnalysedSample(measures, embedding))
        return out


def _tone_dataset(root):
    rate = 16_000
    for s, pitch in enumerate([200, 400, 600, 800]):
        for i in range(4):
            seconds = 2.0 if (s, i) == (1, 3) else 5.0  # one file too short to verify with
            t = np.arange(int(seconds * rate)) / rate
            amplitude = 0.0 if (s, i) == (2, 3) else 0.1 + 0.05 * i  # one silent file
            path = root / f"spk{s}" / f"utt{i}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(path, (amplitude * np.sin(2 * np.pi * pitch * t)).astype(np.float32), rate)
    (root / "spk3" / "broken.wav").write_bytes(b"this is not audio")
    return root


@pytest.fixture()
def tone_dataset(tmp_path):
    return _tone_dataset(tmp_path / "tones")


def _parser():
    from biometrics.evaluation.cli import add_audit_commands

    parser = argparse.ArgumentParser()
    verbs = parser.add_subparsers(dest="verb")
    add_audit_commands(verbs.add_parser("audit").add_subparsers(dest="action"))
    return parser


def test_audit_counts_failures_to_enrol_and_acquire_and_scores_the_rest(tone_dataset, tmp_path):
    from biometrics.evaluation.audit import run_audit
    from biometrics.evaluation.cache import EmbeddingCache
    from biometrics.settings import CoreSettings

    embedder = ToneEmbedder()
    report = run_audit(embedder, tone_dataset, CoreSettings(_env_file=None), cache=EmbeddingCache(tmp_path / "c"))
    # 17 files: the silent and the broken one cannot enrol; those two and the 2 s one are not acquired.
    assert report.failures.enrolment.reasons == {"NO_SPEECH": 1, "audio_not_recognised": 1}
    assert report.failures.acquisition.reasons == {"NO_SPEECH": 1, "TOO_SHORT": 1, "audio_not_recognised": 1}
    assert report.counts.trials == 17 * 16 // 2
    assert report.genuine_trials + report.impostor_trials < report.counts.trials
    assert report.eer == 0.0 and report.fnmr_at_fmr["0.001"].fnmr == 0.0
    assert report.scoring.checked_against_scorer > 0
    assert embedder.analysed == 16  # the broken file never reaches the embedder
    again = run_audit(embedder, tone_dataset, CoreSettings(_env_file=None), cache=EmbeddingCache(tmp_path / "c"))
    assert embedder.analysed == 16 and again.cache.hits == 17
    assert again.eer == report.eer and again.dataset_sha256 == report.dataset_sha256


def test_audit_cli_writes_reports_and_calibration(tone_dataset, tmp_path, monkeypatch):
    from biometrics.evaluation import cli

    monkeypatch.setattr(cli, "_embedder", lambda settings: ToneEmbedder())
    monkeypatch.delenv("BIOIDENT_COHORT_FILE", raising=False)

    def audit_run(out: Path) -> dict:
        argv = ["audit", "run", "--dataset", str(tone_dataset), "--out", str(out), "--cache-dir", str(tmp_path / "c")]
        args = _parser().parse_args([*argv, "--quiet"])
        assert args.run(args) == 0
        return json.loads((out / "report.json").read_text())

    out = tmp_path / "out"
    report = audit_run(out)
    assert report["command"].startswith("bioident audit run --dataset") and "--cohort" not in report["command"]
    assert '<img alt="DET curve" src="data:image/png;base64,' in (out / "report.html").read_text()
    calibrate = ["audit", "calibrate", "--report", str(out), "--target-fmr", "0.01"]
    args = _parser().parse_args(calibrate)  # 80 impostor trials cannot show 1 %: refused, nothing written
    with pytest.raises(CalibrationError, match="80 impostor trials cannot show FMR 0.01 .that needs at least 100."):
        args.run(args)
    assert not (out / "calibration.json").exists()
    args = _parser().parse_args([*calibrate, "--allow-unresolved"])
    assert args.run(args) == 0
    calibration = Calibration.load(out / "calibration.json")
    assert calibration.target_fmr == 0.01 and calibration.source["dataset_sha256"] == report["dataset_sha256"]
    assert calibration.source["resolvable"] is False
    assert report["scoring"]["calibration"] is None

    # With the calibration deployed, the "configured threshold" row is the deployment's threshold.
    shifted = dataclasses.replace(calibration, threshold=calibration.threshold + 0.125)
    shifted.save(tmp_path / "deployed.json")
    monkeypatch.setenv("BIOIDENT_CALIBRATION_FILE", str(tmp_path / "deployed.json"))
    again = audit_run(tmp_path / "again")
    configured = next(row for row in again["threshold_table"] if row["kind"] == "configured")
    assert again["scoring"]["configured_threshold"] == configured["threshold"] == shifted.threshold
    assert again["scoring"]["calibration"]["file"] == str(tmp_path / "deployed.json")

    # One made for other scores is not applied, and the report says so.
    dataclasses.replace(shifted, method="as-norm").save(tmp_path / "deployed.json")
    other = audit_run(tmp_path / "again")
    assert other["scoring"]["calibration"] is None and other["scoring"]["configured_threshold"] != shifted.threshold
    assert any("calibration is not used" in w for w in other["warnings"]), other["warnings"]


def _tone_audit_run(tone_dataset, out, monkeypatch, *extra) -> dict:
    from biometrics.evaluation import cli

    monkeypatch.setattr(cli, "_embedder", lambda settings: ToneEmbedder())
    monkeypatch.delenv("BIOIDENT_COHORT_FILE", raising=False)
    monkeypatch.delenv("BIOIDENT_CALIBRATION_FILE", raising=False)
    args = _parser().parse_args(
        ["audit", "run", "--dataset", str(tone_dataset), "--out", str(out), "--no-cache", "--quiet", *extra]
    )
    assert args.run(args) == 0
    return json.loads((out / "report.json").read_text())


def test_audit_cli_samples_genuine_pairs_beyond_max_genuine_and_says_so(tone_dataset, tmp_path, monkeypatch, capsys):
    report = _tone_audit_run(tone_dataset, tmp_path / "out", monkeypatch, "--max-genuine", "12", "--seed", "3")
    trials = report["dataset"]["trials"]
    assert report["counts"]["genuine_trials"] == 12 and report["counts"]["impostor_trials"] == 17 * 16 // 2 - 28
    assert trials["genuine_sampled"] and trials["genuine_pairs_available"] == 3 * 6 + 10 and trials["max_genuine"] == 12
    assert "--max-genuine 12" in report["command"] and "--seed 3" in report["command"]
    assert "genuine trials: 12 sampled of 28 same-subject pairs (seed 3)" in capsys.readouterr().out
    again = _tone_audit_run(tone_dataset, tmp_path / "again", monkeypatch, "--max-genuine", "12", "--seed", "3")
    assert again["scores"] == report["scores"]  # the same seed, the same sample


@pytest.mark.parametrize(
    "option", [["--seed", "-1"], ["--seed", "1.5"], ["--max-genuine", "0"], ["--max-impostors", "-5"]]
)
def test_a_negative_seed_or_a_cap_under_one_is_a_usage_error(tone_dataset, tmp_path, capsys, option):
    from service.cli import main

    with pytest.raises(SystemExit) as exited:
        main(["audit", "run", "--dataset", str(tone_dataset), "--out", str(tmp_path / "out"), *option])
    assert exited.value.code == 2
    assert f"argument {option[0]}: " in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_negative_seed_given_to_the_audit_itself_is_an_input_error(tone_dataset, tmp_path):
    from biometrics.evaluation.audit import run_audit
    from biometrics.settings import CoreSettings

    listing = tmp_path / "trials.txt"
    listing.write_text("1 spk0/utt0.wav spk0/utt1.wav\n0 spk0/utt0.wav spk1/utt0.wav\n")
    embedder = ToneEmbedder()
    for trials in (None, listing):
        with pytest.raises(DatasetError, match="seed"):
            run_audit(embedder, tone_dataset, CoreSettings(_env_file=None), trials=trials, seed=-1)
    assert embedder.analysed == 0  # refused before any file is analysed


def test_calibrate_never_writes_over_the_audit_report_or_another_file(tone_dataset, tmp_path, monkeypatch, capsys):
    from service.cli import main

    out = tmp_path / "out"
    _tone_audit_run(tone_dataset, out, monkeypatch)
    report, page = (out / "report.json").read_bytes(), (out / "report.html").read_bytes()
    (tmp_path / "link.json").symlink_to(out / "report.json")
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    calibrate = ["audit", "calibrate", "--report", str(out), "--target-fmr", "0.01", "--allow-unresolved"]
    capsys.readouterr()
    for target, why in (
        (out / "report.json", "is the audit report itself"),
        (out / "." / "report.json", "is the audit report itself"),
        (tmp_path / "link.json", "is the audit report itself"),
        (out / "report.html", "is not a calibration file"),
        (notes, "is not a calibration file"),
        (out, "is a folder"),
    ):
        assert main([*calibrate, "--out", str(target)]) == 2, target
        err = capsys.readouterr().err
        assert err.startswith("bioident: error: --out ") and why in err and err.count("\n") == 1, err
    assert (out / "report.json").read_bytes() == report and (out / "report.html").read_bytes() == page
    assert notes.read_text() == "mine"
    # A calibration file is written, and calibrating again replaces it.
    for _ in range(2):
        assert main([*calibrate, "--out", str(tmp_path / "calibration.json")]) == 0
        assert Calibration.load(tmp_path / "calibration.json").target_fmr == 0.01


def test_calibrate_cli_without_a_report_is_an_input_error(tmp_path):
    args = _parser().parse_args(["audit", "calibrate", "--report", str(tmp_path / "none")])
    with pytest.raises(CalibrationError):
        args.run(args)


@pytest.mark.parametrize("content", ["not json", json.dumps({"eer": 0.01})])
def test_calibrate_cli_on_a_file_that_is_not_a_report_is_an_input_error(tmp_path, content):
    (tmp_path / "report.json").write_text(content)
    args = _parser().parse_args(["audit", "calibrate", "--report", str(tmp_path)])
    with pytest.raises(CalibrationError, match="is not an audit report"):
        args.run(args)


# --- the report as a type ---------------------------------------------------------------------------------


def test_an_audit_report_round_trips_through_its_dict(tone_dataset):
    from biometrics.evaluation.audit import run_audit
    from biometrics.settings import CoreSettings

    report = run_audit(ToneEmbedder(), tone_dataset, CoreSettings(_env_file=None))
    data = report.to_dict()
    assert AccuracyReport.from_dict(data) == report
    assert AccuracyReport.from_dict(json.loads(json.dumps(data))).to_dict() == data
    assert list(data) == list(AccuracyReport.model_fields)  # every part written, in order, nothing else
    assert data["scoring"]["calibration"] is None and data["cache"] is None


def test_a_report_stored_by_an_earlier_version_loads_renders_and_writes_out_unchanged():
    from biometrics.evaluation.report import render_html

    stored = json.loads(json.dumps(STORED_BEFORE_CALIBRATION))
    report = AccuracyReport.from_dict(stored)
    assert report.scoring.calibration is None and report.scoring.cohort.file is None
    assert report.to_dict() == STORED_BEFORE_CALIBRATION  # no "calibration" or cohort "file" key added
    assert json.dumps(report.to_dict()) == json.dumps(STORED_BEFORE_CALIBRATION)  # keys in the same order
    page = render_html(report)
    assert '<img alt="DET curve" src="data:image/png;base64,' in page
    assert "20 embeddings, clean channel, file n/a (sha256 n/a)" in page


def test_a_report_keeps_keys_it_does_not_know():
    newer = {**STORED_BEFORE_CALIBRATION, "figure_of_the_future": {"a": [1, 2]}}
    newer["scoring"] = {**newer["scoring"], "calibration": None, "fusion": "none"}
    assert AccuracyReport.from_dict(newer).to_dict() == newer


def test_the_headline_results_are_the_report_figures_without_its_scores():
    headline = AccuracyReport.from_dict(STORED_BEFORE_CALIBRATION).headline()
    assert headline == {name: STORED_BEFORE_CALIBRATION[name] for name in AccuracyReport.HEADLINE_FIELDS}
    assert {"eer", "fnmr_at_fmr", "model_fingerprint"} <= headline.keys() and "scores" not in headline


@pytest.mark.parametrize(
    "data",
    [{"eer": 0.01}, [1, 2], {**STORED_BEFORE_CALIBRATION, "format": 2}, {**STORED_BEFORE_CALIBRATION, "eer": "low"}],
)
def test_a_dict_that_is_not_a_report_is_refused(data):
    with pytest.raises(ReportError) as caught:
        AccuracyReport.from_dict(data)
    assert caught.value.code == "audit_report_invalid" and isinstance(caught.value, BiometricsError)
