"""The faster CPU kernels compute what SpeechBrain's own modules compute (randomly initialised, no weights needed)."""

from __future__ import annotations

import copy

import pytest
import torch
from speechbrain.lobes.models.ECAPA_TDNN import (
    ECAPA_TDNN,
    AttentiveStatisticsPooling,
    Res2NetBlock,
    SERes2NetBlock,
    TDNNBlock,
)

from biometrics.voice.model.allocator import keep_freed_memory
from biometrics.voice.model.cpu_kernels import (
    ROW_ALIGN_FLOATS,
    STACK_TAPS_BELOW_CHANNELS,
    ContextFoldedPooling,
    FusedRes2NetBlock,
    FusedSERes2NetBlock,
    FusedTDNNBlock,
    GemmConv1d,
    flush_denormal_weights,
    make_segment_aware,
    speed_up_for_cpu,
)
from biometrics.voice.model.packing import reflect_into_gaps
from tests.model_helpers import randomise_batch_norms


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def assert_same_outputs(module: torch.nn.Module, expected_module: torch.nn.Module, x: torch.Tensor) -> None:
    with torch.inference_mode():
        got, expected = module(x), expected_module(x)
    assert got.shape == expected.shape
    assert _relative_error(got, expected) < 1e-5


# Inputs with fewer channels than STACK_TAPS_BELOW_CHANNELS take one GEMM over stacked taps; others one per tap.
CHANNELS = pytest.mark.parametrize("channels", [48, STACK_TAPS_BELOW_CHANNELS], ids=["stacked-taps", "gemm-per-tap"])


@CHANNELS
@pytest.mark.parametrize(("kernel", "dilation"), [(1, 1), (3, 2), (3, 4), (5, 1)])
def test_gemm_convolution_equals_torch_convolution(kernel, dilation, channels):
    gen = torch.Generator().manual_seed(kernel * 10 + dilation)
    conv = torch.nn.Conv1d(channels, 40, kernel, dilation=dilation)
    expected_module = copy.deepcopy(conv)
    assert GemmConv1d.swap_in(conv)
    # A strided (non-contiguous) input, as SpeechBrain's chunked Res2Net blocks pass.
    x = torch.randn(3, 2 * channels, 70, generator=gen)[:, ::2]
    assert_same_outputs(conv, expected_module, x)
    assert set(conv.state_dict()) == set(expected_module.state_dict())


@pytest.mark.parametrize(("kernel", "dilation"), [(1, 1), (3, 2), (5, 1)])
def test_a_bf16_gemm_convolution_takes_every_tap_in_one_product_and_answers_in_fp32(kernel, dilation):
    gen = torch.Generator().manual_seed(kernel * 10 + dilation)
    conv = torch.nn.Conv1d(STACK_TAPS_BELOW_CHANNELS, 40, kernel, dilation=dilation)
    expected_module = copy.deepcopy(conv)
    assert GemmConv1d.swap_in(conv, torch.bfloat16)
    assert len(conv._taps) == 1 and conv._taps[0].dtype == torch.bfloat16  # one product, so one rounding
    x = torch.randn(3, 2 * STACK_TAPS_BELOW_CHANNELS, 70, generator=gen)[:, ::2]
    with torch.inference_mode():
        got, expected = conv(x), expected_module(x)
        # What bf16 operands with fp32 accumulation give: the exact products of the rounded operands,
        # rounded to bf16 once, the bias added in fp32.
        rounded = torch.nn.functional.conv1d(
            x.bfloat16().float(), expected_module.weight.bfloat16().float(), dilation=dilation
        )
        reference = rounded.bfloat16().float() + expected_module.bias[:, None]
    assert got.dtype == torch.float32 and got.shape == expected.shape
    assert _relative_error(got, reference) < 2**-8  # at most about one bf16 rounding apart
    assert 1e-5 < _relative_error(got, expected) < 2e-2


def test_gemm_convolution_rows_start_on_cache_line_boundaries():
    conv = torch.nn.Conv1d(8, 8, 3)
    assert GemmConv1d.swap_in(conv)
    with torch.inference_mode():
        out = conv(torch.randn(2, 8, 45))
    assert out.shape == (2, 8, 43)
    assert out.stride(1) % ROW_ALIGN_FLOATS == 0 and out.stride(1) >= 43


@CHANNELS
@pytest.mark.parametrize(("kernel", "dilation"), [(1, 1), (3, 3), (5, 1)])
def test_fused_tdnn_block_equals_speechbrains_conv_relu_batch_norm(kernel, dilation, channels):
    gen = torch.Generator().manual_seed(kernel + dilation)
    block = TDNNBlock(channels, 40, kernel_size=kernel, dilation=dilation).eval()
    randomise_batch_norms(block, gen)
    expected_module = copy.deepcopy(block)
    assert GemmConv1d.swap_in(block.conv.conv) and FusedTDNNBlock.swap_in(block)
    assert bool((block.norm.norm.weight < 0).any())
    x = torch.randn(3, channels, 57, generator=gen)
    assert_same_outputs(block, expected_module, x)
    assert set(block.state_dict()) == set(expected_module.state_dict())


def test_fused_tdnn_block_needs_a_gemm_convolution_and_eval_mode():
    assert not FusedTDNNBlock.swap_in(TDNNBlock(8, 8, kernel_size=3, dilation=1).eval())
    training = TDNNBlock(8, 8, kernel_size=3, dilation=1)
    assert GemmConv1d.swap_in(training.conv.conv)
    assert not FusedTDNNBlock.swap_in(training)


@pytest.mark.parametrize("gap_padding", [False, True], ids=["speechbrain-padding", "gap-reflecting-padding"])
def test_fused_res2net_block_equals_speechbrains(gap_padding):
    gen = torch.Generator().manual_seed(9)
    block = Res2NetBlock(32, 32, scale=4, kernel_size=3, dilation=2).eval()
    randomise_batch_norms(block, gen)
    expected_module = copy.deepcopy(block)
    if gap_padding:
        assert reflect_into_gaps(block) == 2
    assert all(GemmConv1d.swap_in(b.conv.conv) and FusedTDNNBlock.swap_in(b) for b in block.blocks)
    assert FusedRes2NetBlock.swap_in(block)
    x = torch.randn(2, 64, 41, generator=gen)[:, ::2]  # strided, as the block's input is
    assert_same_outputs(block, expected_module, x)


def test_fused_se_res2net_block_equals_speechbrains_on_mixed_lengths():
    gen = torch.Generator().manual_seed(5)
    block = SERes2NetBlock(32, 32, res2net_scale=4, se_channels=8, kernel_size=3, dilation=2).eval()
    randomise_batch_norms(block, gen)
    expected_module = copy.deepcopy(block)
    assert FusedSERes2NetBlock.swap_in(block)
    x = torch.randn(3, 32, 40, generator=gen)
    with torch.inference_mode():
        for lengths in (torch.tensor([1.0, 29.5 / 40, 10.5 / 40]), None):
            got, expected = block(x, lengths), expected_module(x, lengths)
            # Every frame, padding included: the next block's convolutions read the padding too.
            assert _relative_error(got, expected) < 1e-5


def test_malloc_is_told_to_keep_freed_activation_memory():
    """glibc accepts both settings (it refuses an mmap threshold above its ceiling)."""
    assert keep_freed_memory()


def test_gemm_convolution_is_only_swapped_in_where_it_computes_the_same():
    assert not GemmConv1d.swap_in(torch.nn.Conv1d(8, 8, 3, stride=2))
    assert not GemmConv1d.swap_in(torch.nn.Conv1d(8, 8, 3, padding=1))
    assert not GemmConv1d.swap_in(torch.nn.Conv1d(8, 8, 3, groups=2))
    assert not GemmConv1d.swap_in(torch.nn.Conv1d(8, 8, 3, bias=False))


@pytest.mark.parametrize("channel_block", [512, 24], ids=["one-block", "ragged-blocks"])
@pytest.mark.parametrize("logit_scale", [1.0, 400.0], ids=["exp-safe", "max-subtracted"])
def test_context_folded_pooling_equals_speechbrain_pooling_on_mixed_lengths(logit_scale, channel_block):
    torch.manual_seed(0)
    pooling = AttentiveStatisticsPooling(64, attention_channels=16).eval()
    with torch.no_grad():  # give batch norm non-trivial statistics
        pooling.tdnn.norm.norm.running_mean.uniform_(-0.5, 0.5)
        pooling.tdnn.norm.norm.running_var.uniform_(0.5, 2.0)
        pooling.conv.conv.weight.mul_(logit_scale)  # large enough, exp() of the raw logits would overflow
    expected_module = copy.deepcopy(pooling)
    assert ContextFoldedPooling.swap_in(pooling)
    assert pooling._exp_is_safe == (logit_scale == 1.0)
    pooling.channel_block = channel_block  # 64 channels: one block, or blocks of 24, 24 and 16
    x = torch.randn(3, 64, 50)
    lengths = torch.tensor([1.0, 37.5 / 50, 12.5 / 50])
    with torch.inference_mode():
        for rel in (lengths, None):
            got, expected = pooling(x, rel), expected_module(x, rel)
            assert got.shape == expected.shape == (3, 128, 1)
            assert bool(torch.isfinite(got).all())
            assert _relative_error(got, expected) < 1e-5


def test_flushing_denormal_weights_zeroes_only_subnormal_values():
    layer = torch.nn.Linear(4, 3)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1e-39, -2e-40, 0.5, 0.0], [1e-30, 1.0, -1e-39, 2.0], [3.0] * 4]))
    assert flush_denormal_weights(layer) == 3
    assert layer.weight[0].tolist() == [0.0, 0.0, 0.5, 0.0]
    assert layer.weight[1, 0].item() == pytest.approx(1e-30)
    assert layer.weight[1, 2].item() == 0.0


def test_folding_a_batch_norm_into_a_convolution_leaves_no_subnormal_weights():
    block = TDNNBlock(4, 2, kernel_size=1, dilation=1).eval()
    with torch.no_grad():
        block.conv.conv.weight.fill_(2e-38)  # normal, but a batch-norm scale below 0.58 makes it subnormal
        block.norm.norm.weight.fill_(0.25)
    assert flush_denormal_weights(block) == 0
    assert GemmConv1d.swap_in(block.conv.conv) and FusedTDNNBlock.swap_in(block)
    taps = block.conv.conv._taps
    assert all(bool((t == 0).all()) for t in taps)
    assert block.conv.conv.weight[0, 0, 0].item() == pytest.approx(2e-38)  # the module's own weights are kept


def test_the_poolings_cached_weights_hold_no_subnormals():
    pooling = AttentiveStatisticsPooling(8, attention_channels=4).eval()
    with torch.no_grad():
        pooling.tdnn.conv.conv.weight[0, 0, 0] = 1e-39
    assert ContextFoldedPooling.swap_in(pooling)
    assert pooling._frame_weight_t[0, 0].item() == 0.0
    assert pooling.tdnn.conv.conv.weight[0, 0, 0].item() != 0.0  # the module's own weights are kept


def test_a_gemm_convolution_flushes_a_copy_of_its_taps_not_the_modules_weight():
    conv = torch.nn.Conv1d(4, 2, 1)
    with torch.no_grad():
        conv.weight[0, 0, 0] = 1e-39
    assert GemmConv1d.swap_in(conv)
    assert conv._taps[0][0, 0].item() == 0.0 and conv.weight[0, 0, 0].item() != 0.0


def test_a_sped_up_ecapa_gives_speechbrains_outputs_for_a_batch_of_mixed_lengths():
    torch.manual_seed(1)
    model = ECAPA_TDNN(
        input_size=20, channels=[64, 64, 64, 64, 192], attention_channels=16, lin_neurons=24, res2net_scale=4
    ).eval()
    randomise_batch_norms(model, torch.Generator().manual_seed(2))
    expected_module = copy.deepcopy(model)
    changes = {**make_segment_aware(model), **speed_up_for_cpu(model)}
    assert changes["pooling"] == 1 and changes["gemm_convolutions"] > 10
    assert changes["fused_tdnn_blocks"] == 1 + 3 * (2 + 3) + 1 and changes["fused_se_blocks"] == 3
    assert changes["fused_res2net_blocks"] == 3 and changes["aggregating_models"] == 1
    x = torch.randn(2, 60, 20)
    lengths = torch.tensor([1.0, 0.75])
    with torch.inference_mode():
        assert _relative_error(model(x, lengths), expected_module(x, lengths)) < 1e-6


def test_the_cpu_kernels_are_for_inference_only():
    with pytest.raises(ValueError, match="eval"):
        speed_up_for_cpu(ECAPA_TDNN(input_size=20, channels=[16, 16, 16, 16, 48], lin_neurons=8).train())
