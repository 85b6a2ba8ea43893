from __future__ import annotations

import math

import numpy as np
import torch
import torchaudio.functional as taf

from biometrics.torch_thread import on_torch_thread

# torchaudio's defaults, repeated here only to estimate the kernel size it will build.
_LOWPASS_FILTER_WIDTH = 6
_ROLLOFF = 0.99

# About 32 MiB of float32 kernel (torchaudio builds it in float64 first, with temporaries).
MAX_KERNEL_ELEMENTS = 1 << 23


def resampling_kernel_elements(from_rate: int, to_rate: int) -> int:
    """Size of the sinc kernel torchaudio builds for this pair of rates.

    The kernel is (to/g) x (from/g + 2 * width) with g = gcd(from, to), so nearly coprime rates
    are very expensive: 8001 -> 16000 Hz needs about 2 GB and seconds per second of audio.
    """
    g = math.gcd(from_rate, to_rate)
    orig, new = from_rate // g, to_rate // g
    width = math.ceil(_LOWPASS_FILTER_WIDTH * orig / (min(orig, new) * _ROLLOFF))
    return new * (orig + 2 * width)


def is_practical_rate(from_rate: int, to_rate: int) -> bool:
    """Whether resampling between these rates stays within ``MAX_KERNEL_ELEMENTS``."""
    return from_rate == to_rate or resampling_kernel_elements(from_rate, to_rate) <= MAX_KERNEL_ELEMENTS


def resample(samples: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Band-limited resampling along the last axis; always returns float32."""
    if from_rate <= 0 or to_rate <= 0:
        raise ValueError("sample rates must be positive")
    samples = np.asarray(samples, dtype=np.float32)
    if from_rate == to_rate:
        return samples
    if not is_practical_rate(from_rate, to_rate):
        raise ValueError(f"resampling {from_rate} Hz to {to_rate} Hz would need an oversized kernel")
    if samples.shape[-1] == 0:
        return samples.copy()
    return _resample_with_torch(samples, from_rate, to_rate)


@on_torch_thread
def _resample_with_torch(samples: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    with torch.no_grad():
        out = taf.resample(torch.from_numpy(np.ascontiguousarray(samples)), from_rate, to_rate)
    return out.numpy().astype(np.float32, copy=False)
