"""The accuracy audit of the real pipeline on LibriSpeech test-other (10 speakers x 10 utterances).

Each file is embedded once per channel: every audit in this module shares one embedding cache.
"""

from __future__ import annotations

import argparse
import json

import pytest

from biometrics.evaluation.accuracy_report import AccuracyReport
from biometrics.evaluation.audit import run_audit
from biometrics.evaluation.cache import EmbeddingCache
from biometrics.evaluation.cli import add_audit_commands
from biometrics.evaluation.report import write_report
from biometrics.scoring.calibration import Calibration
from tests.conftest import COHORT_DIR, COHORT_SPEECH_S, TEST_OTHER

pytestmark = pytest.mark.model

REQUIRED_KEYS = {
    "eer",
    "min_dcf",
    "fnmr_at_fmr",
    "fte",
    "fta",
    "genuine_trials",
    "impostor_trials",
    "model_fingerprint",
    "dataset_sha256",
    "channel",
    "scoring",
    "threshold_table",
    "scores",
    "command",
}


class CountingEmbedder:
    """The real embedder, counting the samples it is asked to analyse."""

    def __init__(self, embedder) -> None:
        self.embedder = embedder
        self.fingerprint = embedder.fingerprint
        self.precision = embedder.precision
        self.analysed = 0

    def analyse(self, waveforms, max_speech_s=None):
        self.analysed += len(waveforms)
        return self.embedder.analyse(waveforms, max_speech_s=max_speech_s)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("embedding-cache")


def _audit(embedder, settings, cache_dir, out, channel, **kwargs):
    counting = CountingEmbedder(embedder)
    report = run_audit(counting, TEST_OTHER, settings, channel, cache=EmbeddingCache(cache_dir), **kwargs)
    write_report(report, out)
    return report, counting


@pytest.fixture(scope="module")
def clean_audit(embedder, core_settings, cache_dir, tmp_path_factory, shared_data):
    out = tmp_path_factory.mktemp("clean-audit")
    report, counting = _audit(embedder, core_settings, cache_dir, out, "clean", command="bioident audit run ...")
    return report, out, counting


@pytest.fixture(scope="module")
def telephone_audit(embedder, core_settings, cache_dir, tmp_path_factory, shared_data):
    out = tmp_path_factory.mktemp("telephone-audit")
    report, _ = _audit(embedder, core_settings, cache_dir, out, "telephone")
    return report


@pytest.fixture(scope="module")
def small_cohort_file(embedder, core_settings, tmp_path_factory, shared_data):
    """A 30-speaker clean cohort (first seconds of speech only), to keep the model work small."""
    from biometrics.voice.pipeline import Channel, build_cohort

    folder = tmp_path_factory.mktemp("cohort-speech")
    for source in sorted(COHORT_DIR.glob("*.flac"))[:30]:
        (folder / source.name).symlink_to(source)
    cohort = build_cohort(embedder, folder, core_settings, Channel.CLEAN, max_speech_s=COHORT_SPEECH_S)
    path = tmp_path_factory.mktemp("cohort") / "clean.npz"
    cohort.save(path)
    return path


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    verbs = parser.add_subparsers(dest="verb")
    add_audit_commands(verbs.add_parser("audit").add_subparsers(dest="action"))
    return parser


def test_clean_speech_audit_has_eer_at_most_one_percent(clean_audit):
    report, _, counting = clean_audit
    assert report.eer <= 0.01
    assert report.channel == "clean" and report.scoring.method == "cosine"
    assert counting.analysed == 100  # the cache was empty: every file analysed once
    assert report.cache.writes == 100


def test_telephone_audit_has_eer_at_most_three_percent(telephone_audit):
    assert telephone_audit.eer <= 0.03
    assert telephone_audit.channel == "telephone"


def test_the_audit_reports_the_services_own_operating_point_with_intervals(clean_audit, telephone_audit):
    for report, channels in ((clean_audit[0], "wideband/wideband"), (telephone_audit, "telephone/telephone")):
        point = report.operating_point
        assert point.channels == channels and point.source == "cohort" and point.target_fmr == 0.001
        assert point.threshold == report.scoring.configured_threshold
        assert (
            point.fmr_ci95[0] <= point.fmr <= point.fmr_ci95[1]
            and point.fnmr_ci95[0] <= point.fnmr <= point.fnmr_ci95[1]
        )
        assert point.resolvable_fmr == 1 / report.impostor_trials and point.cohort_impostor_trials == 251 * 250


def test_a_mixed_audit_scores_callers_against_wideband_enrolments(
    clean_audit, telephone_audit, embedder, core_settings, cache_dir, tmp_path
):
    report, counting = _audit(embedder, core_settings, cache_dir, tmp_path, "mixed")
    assert counting.analysed == 0  # both channels' analyses come from the cache the other audits filled
    assert report.channel == "mixed" and report.operating_point.channels == "wideband/telephone"
    assert (report.mixed.direct.channels, report.mixed.telephone_twin.channels) == (
        "wideband/telephone",
        "telephone/telephone",
    )
    assert report.mixed.direct.eer == report.eer
    assert AccuracyReport.from_dict(json.loads((tmp_path / "report.json").read_text())) == report


def test_report_json_holds_every_required_figure(clean_audit, embedder):
    report = json.loads((clean_audit[1] / "report.json").read_text())
    assert not REQUIRED_KEYS - set(report)
    assert set(report["min_dcf"]) == {"0.01", "0.001"}
    assert set(report["fnmr_at_fmr"]) == {"0.01", "0.001", "0.0001"}
    for point in report["fnmr_at_fmr"].values():
        low, high = point["ci95"]
        assert 0 <= low <= high <= 1
    assert report["model_fingerprint"] == embedder.fingerprint
    assert report["precision"] == embedder.precision  # recorded beside the fingerprint
    assert len(report["dataset_sha256"]) == 64
    assert report["genuine_trials"] == len(report["scores"]["genuine"]) > 0
    assert report["impostor_trials"] == len(report["scores"]["impostor"]) > 0
    # every test-other utterance can enrol alone; the verification gates refuse those under 3 s of speech
    acquisition = report["failures"]["acquisition"]
    assert report["fte"] == 0.0
    assert report["fta"] == acquisition["failed"] / acquisition["samples"] > 0
    assert set(acquisition["reasons"]) == {"TOO_SHORT"}
    assert report["counts"]["excluded_genuine_trials"] > 0  # trials with a refused test sample are not scored
    assert {row["kind"] for row in report["threshold_table"]} == {"fmr", "eer", "configured"}


def test_an_ordinary_dataset_is_audited_on_every_pair(clean_audit):
    report = clean_audit[0]
    trials = report.dataset.trials
    assert not trials["genuine_sampled"] and not trials["impostors_sampled"]
    assert report.counts.genuine_trials == trials["genuine_pairs_available"] == 10 * 45
    assert report.counts.impostor_trials == trials["impostor_pairs_available"] == 100 * 99 // 2 - 450


def test_report_json_reads_back_as_the_report_written(clean_audit):
    report, out, _ = clean_audit
    assert AccuracyReport.from_dict(json.loads((out / "report.json").read_text())) == report


def test_report_html_embeds_the_det_curve_and_how_to_reproduce(clean_audit):
    report, out, _ = clean_audit
    page = (out / "report.html").read_text()
    assert '<img alt="DET curve" src="data:image/png;base64,' in page
    assert "score histograms" in page
    assert report.dataset_sha256 in page and "bioident audit run ..." in page


def test_a_second_run_with_as_norm_reuses_every_cached_embedding(
    clean_audit, small_cohort_file, cache_dir, tmp_path, embedder, monkeypatch
):
    from biometrics.evaluation import cli

    counting = CountingEmbedder(embedder)
    monkeypatch.setattr(cli, "_embedder", lambda settings: counting)
    out = tmp_path / "as-norm"
    argv = ["audit", "run", "--dataset", str(TEST_OTHER), "--out", str(out), "--cohort", str(small_cohort_file)]
    args = _parser().parse_args([*argv, "--cache-dir", str(cache_dir), "--quiet"])
    assert args.run(args) == 0
    assert counting.analysed == 0
    report = json.loads((out / "report.json").read_text())
    assert report["cache"]["hits"] == 100 and report["cache"]["misses"] == 0
    assert report["scoring"]["method"] == "as-norm" and report["scoring"]["cohort"]["size"] == 30
    assert report["dataset_sha256"] == clean_audit[0].dataset_sha256
    assert report["eer"] <= 0.01
    assert f"--cohort {small_cohort_file}" in report["command"]


def test_calibrate_writes_the_threshold_for_the_target_fmr(clean_audit):
    report, out, _ = clean_audit
    args = _parser().parse_args(["audit", "calibrate", "--report", str(out), "--target-fmr", "0.001"])
    assert args.run(args) == 0
    calibration = Calibration.load(out / "calibration.json")
    assert calibration.threshold == pytest.approx(report.fnmr_at_fmr["0.001"].threshold, abs=1e-5)
    assert calibration.method == "cosine" and calibration.model_fingerprint == report.model_fingerprint
    assert calibration.llr(max(report.scores.genuine)) > 0 > calibration.llr(min(report.scores.impostor))
