"""Silero's window probabilities batched over windows (silero_windows) against Silero's own window-by-window model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from biometrics.torch_thread import run_on_torch_thread
from biometrics.voice.audio import read_audio_file
from biometrics.voice.audio.resample import resample
from biometrics.voice.quality.silero_windows import SileroWindows
from biometrics.voice.quality.vad import SILERO_WINDOW_SAMPLES, VoiceActivityDetector
from tests.conftest import FSDD, TEST_OTHER

TOLERANCE = 1e-5  # float rounding: products grouped differently; Silero's thresholds are 0.5 and 0.35


@pytest.fixture(scope="module")
def vad() -> VoiceActivityDetector:
    return VoiceActivityDetector()


@pytest.fixture(scope="module")
def inputs(shared_data) -> dict[str, np.ndarray]:
    speech = read_audio_file(TEST_OTHER / "1688" / "1688-142285-0000.flac").samples
    rng = np.random.default_rng(7)
    return {
        "read speech, length not a multiple of the window": speech[: 16_000 * 6 + 123],
        "one spoken digit": read_audio_file(sorted(FSDD.glob("*.wav"))[0]).samples,
        "telephone band": resample(resample(speech, 16_000, 8_000), 8_000, 16_000),
        "speech in noise": speech + 0.05 * rng.standard_normal(len(speech)).astype(np.float32),
        "exactly one window": speech[16_000 : 16_000 + SILERO_WINDOW_SAMPLES],
        "shorter than one window": speech[16_000 : 16_000 + 100],
        "silence": np.zeros(16_000, dtype=np.float32),
    }


def _silero(vad: VoiceActivityDetector, samples: np.ndarray) -> list[float]:
    """Silero's own audio_forward: its TorchScript model once per window, state carried between them."""

    def run() -> list[float]:
        audio = torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32))
        if len(audio) < SILERO_WINDOW_SAMPLES:  # audio_forward refuses less than one window
            audio = torch.nn.functional.pad(audio, (0, SILERO_WINDOW_SAMPLES - len(audio)))
        with torch.inference_mode():
            return vad._model.audio_forward(audio[None], 16_000)[0].tolist()

    return run_on_torch_thread(run)


def test_window_probabilities_are_silero_own(vad, inputs):
    for name, samples in inputs.items():
        got, expected = vad.window_probabilities(samples), _silero(vad, samples)
        assert len(got) == len(expected) == -(-len(samples) // SILERO_WINDOW_SAMPLES), name
        assert np.abs(np.array(got) - np.array(expected)).max() < TOLERANCE, name
    speech = vad.window_probabilities(inputs["read speech, length not a multiple of the window"])
    assert max(speech) > 0.9 and max(vad.window_probabilities(inputs["silence"])) < 0.1  # not vacuous
    assert vad.window_probabilities(np.zeros(0, dtype=np.float32)) == []


def test_blocks_carry_the_recurrent_state_across(vad, inputs):
    """A long recording runs in blocks of windows; the LSTM state goes on from one block to the next."""
    samples = inputs["speech in noise"]
    windows = SileroWindows(vad._model)

    def probabilities(block_windows: int) -> list[float]:
        audio = torch.from_numpy(samples)
        return run_on_torch_thread(windows.probabilities, audio, block_windows)

    whole, in_blocks = np.array(probabilities(10_000)), np.array(probabilities(7))
    assert len(whole) > 7 * 5
    assert np.abs(whole - in_blocks).max() < 1e-6
    assert np.abs(whole - np.array(_silero(vad, samples))).max() < TOLERANCE


def test_a_silero_build_of_another_layout_is_refused(vad):
    import copy

    changed = copy.deepcopy(vad._model)
    changed._model.stft.hop_length = 64
    with pytest.raises(RuntimeError, match="layout"):
        SileroWindows(changed)


def test_more_than_one_channel_is_refused(vad):
    with pytest.raises(ValueError, match="one channel"):
        SileroWindows(vad._model).probabilities(torch.zeros(2, 1024))
