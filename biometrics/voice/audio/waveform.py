from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MODEL_SAMPLE_RATE = 16_000


@dataclass(frozen=True)
class Waveform:
    """Mono audio as float32 samples in [-1, 1], ready for the model.

    ``source_rate`` is the rate the audio arrived at (8 kHz for telephone audio);
    ``clipping_ratio`` is measured on the samples as they arrived, before any resampling,
    because resampling smears clipped peaks.
    """

    samples: np.ndarray
    sample_rate: int
    source_rate: int
    clipping_ratio: float = 0.0

    @property
    def duration_s(self) -> float:
        return len(self.samples) / self.sample_rate
