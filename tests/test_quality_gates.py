"""Quality gates on real speech: how much speech, how noisy, how clipped."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from biometrics.voice.audio import read_audio_file
from biometrics.voice.audio.resample import resample
from biometrics.voice.audio.waveform import Waveform
from biometrics.voice.quality.gates import (
    QualityLimits,
    QualityMeasures,
    ReasonCode,
    enrolment_reasons,
    verification_reasons,
)
from biometrics.voice.quality.measures import estimate_snr_db, speech_mask
from biometrics.voice.quality.vad import VoiceActivityDetector
from tests.conftest import FSDD, TEST_OTHER

LIMITS = QualityLimits(min_verify_speech_s=3.0, min_enrol_speech_s=12.0, min_snr_db=8.0, max_clipping_ratio=0.01)


@pytest.fixture(scope="module")
def vad() -> VoiceActivityDetector:
    return VoiceActivityDetector()


@pytest.fixture(scope="module")
def utterance(shared_data) -> Waveform:
    return read_audio_file(TEST_OTHER / "1688" / "1688-142285-0000.flac")


def _measures(vad: VoiceActivityDetector, waveform: Waveform) -> QualityMeasures:
    segments = vad.speech_segments(waveform.samples)
    return QualityMeasures(
        duration_s=waveform.duration_s,
        net_speech_s=sum(e - s for s, e in segments) / waveform.sample_rate,
        snr_db=estimate_snr_db(waveform.samples, segments, waveform.sample_rate),
        clipping_ratio=waveform.clipping_ratio,
    )


def test_read_speech_passes_the_verification_gate(vad, utterance):
    measures = _measures(vad, utterance)
    assert 0.5 * utterance.duration_s < measures.net_speech_s <= utterance.duration_s
    assert verification_reasons(measures, LIMITS) == []


def test_silence_is_refused_as_no_speech(vad):
    silence = Waveform(np.zeros(16_000 * 4, dtype=np.float32), 16_000, 16_000)
    reasons = verification_reasons(_measures(vad, silence), LIMITS)
    assert [r.code for r in reasons] == [ReasonCode.NO_SPEECH]
    assert reasons[0].measured == 0.0


def test_two_spoken_digits_are_too_short_to_verify(vad, shared_data):
    clip = np.concatenate([sf.read(FSDD / f"{d}_george_0.wav", dtype="float32")[0] for d in (3, 7)])
    waveform = Waveform(resample(clip, 8_000, 16_000), 16_000, 8_000)
    reasons = verification_reasons(_measures(vad, waveform), LIMITS)
    assert reasons and reasons[0].code is ReasonCode.TOO_SHORT
    assert 0 < reasons[0].measured < 3.0 and reasons[0].limit == 3.0


# The recording has its own faint noise, so only added noise well above it sets the true ratio.
@pytest.mark.parametrize("snr_db", [0.0, 5.0, 10.0])
def test_snr_estimate_tracks_added_white_noise(vad, utterance, snr_db):
    speech = utterance.samples
    segments = vad.speech_segments(speech)
    speech_power = float(np.mean(speech[speech_mask(segments, len(speech))] ** 2))
    noise = np.random.default_rng(7).standard_normal(len(speech)) * np.sqrt(speech_power / 10 ** (snr_db / 10))
    noisy = (speech + noise).astype(np.float32)
    estimate = estimate_snr_db(noisy, vad.speech_segments(noisy), 16_000)
    assert abs(estimate - snr_db) < 2.0


def test_speech_in_loud_noise_is_refused_as_too_noisy(vad, utterance):
    noise = np.random.default_rng(1).standard_normal(len(utterance.samples)) * np.std(utterance.samples)
    noisy = Waveform((utterance.samples + noise).astype(np.float32), 16_000, 16_000)
    codes = [r.code for r in verification_reasons(_measures(vad, noisy), LIMITS)]
    assert ReasonCode.TOO_NOISY in codes


def test_clipped_recording_is_refused_as_clipped(vad, utterance, tmp_path):
    loud = np.clip(utterance.samples * 20, -1, 1)
    path = tmp_path / "clipped.wav"
    sf.write(path, loud, 16_000, subtype="PCM_16")
    reasons = verification_reasons(_measures(vad, read_audio_file(path)), LIMITS)
    clipped = [r for r in reasons if r.code is ReasonCode.CLIPPED]
    assert clipped and clipped[0].measured > 0.01 and clipped[0].limit == 0.01


def test_enrolment_needs_twelve_seconds_of_usable_speech_over_all_samples():
    good = QualityMeasures(duration_s=6.0, net_speech_s=5.0, snr_db=25.0, clipping_ratio=0.0)
    noisy = QualityMeasures(duration_s=9.0, net_speech_s=8.0, snr_db=2.0, clipping_ratio=0.0)
    assert enrolment_reasons([good, good, good], LIMITS) == []
    short = enrolment_reasons([good, good], LIMITS)
    assert [(r.code, r.measured, r.limit) for r in short] == [(ReasonCode.TOO_SHORT, 10.0, 12.0)]
    # A noisy sample's speech does not count towards the total.
    assert enrolment_reasons([good, noisy], LIMITS)[0].measured == 5.0


def test_limits_come_from_bioident_settings(monkeypatch):
    monkeypatch.setenv("BIOIDENT_MIN_VERIFY_SPEECH_S", "1.5")
    monkeypatch.setenv("BIOIDENT_MIN_SNR_DB", "12")
    limits = QualityLimits.from_settings()
    assert limits.min_verify_speech_s == 1.5 and limits.min_snr_db == 12.0


def test_speech_segments_are_silero_get_speech_timestamps_own(vad, utterance):
    import torch
    from silero_vad.utils_vad import get_speech_timestamps

    from biometrics.torch_thread import run_on_torch_thread

    digit = read_audio_file(sorted(FSDD.glob("*.wav"))[0])
    telephone = resample(resample(utterance.samples, 16_000, 8_000), 8_000, 16_000)
    rng = np.random.default_rng(3)
    inputs = {
        "read speech, length not a multiple of the window": utterance.samples[: 16_000 * 6 + 123],
        "one spoken digit": digit.samples,
        "telephone band": telephone,
        "speech in noise": utterance.samples + 0.05 * rng.standard_normal(len(utterance.samples)).astype(np.float32),
        "shorter than one window": utterance.samples[16_000 : 16_000 + 100],
        "empty": utterance.samples[:0],
    }

    def silero(samples: np.ndarray) -> list[tuple[int, int]]:
        with torch.inference_mode():
            stamps = get_speech_timestamps(
                torch.from_numpy(np.ascontiguousarray(samples)),
                vad._model,
                threshold=vad.settings.threshold,
                sampling_rate=16_000,
                min_speech_duration_ms=vad.settings.min_speech_ms,
                min_silence_duration_ms=vad.settings.min_silence_ms,
                speech_pad_ms=vad.settings.speech_pad_ms,
            )
        return [(int(t["start"]), int(t["end"])) for t in stamps]

    for name, samples in inputs.items():
        assert vad.speech_segments(samples) == run_on_torch_thread(silero, samples), name
    assert vad.speech_segments(inputs["read speech, length not a multiple of the window"])  # not vacuous
