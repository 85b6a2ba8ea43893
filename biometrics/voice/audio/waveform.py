from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import numpy as np

MODEL_SAMPLE_RATE = 16_000
NARROWBAND_MAX_RATE = 8_000


class AudioChannel(StrEnum):
    """What the audio went through before it reached us, as the front end can tell from the input itself."""

    WIDEBAND = "wideband"
    TELEPHONE = "telephone"  # 8 kHz or below, or G.711 (mu-law, A-law): a phone line


@dataclass(frozen=True)
class Waveform:
    """Mono audio as float32 samples in [-1, 1], ready for the model.

    ``source_rate`` is the rate the audio arrived at (8 kHz for telephone audio);
    ``clipping_ratio`` is measured on the samples as they arrived, before any resampling,
    because resampling smears clipped peaks; ``g711`` says the audio was mu-law or A-law coded.
    """

    samples: np.ndarray
    sample_rate: int
    source_rate: int
    clipping_ratio: float = 0.0
    g711: bool = False

    @property
    def channel(self) -> AudioChannel:
        if self.g711 or self.source_rate <= NARROWBAND_MAX_RATE:
            return AudioChannel.TELEPHONE
        return AudioChannel.WIDEBAND

    @property
    def duration_s(self) -> float:
        return len(self.samples) / self.sample_rate
