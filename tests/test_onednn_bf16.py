"""The bf16 pass on oneDNN's fused kernels (biometrics/voice/model/onednn_bf16.py) against SpeechBrain's own modules.

Random small ECAPA-TDNNs with randomised batch norms (negative and zero scales, as in the VoxCeleb checkpoint):
every batch norm is carried to the layers that read it rather than folded, so these are what could go wrong.
The real model's fidelity on real speech is tests/test_precision.py's (its ``embedder`` runs this pass on a CPU
with native bf16).
"""

from __future__ import annotations

import copy

import pytest
import torch
from speechbrain.lobes.models.ECAPA_TDNN import ECAPA_TDNN, TDNNBlock

from biometrics.voice.model import onednn_bf16
from biometrics.voice.model.cpu_kernels import make_segment_aware, speed_up_for_cpu
from biometrics.voice.model.onednn_bf16 import (
    WIDTH_STEP,
    OneDnnBf16ECAPA,
    onednn_bf16_available,
)
from biometrics.voice.model.packing import pack, packed, reflect_into_gaps
from tests.model_helpers import randomise_batch_norms, relative_errors

needs_onednn = pytest.mark.skipif(not onednn_bf16_available(), reason="this PyTorch has no oneDNN bf16 kernels here")

# |error| / |how far the output moves for other input|: bf16 gives 0.02-0.05 on these models; a batch norm's
# shift or scale carried wrongly, a gap reflected wrongly or the attention's weights dropped gives 0.3 and more.
MAX_RELATIVE_ERROR = 0.1


def _models(seed: int, scales: str = "zero") -> tuple[torch.nn.Module, torch.nn.Module, dict[str, int]]:
    """(SpeechBrain's fp32 model, the same model swapped for the oneDNN bf16 pass, what the swaps changed).

    ``scales``: ``zero`` (one zero scale in every batch norm: the Res2Net sums take both scales), ``nonzero``
    (their one-addcmul form) or ``tiny`` (a Res2Net scale of 1.3e-38, whose ratio to the next would overflow).
    """
    torch.manual_seed(seed)
    model = ECAPA_TDNN(
        input_size=20, channels=[64, 64, 64, 64, 192], attention_channels=16, lin_neurons=24, res2net_scale=4
    ).eval()
    randomise_batch_norms(model, torch.Generator().manual_seed(seed + 1))
    with torch.no_grad():
        if scales != "zero":
            for m in model.modules():
                if isinstance(m, torch.nn.BatchNorm1d):
                    m.weight[0] = -0.7
        if scales == "tiny":  # a dead channel in each Res2Net scale, a large scale on the input it is summed with
            res2net, norm1 = model.blocks[1].res2net_block, model.blocks[1].tdnn1.norm.norm
            chunk = norm1.num_features // res2net.scale
            for i, tdnn in enumerate(res2net.blocks[:-1]):  # scale i + 1's output is summed with chunk i + 2
                tdnn.norm.norm.weight[5] = 1.3e-38
                norm1.weight[(i + 2) * chunk + 5], norm1.running_var[(i + 2) * chunk + 5] = 5.0, 1.0
        # Random attention weights give near-uniform softmax weights (logits' spread 0.04 over frames): scaled
        # up, they matter (pooling with plain moments instead then errs by 0.6), and exp() needs its guard.
        model.asp.conv.conv.weight.mul_(100.0)
    reference = copy.deepcopy(model)
    changes = {"max_pad": reflect_into_gaps(model), **make_segment_aware(model)}
    changes.update(speed_up_for_cpu(model, torch.bfloat16))
    return reference, model, changes


def _pooled_and_output(model: torch.nn.Module, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The pooled statistics (what the final batch norm reads) and the output of ``model(x, lengths)``."""
    seen = []
    if isinstance(model, OneDnnBf16ECAPA):  # its head folds that batch norm into the last layer
        head = model._plan.head
        model._plan.head = lambda pooled: seen.append(pooled) or head(pooled)
        undo = lambda: setattr(model._plan, "head", head)  # noqa: E731
    else:
        undo = model.asp_bn.register_forward_hook(lambda module, args, output: seen.append(args[0][:, :, 0])).remove
    try:
        with torch.inference_mode():
            out = model(x, lengths)
    finally:
        undo()
    return seen[0], out


@needs_onednn
@pytest.mark.parametrize("scales", ["zero", "nonzero", "tiny"])
def test_the_fused_pass_computes_speechbrains_ecapa_on_rows_of_different_lengths(scales):
    reference, model, changes = _models(seed=3, scales=scales)
    assert type(model) is OneDnnBf16ECAPA and changes["onednn_bf16_models"] == 1
    assert not model._plan.exp_is_safe  # the real model's logits stay in exp()'s range; these do not
    assert changes["bf16_convolutions"] == 0  # the trunk's own modules never run: no bf16 copies of them
    x, lengths = torch.randn(2, 90, 20), torch.tensor([1.0, 0.7])
    got = _pooled_and_output(model, x, lengths)
    expected = _pooled_and_output(reference, x, lengths)
    elsewhere = _pooled_and_output(reference, torch.randn(2, 90, 20), lengths)
    for g, e, other in zip(got, expected, elsewhere, strict=True):
        assert g.dtype == torch.float32 and g.shape == e.shape
        assert relative_errors(g, e, other).max() <= MAX_RELATIVE_ERROR


@needs_onednn
@pytest.mark.parametrize(("lengths", "max_rows"), [([40, 75, 23, 61], None), ([WIDTH_STEP - 12], None), ([40, 75], 64)])
def test_a_packed_batch_gives_each_utterance_what_speechbrain_gives_it_alone(lengths, max_rows, monkeypatch):
    """Reflections into the gaps, per-segment statistics, the pack widened to WIDTH_STEP frames, chunked products."""
    if max_rows is not None:
        monkeypatch.setattr(onednn_bf16, "MAX_ROWS", max_rows)
    reference, model, changes = _models(seed=5)
    features = [torch.randn(n, 20) for n in lengths]
    batch, segments = pack(features, gap=2 * changes["max_pad"])
    with torch.inference_mode():
        with packed(segments):
            got = model(batch, torch.ones(1))
        expected = torch.cat([reference(f[None], torch.ones(1)) for f in features])
        elsewhere = torch.cat([reference(torch.randn(1, n, 20), torch.ones(1)) for n in lengths])
    assert got.shape == expected.shape
    assert relative_errors(got, expected, elsewhere).max() <= MAX_RELATIVE_ERROR


def _with_a_shortcut(model: torch.nn.Module) -> None:
    model.blocks[2].shortcut = torch.nn.Identity()  # a residual path the plan does not carry


def _with_a_leaky_activation(model: torch.nn.Module) -> None:
    model.blocks[2].tdnn1.activation = torch.nn.LeakyReLU(0.1)  # not the ReLU oneDNN applies


def _without_global_context(model: torch.nn.Module) -> None:
    model.asp.global_context = False  # pooling without the utterance's mean and deviation (a narrower layer)
    model.asp.tdnn = TDNNBlock(model.asp.tdnn.conv.conv.in_channels // 3, 16, 1, 1).eval()


@needs_onednn
@pytest.mark.parametrize("change", [_with_a_shortcut, _with_a_leaky_activation, _without_global_context])
def test_a_model_whose_blocks_the_plan_does_not_know_keeps_the_eager_bf16_path(change):
    torch.manual_seed(11)
    model = ECAPA_TDNN(input_size=20, channels=[64, 64, 64, 64, 192], attention_channels=16, lin_neurons=24).eval()
    change(model)
    reference = copy.deepcopy(model)
    reflect_into_gaps(model)
    changes = {**make_segment_aware(model), **speed_up_for_cpu(model, torch.bfloat16)}
    assert changes["onednn_bf16_models"] == 0
    x = torch.randn(1, 60, 20)
    with torch.inference_mode():
        errors = relative_errors(model(x), reference(x), reference(torch.randn(1, 60, 20)))
    assert errors.max() <= MAX_RELATIVE_ERROR
