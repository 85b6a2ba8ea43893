"""Voice activity detection with Silero VAD, whose TorchScript model ships inside the registry package."""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from biometrics.integrity import read_verified
from biometrics.torch_thread import on_torch_thread
from biometrics.voice.audio.waveform import MODEL_SAMPLE_RATE
from biometrics.voice.quality.silero_windows import WINDOW, SileroWindows

SILERO_VERSION = "6.2.3"  # the silero-vad wheel pinned in pyproject.toml

SILERO_WINDOW_SAMPLES = WINDOW  # Silero's window at 16 kHz
SILERO_JIT_SHA256 = "e1122837f4154c511485fe0b9c64455f7b929c96fbb8d79fbdb336383ebd3720"


@contextmanager
def _intra_op_threads_kept(set_to: int | None = None) -> Iterator[None]:
    """Restores torch's intra-op thread count after the block (optionally run with ``set_to`` threads)."""
    threads = torch.get_num_threads()
    if set_to is not None:
        torch.set_num_threads(set_to)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _import_silero():  # noqa: ANN202 - returns the module's function
    # Importing silero_vad calls torch.set_num_threads(1) for the whole process; undo that so the
    # speaker model keeps every core.
    with _intra_op_threads_kept():
        from silero_vad.utils_vad import get_speech_timestamps_from_probs
    return get_speech_timestamps_from_probs


@dataclass(frozen=True)
class VadSettings:
    threshold: float = 0.5
    min_speech_ms: int = 250
    min_silence_ms: int = 100
    speech_pad_ms: int = 30

    def as_dict(self) -> dict[str, float]:
        return {
            "vad": f"silero-{SILERO_VERSION}",
            "threshold": self.threshold,
            "min_speech_ms": self.min_speech_ms,
            "min_silence_ms": self.min_silence_ms,
            "speech_pad_ms": self.speech_pad_ms,
        }


class VoiceActivityDetector:
    """Finds speech segments (sample index ranges) in 16 kHz audio."""

    @on_torch_thread
    def __init__(self, settings: VadSettings | None = None) -> None:
        self.settings = settings or VadSettings()
        self._timestamps_from_probs = _import_silero()
        path = Path(str(resources.files("silero_vad.data").joinpath("silero_vad.jit")))
        self._model = torch.jit.load(io.BytesIO(read_verified(path, SILERO_JIT_SHA256)), map_location="cpu")
        self.model_sha256 = SILERO_JIT_SHA256
        self._model.eval()
        self._windows = SileroWindows(self._model)  # its weights, batched over windows: 7-10x faster

    @on_torch_thread
    def speech_segments(self, samples: np.ndarray) -> list[tuple[int, int]]:
        # Silero's get_speech_timestamps, with the window probabilities computed for the whole audio at once
        # (silero_windows: the same values to float rounding, tested) instead of one call per 32 ms window.
        return self.segments_from_probabilities(self.window_probabilities(samples), len(samples))

    @on_torch_thread
    def window_probabilities(self, samples: np.ndarray) -> list[float]:
        """Speech probability of each 32 ms window of 16 kHz ``samples``, the last one zero-padded.

        A stream computes them block by block as audio arrives (``biometrics.voice.streaming``) and finds
        its segments over all of them with ``segments_from_probabilities``.
        """
        audio = torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32))
        # Silero's operations are far too small to split across cores (its import sets one thread for that
        # reason). On one thread they start no OpenMP parallel regions, so they never wait for worker threads
        # to wake: on 2 cores, with another thread's OpenMP team alive, a 5 s call took 180 ms with two
        # threads and 28 ms with one (25 ms with either when no other team exists).
        with torch.inference_mode(), _intra_op_threads_kept(set_to=1):
            return self._windows.probabilities(audio)

    def segments_from_probabilities(self, probs: list[float], audio_length_samples: int) -> list[tuple[int, int]]:
        """Speech segments (sample ranges at 16 kHz) from window probabilities; plain Python, no torch."""
        s = self.settings
        stamps = self._timestamps_from_probs(
            probs,
            threshold=s.threshold,
            sampling_rate=MODEL_SAMPLE_RATE,
            min_speech_duration_ms=s.min_speech_ms,
            min_silence_duration_ms=s.min_silence_ms,
            speech_pad_ms=s.speech_pad_ms,
            audio_length_samples=audio_length_samples,
        )
        return [(int(t["start"]), int(t["end"])) for t in stamps]
