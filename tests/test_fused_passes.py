"""The bf16 pass's fused element-wise kernels (biometrics/voice/model/fused_passes.py) against float64.

They are built for any x86-64 CPU, so these run everywhere, whether or not the oneDNN bf16 pass does.
"""

from __future__ import annotations

import threading

import pytest
import torch

from biometrics.voice.model.fused_passes import (
    ROW_BLOCK,
    moments,
    padded_sum,
    scaled_sums,
    segment_means,
    weighted_moments,
)
from biometrics.voice.model.packing import Segment, reflect_into_padding


def _frames(frames: int, channels: int, seed: int) -> torch.Tensor:
    """bf16 frames with channels far from zero and small spreads (where a one-pass variance about zero cancels)."""
    gen = torch.Generator().manual_seed(seed)
    spread, centre = torch.linspace(0.01, 3.0, channels), torch.linspace(0, 40, channels)
    return (torch.randn(frames, channels, generator=gen) * spread + centre).to(torch.bfloat16)


@pytest.mark.parametrize("exp_is_safe", [True, False])
def test_the_poolings_moments_of_bf16_frames_are_those_of_float64(exp_is_safe):
    """Taken by blocks of ROW_BLOCK frames in fp32, they lose nothing to float64's but the bf16 rounding.

    Sharp attention (softmax weights far from uniform), and logits beyond exp()'s range where that is allowed.
    """
    frames = 3 * ROW_BLOCK + 17
    z = _frames(frames, 96, seed=4)
    gen = torch.Generator().manual_seed(5)
    logits = (torch.randn(frames, 96, generator=gen) * 6 + (0 if exp_is_safe else 120)).to(torch.bfloat16)
    x, weights = z.double(), torch.softmax(logits.double(), dim=0)
    mean, variance = moments(z)
    assert torch.allclose(mean.double(), x.mean(dim=0), rtol=1e-6, atol=0)
    assert torch.allclose(variance.double(), x.var(dim=0, unbiased=False), rtol=1e-5, atol=0)
    w_mean, w_variance = weighted_moments(z, logits, exp_is_safe)
    expected_mean = (weights * x).sum(dim=0)
    expected_variance = (weights * (x - expected_mean).square()).sum(dim=0)
    assert torch.allclose(w_mean.double(), expected_mean, rtol=1e-6, atol=0)
    assert torch.allclose(w_variance.double(), expected_variance, rtol=1e-5, atol=0)
    # The weights matter here: the unweighted moments are far from these.
    assert not torch.allclose(w_mean, mean, rtol=1e-2)


def test_moments_over_many_frames_keep_fp32_precision():
    """A minute of frames (6,000): the blocked sums keep the errors at fp32's, not growing with the length."""
    z = _frames(6000, 64, seed=6).double()
    mean, variance = moments(z.to(torch.bfloat16))
    # Relative to the channel's level and spread: some channels' means are near zero.
    scale = z.mean(dim=0).abs() + z.std(dim=0)
    assert ((mean.double() - z.mean(dim=0)).abs() / scale).max() < 2e-7
    assert torch.allclose(variance.double(), z.var(dim=0, unbiased=False), rtol=2e-6, atol=0)


def test_exp_is_within_two_ulp_of_float64_over_fp32s_range():
    """The weights' exp() (Cephes' polynomial): logits of one frame each, so each weight is exp(logit - max)."""
    a = torch.linspace(-87.0, 0.0, 3001, dtype=torch.float32)
    logits = torch.stack((a, torch.zeros_like(a))).to(torch.bfloat16)  # frame 1 carries the max of each channel
    z = torch.stack((torch.ones_like(a), torch.zeros_like(a))).to(torch.bfloat16)
    mean, _ = weighted_moments(z, logits, exp_is_safe=False)  # mean = w / (w + 1), w = exp(a)
    w = logits[0].double().exp()
    assert torch.allclose(mean.double(), w / (w + 1), rtol=3e-7, atol=0)


def test_segment_means_of_a_packed_row():
    z = _frames(300, 48, seed=7)
    spans = [(0, 100), (100, 101), (101, 300)]
    means = segment_means(z, spans)
    for (start, end), mean in zip(spans, means, strict=True):
        assert torch.allclose(mean.double(), z[start:end].double().mean(dim=0), rtol=1e-6)


def test_the_gated_sums_write_column_slices_rounded_once_like_torch():
    """``out[span] = x * a + b_k + z * c_k`` per span in fp32, rounded to bf16 as torch rounds, into a column
    slice; the frames outside the spans and the columns beside them are left as they were."""
    wide = _frames(60, 96, seed=8)
    before = wide.clone()
    x, out = wide[:, :32], wide[:, 64:]  # x read from one column slice, written into another
    z = _frames(60, 32, seed=9)
    gen = torch.Generator().manual_seed(10)
    a, b, c = torch.randn(32, generator=gen), torch.randn(2, 32, generator=gen), torch.randn(2, 32, generator=gen)
    spans = [(5, 30), (40, 55)]
    expected = [
        (x.float()[s:e] * a + b[k] + z.float()[s:e] * c[k]).to(torch.bfloat16) for k, (s, e) in enumerate(spans)
    ]
    scaled_sums(x, a, b, z, c, spans, out)
    for (start, end), want in zip(spans, expected, strict=True):
        # fp32 arithmetic in another order can differ in its last bit, which rounding to bf16 keeps only at a tie.
        assert (out[start:end].float() - want.float()).abs().le(want.float().abs() * 2**-8).all()
        assert (out[start:end] == want).float().mean() > 0.99
    for start, end in [(0, 5), (30, 40), (55, 60)]:
        assert torch.equal(wide[start:end], before[start:end])
    assert torch.equal(wide[:, :64], before[:, :64])


def test_the_kernels_refuse_what_they_cannot_read():
    with pytest.raises(TypeError):
        moments(torch.zeros(4, 8))
    with pytest.raises(ValueError, match="contiguous"):
        moments(torch.zeros(8, 4, dtype=torch.bfloat16).t())
    z = torch.zeros(4, 8, dtype=torch.bfloat16)
    for spans in ([(2, 2)], [(0, 5)], [(-1, 2)]):
        with pytest.raises(ValueError, match="spans"):
            segment_means(z, spans)
    with pytest.raises(ValueError, match="one factor per channel"):
        scaled_sums(z, torch.ones(7), torch.ones(1, 8), z, torch.ones(1, 8), [(0, 4)], z.clone())
    with pytest.raises(ValueError, match="one factor per channel"):  # a row of factors for each span
        scaled_sums(z, torch.ones(8), torch.ones(1, 8), z, torch.ones(1, 8), [(0, 2), (2, 4)], z.clone())


def test_kernels_run_in_two_threads_at_once():
    """The service's concurrent passes call them from two threads (ctypes releases the GIL): no shared scratch."""
    z = _frames(2000, 256, seed=11)
    expected = moments(z)
    results: list[tuple[torch.Tensor, torch.Tensor]] = []
    threads = [threading.Thread(target=lambda: results.append(moments(z))) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 2
    for mean, variance in results:
        assert torch.equal(mean, expected[0]) and torch.equal(variance, expected[1])


@pytest.mark.parametrize("terms", ["copy", "sum", "scaled sum"])
def test_the_padded_input_is_torchs_reflect_padding_with_each_segments_reflections_in_the_gaps(terms):
    """Against ``packing.reflect_into_padding`` over the torch sum: three segments of a packed row with gaps."""
    pad, width = 3, 90
    segments = (Segment(0, 0, 20), Segment(0, 30, 31), Segment(0, 70, 14))  # frames 0-20, 30-61, 70-84: gaps
    x, addend = _frames(width, 24, seed=12), _frames(width, 24, seed=13)
    gen = torch.Generator().manual_seed(14)
    x_factor, factor = torch.randn(24, generator=gen), torch.randn(24, generator=gen)
    expected = torch.empty(width + 2 * pad, 24, dtype=torch.bfloat16)
    if terms == "copy":
        middle, out = x, padded_sum(x, pad, [(s.start, s.end) for s in segments])
    elif terms == "sum":
        middle = (x.float() + addend.float() * factor).to(torch.bfloat16)
        out = padded_sum(x, pad, [(s.start, s.end) for s in segments], None, addend, factor)
    else:
        middle = (x.float() * x_factor + addend.float() * factor).to(torch.bfloat16)
        out = padded_sum(x, pad, [(s.start, s.end) for s in segments], x_factor, addend, factor)
    expected[pad : pad + width] = middle
    reflect_into_padding(expected[None], pad, segments, time_major=True)
    # A sum's last bit can differ where fp32 rounding in another order meets a bf16 tie.
    assert (out.float() - expected.float()).abs().le(expected.float().abs() * 2**-8).all()
    assert (out == expected).float().mean() > 0.99
    if terms == "copy":
        assert torch.equal(out, expected)


def test_padding_refuses_rows_too_short_to_reflect():
    with pytest.raises(ValueError, match="reflect padding"):
        padded_sum(torch.zeros(3, 4, dtype=torch.bfloat16), 3, None)
    with pytest.raises(ValueError, match="outside the frames"):  # a segment ending at frame 1 has nothing to reflect
        padded_sum(torch.zeros(10, 4, dtype=torch.bfloat16), 2, [(0, 1), (5, 10)])


def test_padding_takes_input_of_any_layout_and_dtype():
    """The first layer's features come as fp32, and a caller may hand over a transposed view."""
    features = torch.randn(20, 90, generator=torch.Generator().manual_seed(15)).t()  # [90 frames, 20], strided
    expected = torch.empty(96, 20, dtype=torch.bfloat16)
    expected[3:93] = features.to(torch.bfloat16)
    reflect_into_padding(expected[None], 3, None, time_major=True)
    assert torch.equal(padded_sum(features, 3, None), expected)
    with pytest.raises(ValueError, match="without an addend"):
        padded_sum(features, 3, None, factor=torch.ones(20))


def test_a_nan_stays_a_nan_when_rounded_to_bf16():
    """Rounding a NaN's bits to nearest must not carry it into the sign bit (0x7FFFFFFF would become -0)."""
    x = torch.zeros(1, 4, dtype=torch.bfloat16)
    out = torch.zeros(1, 4, dtype=torch.bfloat16)
    constants = torch.tensor([[float("nan"), 1.0, -2.0, 0.0]])
    constants.view(torch.int32)[0, 0] = 0x7FFFFFFF  # the NaN whose rounding overflows
    scaled_sums(x, torch.ones(4), constants, x, torch.ones(1, 4), [(0, 1)], out)
    assert torch.isnan(out[0, 0]) and out[0, 1:].tolist() == [1.0, -2.0, 0.0]
