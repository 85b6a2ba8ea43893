"""ECAPA-TDNN's forward pass in bf16 on oneDNN's fused kernels, time-major, for CPUs with native bf16.

Why: with bf16 products the trunk's matrix products got 4x faster on AMX, and the eager passes around
each of them did not: a BLAS product into bf16, then a copy to fp32, the bias, the ReLU clamp and a cast
back to bf16 for the next layer, each a separate pass over memory. oneDNN (PyTorch's ``mkldnn`` ops, the
kernels Inductor's CPU fusions call) runs a product with its bias and ReLU applied to the accumulators
and writes bf16 once; with its weights reordered ahead for the CPU's tiles it is faster still. Measured
on a 2-core Xeon with AMX, one core, 1,219 frames: a 1024 x 1024 layer 3.78 ms -> 1.91 ms, the MFA's
3072 x 3072 39.2 -> 18.2 ms, a Res2Net scale's 128 x 128 x 3 0.31 -> 0.13 ms.

How:

- Activations are time-major ``[frames, channels]`` bf16 (SpeechBrain's are ``[channels, frames]``):
  oneDNN's matrix product and channels-last convolution read and write that layout without reorders.
- Each TDNN layer (convolution -> ReLU -> batch norm) is one oneDNN primitive computing
  ``z = relu(conv(x) + b)``. The batch norm cannot be folded into the weights (a negative scale does
  not pass through a ReLU), so the layer's output ``z`` stands for ``y = scale * z + shift`` per
  channel, and whoever reads it applies that: a product takes ``scale`` into its weight's input
  columns and ``shift`` into its bias (exactly, and through reflect padding too, which keeps
  constants); element-wise readers (the Res2Net sums, the squeeze-excitation, the pooling's moments)
  apply it in their own pass.
- Statistics stay in fp32: squeeze-excitation means and gates, the pooling's moments and softmax, the
  final batch norm and linear layer (one fp32 product, the norm folded into it). The moments, the
  squeeze-excitation's means and gated residual write, and the Res2Net sums with their reflect padding
  are each one loop of C over the frames (``fused_passes``), not a chain of eager kernels.
- oneDNN builds a primitive per input shape (~4 ms a layer, the first time, and 2-6 MB kept for the
  3072-wide ones), so packed batches are widened to a multiple of ``WIDTH_STEP`` frames and products
  over more than ``MAX_ROWS`` frames run in chunks: 32 shapes at most, each built once.

Packed batches (``biometrics.voice.model.packing``) work as in the fp32 path: reflections written into
the gaps, statistics per segment.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from speechbrain.lobes.models.ECAPA_TDNN import ECAPA_TDNN, TDNNBlock

from biometrics.voice.model.fused_passes import moments, padded_sum, scaled_sums, segment_means, weighted_moments
from biometrics.voice.model.packing import Segment, is_packed, segments_of

# oneDNN keeps one primitive per input shape, each holding 2-6 MB for the 3072-wide products and built in ~4 ms
# the first time: packed widths are rounded up to a multiple of WIDTH_STEP frames (0.64 s of audio), and
# products over more than MAX_ROWS frames run in chunks of that many. A model then has at most
# MAX_ROWS / WIDTH_STEP shapes of each product, whatever the lengths of the audio.
WIDTH_STEP = 64
MAX_ROWS = 2048
# Attention logits bounded by this skip the softmax's max subtraction: exp() then stays within float32's normal
# range (e^40 = 2.4e17), and so do the weighted sums after it (a million frames of |z| up to 1e15).
EXP_SAFE_LOGIT_BOUND = 40.0
# Res2Net input sums take one addcmul with the ratio of two batch norms' scales when it is at most this; a
# tiny scale (the checkpoint has some of 1e-35 and below) would overflow it, so those take two products.
MAX_SCALE_RATIO = 1e4


def onednn_bf16_available() -> bool:
    """Whether this PyTorch build has oneDNN with bf16 kernels for this CPU."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _tdnn_convolution(block: torch.nn.Module) -> torch.nn.Conv1d:
    """The convolution of SpeechBrain's TDNN block, once the block is checked to be what the plan computes."""
    if not isinstance(block, TDNNBlock) or type(block.activation) is not torch.nn.ReLU or block.training:
        raise ValueError("expected an eval-mode TDNN block with a ReLU")
    if type(block.norm.norm) is not torch.nn.BatchNorm1d or block.norm.norm.running_mean is None:
        raise ValueError("expected a batch norm with running statistics")
    wrapper, conv = block.conv, block.conv.conv
    if conv.stride != (1,) or conv.groups != 1 or conv.padding != (0,) or wrapper.stride != 1:
        raise ValueError("expected an ungrouped stride-1 convolution")
    if conv.kernel_size[0] > 1 and (wrapper.padding != "same" or wrapper.padding_mode != "reflect"):
        raise ValueError("expected reflect padding")
    return conv


def norm_affine(norm: torch.nn.BatchNorm1d) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) of an eval-mode batch norm: ``norm(x) = scale * x + shift``."""
    scale = norm.weight.detach() / torch.sqrt(norm.running_var + norm.eps)
    return scale.float(), (norm.bias.detach() - norm.running_mean * scale).float()


@dataclass(frozen=True)
class Affine:
    """What a layer's output ``z`` stands for: ``scale * z + shift`` per channel (None: ``z`` itself)."""

    scale: torch.Tensor | None
    shift: torch.Tensor | None

    @staticmethod
    def identity() -> Affine:
        return Affine(None, None)


class FusedLayer:
    """``relu(conv(affine(x)) + bias)`` as one oneDNN primitive on time-major bf16 input; output affine ``out``.

    ``weight`` is [out, in, taps] (stride 1, dilation ``dilation``, no padding: ``x`` comes padded). ``x``
    is the stored tensor; its affine (what it stands for) is folded in: its scale into the weight's input
    columns, its shift into the bias (summed over the taps: the padding reflects, so constants stay).
    """

    def __init__(
        self,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        *,
        x_affine: Affine,
        relu: bool,
        out: Affine,
        dilation: int = 1,
        width_hint: int = 1024,
    ) -> None:
        weight = weight.detach().float()
        bias = torch.zeros(weight.shape[0]) if bias is None else bias.detach().float()
        if x_affine.shift is not None:
            bias = bias + weight.sum(dim=2) @ x_affine.shift
        if x_affine.scale is not None:
            weight = weight * x_affine.scale[None, :, None]
        self.taps, self.dilation = weight.shape[2], dilation
        self.pad = self.dilation * (self.taps - 1) // 2
        self.attr = "relu" if relu else "none"
        self.bias = bias
        self.out = out
        self.out_channels = weight.shape[0]
        w16 = weight.to(torch.bfloat16)
        if self.taps == 1:
            self.weight = torch.ops.mkldnn._reorder_linear_weight(w16[:, :, 0].contiguous(), width_hint)
        else:
            size = [1, weight.shape[1], 1, width_hint + 2 * self.pad]
            self.weight = torch._C._nn.mkldnn_reorder_conv2d_weight(
                w16[:, :, None, :].contiguous().to_mkldnn(), [0, 0], [1, 1], [1, self.dilation], 1, size
            )

    @classmethod
    def of_tdnn(cls, block: torch.nn.Module, x_affine: Affine) -> FusedLayer:
        """SpeechBrain's TDNN block (convolution, ReLU, eval-mode batch norm), its norm left as the output affine."""
        conv = _tdnn_convolution(block)
        return cls(
            conv.weight,
            conv.bias,
            x_affine=x_affine,
            relu=True,
            out=Affine(*norm_affine(block.norm.norm)),
            dilation=conv.dilation[0],
        )

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """[frames (+ padding), in] bf16 -> [frames, out] bf16 (for taps > 1, ``x`` comes padded).

        Over more than ``MAX_ROWS`` frames, in chunks of that many (the last one shorter).
        """
        frames = x.shape[0] - 2 * self.pad
        if frames <= MAX_ROWS:
            return self._product(x)
        out = x.new_empty(frames, self.out_channels, dtype=torch.bfloat16)
        for start in range(0, frames, MAX_ROWS):
            end = min(start + MAX_ROWS, frames)
            out[start:end] = self._product(x[start : end + 2 * self.pad])
        return out

    def _product(self, x: torch.Tensor) -> torch.Tensor:
        if self.taps == 1:
            return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, self.attr, [], "")
        y = torch.ops.mkldnn._convolution_pointwise(
            x.t()[None, :, None, :], self.weight, self.bias, [0, 0], [1, 1], [1, self.dilation], 1, self.attr, [], ""
        )
        return y[0, :, 0, :].t()  # channels-last output: time-major in memory


class Dense:
    """A 1x1 convolution over one column per utterance, ``[utterances, in] -> [utterances, out]`` in fp32 as one
    product, optionally of a batch norm's output (``norm``: its scale and shift, folded into the weights).
    """

    def __init__(self, conv: torch.nn.Conv1d, norm: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        if conv.kernel_size != (1,) or conv.groups != 1 or conv.bias is None:
            raise ValueError("expected a 1x1 convolution with a bias")
        weight, bias = conv.weight.detach().float()[:, :, 0], conv.bias.detach().float()
        if norm is not None:
            bias = bias + weight @ norm[1]
            weight = weight * norm[0]
        self.weight_t, self.bias = weight.t().contiguous(), bias

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.bias, x, self.weight_t)


def _padded(x: torch.Tensor, pad: int, segments: Sequence[Segment] | None, terms: Sum | None = None) -> torch.Tensor:
    """[frames + 2 pad, channels] bf16: ``x`` (or ``terms`` of it), reflect-padded like SpeechBrain.

    Within a packed batch each segment's reflections also go into the gaps (``packing.GapReflectingConv1d``).
    """
    spans = None if segments is None else [(s.start, s.end) for s in segments]
    if terms is None:
        return padded_sum(x, pad, spans)
    return padded_sum(x, pad, spans, terms.x_factor, terms.addend, terms.factor)


@dataclass(frozen=True)
class Sum:
    """``x * x_factor + addend * factor`` (``x_factor`` None: 1), per channel."""

    x_factor: torch.Tensor | None
    addend: torch.Tensor
    factor: torch.Tensor


class _SEBlock:
    """One SE-Res2Net block on time-major bf16 activations."""

    def __init__(self, block: torch.nn.Module, x_affine: Affine) -> None:
        self.x_affine = x_affine  # what the block's input (its residual) stands for
        self.x_scale = torch.ones(block.tdnn2.conv.conv.out_channels) if x_affine.scale is None else x_affine.scale
        if block.shortcut is not None:
            raise ValueError("SE-Res2Net blocks with a shortcut convolution are not supported")
        self.tdnn1 = FusedLayer.of_tdnn(block.tdnn1, x_affine)
        scale1, shift1 = self.tdnn1.out.scale, self.tdnn1.out.shift
        res2net = block.res2net_block
        self.scale = res2net.scale
        chunk = scale1.shape[0] // self.scale
        self.chunk = chunk
        # Res2Net: y_1 = tdnn(x_1), y_i = tdnn(x_i + y_(i-1)); x_i stands for scale1 * z1_i + shift1.
        self.res2net: list[FusedLayer] = []
        self.sums: list[tuple[torch.Tensor | None, torch.Tensor] | None] = []  # (x_factor, factor) of each input
        previous: Affine | None = None
        for i, tdnn in enumerate(res2net.blocks, start=1):
            part = slice(i * chunk, (i + 1) * chunk)
            x_i = Affine(scale1[part], shift1[part])
            if previous is None:
                stands_for, factors = x_i, None
            elif bool((x_i.scale.abs() <= MAX_SCALE_RATIO * previous.scale.abs()).all()):
                # x_i + y_(i-1) = s_prev * (z_prev + (s1 / s_prev) * z1_i) + (t1 + t_prev): one addcmul, s_prev folded.
                stands_for = Affine(previous.scale, x_i.shift + previous.shift)
                factors = (None, x_i.scale / previous.scale)
            else:
                # A zero or tiny s_prev: (s_prev * z_prev + s1 * z1_i) + (t1 + t_prev), both scales in the sum.
                stands_for = Affine(None, x_i.shift + previous.shift)
                factors = (previous.scale, x_i.scale)
            self.res2net.append(FusedLayer.of_tdnn(tdnn, stands_for))
            self.sums.append(factors)
            previous = self.res2net[-1].out
        outputs = [Affine(scale1[:chunk], shift1[:chunk]), *(layer.out for layer in self.res2net)]
        concatenated = Affine(torch.cat([a.scale for a in outputs]), torch.cat([a.shift for a in outputs]))
        self.tdnn2 = FusedLayer.of_tdnn(block.tdnn2, concatenated)
        se = block.se_block
        if type(se.relu) is not torch.nn.ReLU or type(se.sigmoid) is not torch.nn.Sigmoid:
            raise ValueError("unexpected squeeze-excitation activations")
        self.squeeze = Dense(se.conv1.conv)
        self.excite = Dense(se.conv2.conv)

    def __call__(self, x: torch.Tensor, segments: Sequence[Segment], packed: bool, out: torch.Tensor) -> torch.Tensor:
        """The block's output (true values, no affine) written into ``out`` ([frames, channels] view)."""
        z1 = self.tdnn1(x)
        chunk = self.chunk
        # Each Res2Net scale's output takes the place of its input chunk of z1 once that is read: z1 becomes the
        # scales' concatenation (its first chunk passes through as it is).
        res2net = z1
        previous = None
        gaps = segments if packed else None
        for i, (layer, factors) in enumerate(zip(self.res2net, self.sums, strict=True), start=1):
            z1_i = z1[:, i * chunk : (i + 1) * chunk]
            if factors is None:
                padded = _padded(z1_i, layer.pad, gaps)
            else:
                padded = _padded(previous, layer.pad, gaps, Sum(factors[0], z1_i, factors[1]))
            previous = layer(padded)
            res2net[:, i * chunk : (i + 1) * chunk] = previous
        z2 = self.tdnn2(res2net)
        affine2 = self.tdnn2.out
        means = segment_means(z2, [(s.start, s.end) for s in segments]) * affine2.scale + affine2.shift
        gates = torch.sigmoid(self.excite(torch.relu(self.squeeze(means))))
        # out = residual + gate * (scale2 * z2 + shift2). SpeechBrain gates a row's every frame, padding
        # included; in a packed row each segment has its own gate, and the gaps are never read.
        constants = gates * affine2.shift
        if self.x_affine.shift is not None:
            constants += self.x_affine.shift
        spans = [(s.start, s.end) for s in segments] if packed else [(0, x.shape[0])]
        scaled_sums(x, self.x_scale, constants, z2, gates * affine2.scale, spans, out)
        return out


class OneDnnBf16ECAPA(ECAPA_TDNN):
    """SpeechBrain's ECAPA-TDNN (after ``cpu_kernels``' swaps) running its forward pass on ``OneDnnPlan``."""

    _plan: OneDnnPlan

    @classmethod
    def swap_in(cls, model: torch.nn.Module) -> bool:
        if not isinstance(model, ECAPA_TDNN) or not onednn_bf16_available():
            return False
        try:
            plan = OneDnnPlan(model)
        except (ValueError, AttributeError, TypeError, RuntimeError):
            return False  # a layout this plan does not know: the model keeps its own forward
        model.__class__ = cls
        model._plan = plan
        return True

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        return self._plan(x, lengths)


class OneDnnPlan:
    """The fused layers of one ECAPA-TDNN, built from its (eval-mode) parameters."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.first = FusedLayer.of_tdnn(model.blocks[0], Affine.identity())
        self.blocks = []
        affine = self.first.out
        for block in model.blocks[1:]:
            self.blocks.append(_SEBlock(block, affine))
            affine = Affine.identity()  # each block's output is written out as true values
        self.widths = [b.tdnn2.out_channels for b in self.blocks]
        self.mfa = FusedLayer.of_tdnn(model.mfa, Affine.identity())
        scale_m, shift_m = self.mfa.out.scale, self.mfa.out.shift
        pooling = model.asp
        if not pooling.global_context:
            raise ValueError("the plan pools with global context, as the VoxCeleb model does")
        hidden_conv = _tdnn_convolution(pooling.tdnn)
        channels = pooling.conv.conv.weight.shape[0]
        hidden_weight = hidden_conv.weight.detach().float()  # [128, 3 * channels, 1]: frames, mean, std
        self.context_weight_t = hidden_weight[:, channels:, 0].t().contiguous()
        # hidden = W_frames @ (scale_m * z + shift_m) + W_context @ [mean, std] + b: the shift goes to the context bias.
        identity = Affine.identity()
        self.frame_layer = FusedLayer(
            hidden_weight[:, :channels], None, x_affine=Affine(scale_m, None), relu=False, out=identity
        )
        self.context_bias = hidden_conv.bias.detach().float() + hidden_weight[:, :channels, 0] @ shift_m
        self.hidden_norm = norm_affine(pooling.tdnn.norm.norm)
        attention = pooling.conv.conv
        # The softmax over time cancels any per-channel constant: the attention convolution's bias drops out.
        self.attention = FusedLayer(attention.weight, None, x_affine=identity, relu=False, out=identity)
        bound = attention.weight.detach().abs().sum(dim=(1, 2)).max()
        self.exp_is_safe = bool(bound < EXP_SAFE_LOGIT_BOUND)
        self.eps = pooling.eps
        # The final batch norm and linear layer, one affine map of the pooled statistics.
        self.head = Dense(model.fc.conv, norm_affine(model.asp_bn.norm))
        self.pool_affine = (scale_m, shift_m)

    def __call__(self, x: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
        """[batch, frames, features] -> SpeechBrain's [utterances, 1, embedding]."""
        segments = segments_of(x.shape[0], x.shape[1], lengths)
        packed = is_packed()
        if packed:
            width = -(-x.shape[1] // WIDTH_STEP) * WIDTH_STEP
            if width > x.shape[1]:  # more gap after the last segment
                x = torch.cat((x, x.new_zeros(x.shape[0], width - x.shape[1], x.shape[2])), dim=1)
        pooled = []
        for row in range(x.shape[0]):
            row_segments = [s._replace(row=0) for s in segments if s.row == row]
            pooled.extend(self._row(x[row], row_segments, packed))
        pooled = torch.stack(pooled)
        return self.head(pooled)[:, None, :]

    def _row(self, x: torch.Tensor, segments: list[Segment], packed: bool) -> list[torch.Tensor]:
        gaps = segments if packed else None
        z = self.first(_padded(x, self.first.pad, gaps, None))
        frames = x.shape[0]
        aggregated = x.new_empty(frames, sum(self.widths), dtype=torch.bfloat16)
        start = 0
        for block, width in zip(self.blocks, self.widths, strict=True):
            z = block(z, segments, packed, aggregated[:, start : start + width])
            start += width
        return self._pool(self.mfa(aggregated), segments)

    def _pool(self, z: torch.Tensor, segments: list[Segment]) -> list[torch.Tensor]:
        """Attentive statistics pooling with global context of the MFA output ``z`` (standing for scale * z + shift)."""
        scale, shift = self.pool_affine
        stats = [moments(z[s.start : s.end]) for s in segments]
        means = torch.stack([m for m, _ in stats]) * scale + shift
        stds = (torch.stack([v for _, v in stats]) * scale.square()).clamp(self.eps).sqrt()
        context = torch.addmm(self.context_bias, torch.cat((means, stds), dim=1), self.context_weight_t)
        hidden = self.frame_layer(z).float()
        norm_scale, norm_shift = self.hidden_norm
        for s, bias in zip(segments, context, strict=True):
            hidden[s.start : s.end] += bias
        hidden = torch.tanh(torch.addcmul(norm_shift, hidden.relu_(), norm_scale)).to(torch.bfloat16)
        logits = self.attention(hidden)
        pooled = []
        for s in segments:
            w_mean, w_var = weighted_moments(z[s.start : s.end], logits[s.start : s.end], self.exp_is_safe)
            pooled.append(torch.cat((w_mean * scale + shift, (w_var * scale.square()).clamp(self.eps).sqrt())))
        return pooled
