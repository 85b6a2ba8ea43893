"""Verification as a library call: analyse, quality reasons, verdict, written once for the CLI and the service."""

from __future__ import annotations

import json

import pytest

from biometrics.cli import main
from biometrics.voice.verification import VoiceVerifier
from tests.conftest import FSDD, TEST_OTHER

pytestmark = pytest.mark.model

SAME_A = TEST_OTHER / "1688" / "1688-142285-0000.flac"
SAME_B = TEST_OTHER / "1688" / "1688-142285-0003.flac"
OTHER = TEST_OTHER / "2033" / "2033-164914-0002.flac"
TOO_SHORT = FSDD / "4_theo_0.wav"


@pytest.fixture(scope="module")
def verifier(embedder, core_settings) -> VoiceVerifier:
    return VoiceVerifier.from_settings(core_settings, embedder=embedder)


def test_the_same_speaker_is_accepted_and_another_rejected(verifier, shared_data):
    same = verifier.verify_files(SAME_A, SAME_B)
    other = verifier.verify_files(SAME_A, OTHER)
    assert same.verdict.decision == "accept" and same.reference.reasons == same.probe.reasons == []
    assert other.verdict.decision == "reject" and other.verdict.score < same.verdict.score
    assert same.verdict.method == "cosine" and same.probe.net_speech_s > 3


def test_a_quality_reason_on_either_side_rejects_whatever_the_score(verifier, shared_data):
    short_reference = verifier.verify_files(TOO_SHORT, SAME_A)
    assert [r.code for r in short_reference.reference.reasons] in (["TOO_SHORT"], ["NO_SPEECH"])
    assert short_reference.probe.reasons == [] and short_reference.verdict.decision == "reject"
    short_probe = verifier.verify_files(SAME_A, TOO_SHORT)
    assert short_probe.verdict.decision == "reject" and short_probe.verdict.reasons == short_probe.probe.reasons


def test_compare_on_the_command_line_is_the_same_call(verifier, capsys, shared_data):
    assert main(["compare", str(SAME_A), str(SAME_B), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    library = verifier.verify_files(SAME_A, SAME_B).verdict
    assert printed["decision"] == library.decision and printed["score"] == pytest.approx(library.score, abs=1e-6)
    assert printed["threshold"] == library.threshold and printed["method"] == library.method
