"""The bioident command as a user runs it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from biometrics.cli import main
from tests.conftest import COHORT_DIR, FSDD, TEST_OTHER

pytestmark = pytest.mark.model

SAME_A = TEST_OTHER / "1688" / "1688-142285-0000.flac"
SAME_B = TEST_OTHER / "1688" / "1688-142285-0003.flac"
OTHER = TEST_OTHER / "2033" / "2033-164914-0002.flac"


@pytest.fixture(autouse=True)
def _one_model_per_session(monkeypatch, embedder):
    """The commands load the model as users run them (tested by ``model info`` through the same loader
    elsewhere); here each command gets the session's copy, so the suite loads the weights once."""
    import biometrics.cli

    monkeypatch.setattr(biometrics.cli, "_embedder", lambda settings: embedder)


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_model_info_prints_source_hashes_fingerprint_and_precision(capsys, embedder):
    code, out, _ = _run(capsys, "model", "info", "--json")
    info = json.loads(out)
    assert code == 0 and info["source"] == "wheel"
    assert info["files"]["embedding_model.ckpt"]["sha256"].startswith("0575cb64")
    assert info["fingerprint"].startswith("ecapa-voxceleb-")
    assert info["precision"]["in_use"] == embedder.precision and info["precision"]["setting"] == "auto"
    # bf16 runs on oneDNN's fused pass wherever oneDNN has bf16 kernels; fp32 on the eager kernels.
    from biometrics.voice.model.onednn_bf16 import onednn_bf16_available

    fused = embedder.precision == "bf16" and onednn_bf16_available()
    assert info["precision"]["kernels"] == ("onednn" if fused else "cpu_kernels")


def test_compare_accepts_the_same_speaker_and_rejects_another(capsys, shared_data):
    code, out, _ = _run(capsys, "compare", SAME_A, SAME_B, "--json")
    same = json.loads(out)
    assert code == 0 and same["decision"] == "accept" and same["method"] == "cosine"
    assert {"score", "decision", "threshold", "net_speech_s", "reasons"} <= same.keys()
    assert same["reasons"] == [] and same["net_speech_s"] > 3
    code, out, _ = _run(capsys, "compare", SAME_A, OTHER, "--json")
    other = json.loads(out)
    assert other["decision"] == "reject" and other["score"] < same["score"]


def test_compare_over_the_telephone_channel_with_an_as_norm_cohort(capsys, telephone_cohort, tmp_path):
    cohort_file = tmp_path / "cohort-telephone.npz"
    telephone_cohort.save(cohort_file)
    code, out, err = _run(capsys, "compare", SAME_A, SAME_B, "--telephone", "--cohort", cohort_file, "--json")
    result = json.loads(out)
    assert code == 0 and result["method"] == "as-norm" and result["channel"] == "telephone"
    assert result["decision"] == "accept" and "warning" not in err


def test_compare_reports_too_short_speech_as_a_reason(capsys, tmp_path, shared_data):
    import soundfile as sf

    samples, rate = sf.read(SAME_B, dtype="float32")
    short = tmp_path / "short.wav"
    sf.write(short, samples[int(1.0 * rate) : int(3.0 * rate)], rate)
    code, out, _ = _run(capsys, "compare", SAME_A, short, "--json")
    result = json.loads(out)
    assert code == 0 and result["decision"] == "reject"
    assert [r["code"] for r in result["reasons"] if r["sample"] == "b"] == ["TOO_SHORT"]


def test_compare_exits_non_zero_when_a_file_holds_no_usable_speech(capsys, shared_data):
    code, out, _ = _run(capsys, "compare", SAME_A, FSDD / "4_theo_0.wav", "--json")
    result = json.loads(out)
    assert code == 1 and result["decision"] == "reject"
    assert [r["code"] for r in result["reasons"] if r["sample"] == "b"] == ["NO_SPEECH"]


def test_compare_applies_the_codec_to_the_test_file_only(capsys, tmp_path, shared_data):
    from biometrics.voice.audio import RawCodec, encode_raw, read_audio_file
    from biometrics.voice.audio.resample import resample

    speech = read_audio_file(SAME_B)
    call = tmp_path / "call.ulaw"
    call.write_bytes(encode_raw(resample(speech.samples, 16_000, 8_000), 8_000, RawCodec.MULAW))
    code, out, _ = _run(capsys, "compare", SAME_A, call, "--codec", "mulaw", "--rate", "8000", "--json")
    result = json.loads(out)
    assert code == 0 and result["decision"] == "accept" and result["reasons"] == []
    code, out, _ = _run(capsys, "compare", call, SAME_A, "--enrol-codec", "mulaw", "--enrol-rate", "8000", "--json")
    assert code == 0 and json.loads(out)["decision"] == "accept"


def test_a_wav_file_declared_as_raw_telephone_audio_is_an_input_error(capsys, shared_data):
    wav = FSDD / "4_theo_0.wav"
    code, out, err = _run(capsys, "compare", SAME_A, wav, "--codec", "mulaw", "--rate", "8000")
    assert code == 2 and out == "" and "without a codec" in err


def test_bad_audio_is_a_clear_error_without_a_traceback(capsys, tmp_path):
    not_audio = tmp_path / "notes.wav"
    not_audio.write_text("this is a text file")
    code, out, err = _run(capsys, "compare", SAME_A, not_audio)
    assert code == 2 and out == ""
    assert err.startswith("bioident: error:") and "Traceback" not in err
    code, _, err = _run(capsys, "compare", SAME_A, tmp_path / "missing.wav")
    assert code == 2 and "missing.wav" in err
    code, _, err = _run(capsys, "embed", SAME_A, "--codec", "mulaw")
    assert code == 2 and "--rate" in err


def test_embed_writes_json_lines_and_an_npz(capsys, tmp_path):
    out_file = tmp_path / "emb.npz"
    code, out, _ = _run(capsys, "embed", SAME_A, OTHER, "--json", "--out", out_file)
    rows = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and len(rows) == 2 and len(rows[0]["embedding"]) == 192
    saved = np.load(out_file)
    assert saved["embeddings"].shape == (2, 192)


def test_raw_telephone_audio_with_declared_codec_and_rate(capsys, tmp_path):
    from biometrics.voice.audio import RawCodec, encode_raw, read_audio_file
    from biometrics.voice.audio.resample import resample

    speech = read_audio_file(SAME_B)
    raw = tmp_path / "call.ulaw"
    raw.write_bytes(encode_raw(resample(speech.samples, 16_000, 8_000), 8_000, RawCodec.MULAW))
    code, out, _ = _run(capsys, "embed", raw, "--codec", "mulaw", "--rate", "8000", "--json")
    assert code == 0 and json.loads(out)["net_speech_s"] > 3


def test_cohort_build_writes_a_cohort_file(capsys, tmp_path, shared_data):
    folder = tmp_path / "speech"
    folder.mkdir()
    for path in sorted(COHORT_DIR.glob("*.flac"))[:3]:
        shutil.copy(path, folder / path.name)
    target = tmp_path / "cohort.npz"
    code, out, _ = _run(capsys, "cohort", "build", folder, "--out", target, "--max-speech-s", "2")
    assert code == 0 and "cohort of 3" in out
    code, out, _ = _run(capsys, "cohort", "info", target)
    assert json.loads(out)["size"] == 3
    code, _, err = _run(capsys, "cohort", "build", tmp_path / "nowhere", "--out", target)
    assert code == 2 and "not a directory" in err


def test_the_console_script_is_installed():
    bioident = Path(sys.executable).parent / "bioident"  # installed beside the interpreter running the tests
    result = subprocess.run([str(bioident), "--help"], capture_output=True, text=True, check=False)
    assert result.returncode == 0 and "compare" in result.stdout


@pytest.mark.parametrize("command", [["erasure", "status"], ["retention", "run", "--dry-run"]])
def test_the_service_cli_names_a_bad_setting_without_a_traceback_or_its_value(command, tmp_path, monkeypatch, capsys):
    from service.cli import main as service_main

    monkeypatch.setenv("BIOIDENT_DATABASE_URL", f"sqlite:///{tmp_path / 'db.sqlite'}")
    monkeypatch.setenv("BIOIDENT_PRECISION", "fp8-secret")
    assert service_main(command) == 2
    err = capsys.readouterr().err
    assert err.startswith("bioident: error: BIOIDENT_PRECISION:") and "Traceback" not in err
    assert "fp8-secret" not in err


@pytest.mark.parametrize("threshold", ["nan", "inf", "-inf", "half"])
def test_compare_refuses_a_threshold_that_is_not_a_finite_number(capsys, shared_data, threshold):
    enrol = TEST_OTHER / "1688" / "1688-142285-0000.flac"
    with pytest.raises(SystemExit) as exited:
        main(["compare", str(enrol), str(enrol), f"--threshold={threshold}"])
    assert exited.value.code == 2 and "not a finite number" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("variable", "value"),
    [("BIOIDENT_COSINE_THRESHOLD", "nan"), ("BIOIDENT_COSINE_THRESHOLD", "5"), ("BIOIDENT_ASNORM_THRESHOLD", "inf")],
)
def test_a_threshold_setting_that_no_score_can_meet_is_refused(monkeypatch, variable, value):
    from pydantic import ValidationError

    from biometrics.settings import CoreSettings

    monkeypatch.setenv(variable, value)
    with pytest.raises(ValidationError):
        CoreSettings(_env_file=None)
