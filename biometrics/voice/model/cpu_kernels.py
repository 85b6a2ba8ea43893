"""Faster kernels for SpeechBrain's ECAPA-TDNN, swapped into its modules after loading.

Each swap computes the same function as the code it replaces, to float rounding (tests compare
against SpeechBrain's own modules), and leaves the module tree, parameters and state dict as
SpeechBrain built them:

- ``flush_denormal_weights``: the VoxCeleb checkpoint holds tens of thousands of subnormal
  weights (|w| < 1.2e-38). Intel cores take a microcode assist on every multiply that touches one,
  and some oneDNN convolutions ran 20-100 times slower for it (measured: the attention pooling's
  9216->128 convolution at 3 GFLOP/s instead of 300). Setting them to zero changes no result.
- ``GemmConv1d``: a stride-1, unpadded, ungrouped ``torch.nn.Conv1d`` (SpeechBrain pads before
  calling it) computed as one BLAS GEMM per kernel tap on shifted views of the input, or, for inputs
  with few channels, as one GEMM over stacked shifted copies. oneDNN's direct convolution reached
  55-75% of the machine's GEMM rate on these shapes; the GEMMs reach 85-95% of it. Weights that
  folding a batch norm makes subnormal are flushed as well.
- ``FusedTDNNBlock``: SpeechBrain's TDNN block is convolution -> ReLU -> batch norm, three passes over
  the activations and two new tensors. With the norm's per-channel scale ``s`` folded into the
  convolution's weights and bias, ``s * relu(u) + t`` is ``max(s*u + t, t)`` on channels with
  ``s >= 0`` and ``min(s*u + t, t)`` on the others: one clamp of the GEMM's output in place.
  GEMM outputs are written with 64-byte aligned rows (unaligned ones ran 25-30% slower).
- ``FusedRes2NetBlock``: each Res2Net scale writes its output straight into the block's output
  buffer (no concatenation), and its input sum goes straight into its padded convolution input.
- ``AggregatingECAPA``: likewise, the three SE-Res2Net blocks write straight into the multi-layer
  feature aggregation's input.

Two swaps run on any device (``make_segment_aware``): they take their statistics per utterance
segment of a packed batch (``biometrics.voice.model.packing``), or per row under relative lengths:

- ``FusedSERes2NetBlock``: the squeeze-excitation gate and the residual sum in one pass
  (``residual + gate * x``), written over the block's own output.
- ``ContextFoldedPooling``: attentive statistics pooling with global context concatenates the
  utterance's mean and standard deviation, repeated over every frame, to the features before a
  1x1 convolution. Those two thirds of the input are constant over time, so their share of the
  convolution is one matrix-vector product per utterance. This drops 4% of the model's FLOPs, a
  [batch, 9216, frames] copy, and most of the long-utterance memory peak. The attention
  convolution's bias is dropped: the softmax over time cancels any per-channel constant.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from speechbrain.lobes.models.ECAPA_TDNN import (
    ECAPA_TDNN,
    AttentiveStatisticsPooling,
    Res2NetBlock,
    SEBlock,
    SERes2NetBlock,
    TDNNBlock,
)

from biometrics.voice.model.onednn_bf16 import (
    EXP_SAFE_LOGIT_BOUND,
    OneDnnBf16ECAPA,
    norm_affine,
    onednn_bf16_available,
)
from biometrics.voice.model.packing import GapReflectingConv1d, is_packed, segments_of

ROW_ALIGN_BYTES = 64
ROW_ALIGN_FLOATS = ROW_ALIGN_BYTES // 4
# Convolutions with fewer input channels than this run as one GEMM over stacked shifted copies of the
# input: 80-channel taps as five GEMMs measured 17% slower than one; 128-channel ones were faster per tap.
STACK_TAPS_BELOW_CHANNELS = 128


def flush_denormal_weights(model: torch.nn.Module) -> int:
    """Sets subnormal floating-point parameters and buffers to zero; returns how many there were."""
    with torch.no_grad():
        return sum(_flush_subnormals_(t) for t in [*model.parameters(), *model.buffers()] if t.is_floating_point())


def _subnormals(tensor: torch.Tensor) -> torch.Tensor:
    return (tensor != 0) & (tensor.abs() < torch.finfo(tensor.dtype).tiny)


def _flush_subnormals_(tensor: torch.Tensor) -> int:
    subnormal = _subnormals(tensor)
    flushed = int(subnormal.sum())
    tensor.masked_fill_(subnormal, 0.0)
    return flushed


def _without_subnormals(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor``, or a copy with its subnormal values zeroed (a tap can share the module's weight)."""
    if not bool(_subnormals(tensor).any()):
        return tensor
    flushed = tensor.clone()
    _flush_subnormals_(flushed)
    return flushed


def aligned_rows(
    like: torch.Tensor, batch: int, channels: int, frames: int, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """An empty [batch, channels, frames] GEMM output (``like``'s dtype by default), rows on 64-byte boundaries.

    With an unaligned row stride (fp32 frames not a multiple of 16) the same GEMM measured 25-30% slower.
    The result is a view of a buffer padded to the aligned stride.
    """
    dtype = like.dtype if dtype is None else dtype
    per_row = ROW_ALIGN_BYTES // torch.empty((), dtype=dtype).element_size()
    stride = -(-frames // per_row) * per_row
    return like.new_empty(batch, channels, stride, dtype=dtype)[..., :frames]


class GemmConv1d(torch.nn.Conv1d):
    """``torch.nn.Conv1d`` (stride 1, no padding, one group) as GEMMs; same parameters.

    One GEMM per kernel tap, or one over stacked shifted inputs when the input has fewer than
    ``STACK_TAPS_BELOW_CHANNELS`` channels (in the VoxCeleb model, only the 80-channel first layer).
    The taps are copies made when swapped in (``refresh_taps``): like the module's other caches, they
    do not follow ``.to()``; swap in on the target device.

    With ``operand_dtype`` bfloat16 the products take bf16 operands (weights cached in bf16, the input
    cast on the way in) and accumulate in fp32 inside the BLAS; every kernel's taps are then stacked
    into one product, so each output is rounded to bf16 once. Bias, clamps and the output stay fp32.
    """

    operand_dtype: torch.dtype = torch.float32
    _taps: list[torch.Tensor]
    _stacked_taps: int
    _bias: torch.Tensor
    _floor: torch.Tensor | None = None
    _ceiling: torch.Tensor | None = None

    @classmethod
    def swap_in(cls, conv: torch.nn.Conv1d, operand_dtype: torch.dtype = torch.float32) -> bool:
        """Turns ``conv`` into a ``GemmConv1d`` in place when its layout allows; returns whether it did."""
        if type(conv) is not torch.nn.Conv1d or conv.bias is None:
            return False
        if conv.stride != (1,) or conv.padding != (0,) or conv.groups != 1:
            return False
        conv.__class__ = cls
        conv.operand_dtype = operand_dtype
        conv.refresh_taps()
        return True

    def refresh_taps(self) -> None:
        """Caches each tap's [out, in] weight matrix contiguously (call again after changing the weights)."""
        self._set_taps(self.weight.detach(), self.bias.detach())
        self._floor = self._ceiling = None

    def fold_relu_batch_norm(self, norm: torch.nn.BatchNorm1d) -> None:
        """Makes this convolution compute ``norm(relu(conv(x)))`` for a batch norm in eval mode."""
        scale, shift = norm_affine(norm)
        self._set_taps(self.weight.detach() * scale[:, None, None], self.bias.detach() * scale + shift)
        negative = scale < 0
        self._floor = torch.where(negative, -torch.inf, shift)[:, None]
        self._ceiling = torch.where(negative, shift, torch.inf)[:, None] if bool(negative.any()) else None

    def _set_taps(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        taps = weight.shape[2]
        reduced = self.operand_dtype != torch.float32  # one product per output: one rounding to bf16
        if taps > 1 and (reduced or weight.shape[1] < STACK_TAPS_BELOW_CHANNELS):
            # [out, taps * in], matching the stacked shifted inputs of ``forward``.
            self._taps = [weight.permute(0, 2, 1).reshape(weight.shape[0], -1).contiguous()]
            self._stacked_taps = taps
        else:
            self._taps = [weight[:, :, k].contiguous() for k in range(taps)]
            self._stacked_taps = 1
        # Folding a batch norm's scale into flushed weights can make new subnormals: 2541 of them in
        # the checkpoint's first SE block, whose 1x1 convolution then ran at half the GEMM rate.
        self._taps = [_without_subnormals(tap).to(self.operand_dtype) for tap in self._taps]
        self._bias = bias[:, None]

    def forward(self, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """[batch, in, time] -> [batch, out, time - span], into ``out`` when given (rows of unit stride)."""
        step = self.dilation[0]
        frames = x.shape[-1] - step * (self.kernel_size[0] - 1)
        if out is None:
            out = aligned_rows(x, x.shape[0], self.out_channels, frames, dtype=self._bias.dtype)
        x = x.to(self.operand_dtype)  # bf16 operands: padded inputs come cast already (GapReflectingConv1d)
        if self._stacked_taps > 1:
            x = _shifted_copies(x, self._stacked_taps, step, frames)
        products = out if self.operand_dtype == out.dtype else aligned_rows(x, x.shape[0], self.out_channels, frames)
        for row in range(x.shape[0]):
            xr, yr = x[row], products[row]
            torch.mm(self._taps[0], xr[:, :frames], out=yr)
            for k in range(1, len(self._taps)):
                yr.addmm_(self._taps[k], xr[:, k * step : k * step + frames])
        # The bias after the products, not as addmm's input: addmm first copies it into the whole
        # output, a write to memory not yet in cache, and MKL's beta=1 path is slower on small
        # GEMMs (128x128: 25%). Measured 1% faster over the whole model.
        if products is not out:
            # bf16 products to fp32, then the bias in fp32: torch.add(products, bias, out=out) does both in one
            # pass but on a slow mixed-dtype path (measured 0.59 ms vs 0.38 ms for 1024 x 2000).
            out.copy_(products)
        out.add_(self._bias)
        # Clamps with one tensor bound each: one with both bounds as tensors measured 13x slower.
        if self._floor is not None:
            out.clamp_(min=self._floor)
        if self._ceiling is not None:
            out.clamp_(max=self._ceiling)
        return out


def _shifted_copies(x: torch.Tensor, taps: int, step: int, frames: int) -> torch.Tensor:
    """[batch, taps * in, frames]: tap k's block of rows is x shifted left by k * step frames."""
    channels = x.shape[1]
    stacked = aligned_rows(x, x.shape[0], taps * channels, frames)
    for k in range(taps):
        stacked[:, k * channels : (k + 1) * channels].copy_(x[..., k * step : k * step + frames])
    return stacked


class FusedTDNNBlock(TDNNBlock):
    """SpeechBrain's TDNN block (conv, ReLU, batch norm, dropout) as one GEMM convolution with a clamp."""

    @classmethod
    def swap_in(cls, block: TDNNBlock) -> bool:
        """Folds the block's ReLU and batch norm into its (already swapped) ``GemmConv1d``; returns whether it did."""
        if type(block) is not TDNNBlock or not isinstance(block.conv.conv, GemmConv1d):
            return False
        norm = block.norm
        if type(block.activation) is not torch.nn.ReLU or block.training or block.dropout.training:
            return False
        if type(norm.norm) is not torch.nn.BatchNorm1d or not norm.skip_transpose or norm.combine_batch_time:
            return False
        if not norm.norm.affine or norm.norm.running_mean is None or norm.norm.training:
            return False
        block.conv.conv.fold_relu_batch_norm(norm.norm)
        block.__class__ = cls
        return True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)

    def forward_into(self, x: torch.Tensor, addend: torch.Tensor | None, out: torch.Tensor) -> torch.Tensor:
        """``self(x + addend)`` written into ``out``; with gap-reflecting padding the sum goes straight into it."""
        conv = self.conv
        if isinstance(conv, GapReflectingConv1d):
            x = conv.padded(x, addend)
        else:
            x = x if addend is None else x + addend
            if conv.padding == "same":
                x = conv._manage_padding(x, conv.kernel_size, conv.dilation, conv.stride)
        return conv.conv(x, out=out)


class FusedRes2NetBlock(Res2NetBlock):
    """SpeechBrain's Res2Net block writing each scale's output straight into one buffer (no concatenation).

    Each scale's input sum ``x_i + y_(i-1)`` goes straight into that scale's padded convolution input.
    """

    @classmethod
    def swap_in(cls, block: Res2NetBlock) -> bool:
        if type(block) is not Res2NetBlock or not all(isinstance(b, FusedTDNNBlock) for b in block.blocks):
            return False
        block.__class__ = cls
        return True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = aligned_rows(x, x.shape[0], x.shape[1], x.shape[-1])
        inputs, outputs = torch.chunk(x, self.scale, dim=1), torch.chunk(out, self.scale, dim=1)
        outputs[0].copy_(inputs[0])
        y = None
        for block, x_i, out_i in zip(self.blocks, inputs[1:], outputs[1:], strict=True):
            y = block.forward_into(x_i, y, out_i)
        return out


class FusedSERes2NetBlock(SERes2NetBlock):
    """SpeechBrain's SE-Res2Net block with the squeeze-excitation gate and the residual sum in one pass."""

    @classmethod
    def swap_in(cls, block: SERes2NetBlock) -> bool:
        if type(block) is not SERes2NetBlock or type(block.se_block) is not SEBlock:
            return False
        block.__class__ = cls
        return True

    def forward(
        self,
        x: torch.Tensor,
        lengths: torch.Tensor | None = None,
        out: torch.Tensor | None = None,
        operands: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """SpeechBrain's block, written into ``out`` when given; ``operands``: ``x`` cast for the first convolution."""
        residual = self.shortcut(x) if self.shortcut else x
        x = self.res2net_block(self.tdnn1(x if operands is None else operands))
        if out is None:
            x = self.tdnn2(x)
        elif isinstance(self.tdnn2, FusedTDNNBlock):
            x = self.tdnn2.forward_into(x, None, out)
        else:
            x = out.copy_(self.tdnn2(x))
        se = self.se_block
        segments = segments_of(x.shape[0], x.shape[-1], lengths)
        views = [x[s.row, :, s.start : s.end] for s in segments]
        means = torch.stack([v.mean(dim=-1) for v in views])[:, :, None]
        gates = se.sigmoid(se.conv2(se.relu(se.conv1(means))))
        # SpeechBrain gates a row's every frame, padding included (the next block's convolutions read
        # it); in a packed row each segment has its own gate, and the gaps are never read.
        whole_rows = not is_packed()
        for s, gate in zip(segments, gates, strict=True):
            span = slice(None) if whole_rows else slice(s.start, s.end)
            view = x[s.row, :, span]
            torch.addcmul(residual[s.row, :, span], view, gate, out=view)
        return x


class AggregatingECAPA(ECAPA_TDNN):
    """SpeechBrain's ECAPA-TDNN with its SE-Res2Net blocks writing straight into the MFA layer's input.

    SpeechBrain concatenates the three blocks' outputs along channels; here each block writes its
    output into its own slice of one aligned buffer (a [batch, 3072, frames] copy saved).
    """

    @classmethod
    def swap_in(cls, model: ECAPA_TDNN) -> bool:
        if type(model) is not ECAPA_TDNN or not isinstance(model.blocks[0], TDNNBlock):
            return False
        if not all(type(block) is FusedSERes2NetBlock for block in model.blocks[1:]):
            return False
        model.__class__ = cls
        return True

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        x = self.blocks[0](x.transpose(1, 2))
        widths = [block.tdnn2.conv.conv.out_channels for block in self.blocks[1:]]
        aggregated = aligned_rows(x, x.shape[0], sum(widths), x.shape[-1])
        # With bf16 products, each block's output is cast once, into the MFA's operands, and the next block's
        # first convolution reads that cast: the same bf16 values, four block-wide casts instead of six.
        operand_dtype = getattr(self.mfa.conv.conv, "operand_dtype", aggregated.dtype)
        cast = operand_dtype != aggregated.dtype
        operands = aligned_rows(x, x.shape[0], sum(widths), x.shape[-1], dtype=operand_dtype) if cast else aggregated
        start, x_operands = 0, None
        for block, width in zip(self.blocks[1:], widths, strict=True):
            x = block(x, lengths=lengths, out=aggregated[:, start : start + width], operands=x_operands)
            if cast:
                x_operands = operands[:, start : start + width].copy_(x)
            start += width
        x = self.asp_bn(self.asp(self.mfa(operands), lengths=lengths))
        return self.fc(x).transpose(1, 2)


class ContextFoldedPooling(AttentiveStatisticsPooling):
    """SpeechBrain's attentive statistics pooling with the global context folded into a per-utterance bias."""

    # The statistics are taken over blocks of this many channels: a block of a 2000-frame pack (4 MB)
    # stays in the cores' L2 over its passes. 512 measured fastest of 256-1024.
    channel_block = 512
    # The operands of the two frame-by-frame products (``speed_up_for_cpu`` sets bf16 with the trunk's).
    operand_dtype: torch.dtype = torch.float32

    @classmethod
    def swap_in(cls, pooling: AttentiveStatisticsPooling) -> bool:
        if type(pooling) is not AttentiveStatisticsPooling or not pooling.global_context:
            return False
        for conv in (pooling.tdnn.conv.conv, pooling.conv.conv):
            if conv.kernel_size != (1,) or conv.groups != 1 or conv.bias is None:
                return False
        pooling.__class__ = cls
        pooling.refresh_weights()
        return True

    def refresh_weights(self) -> None:
        """Caches what ``forward`` derives from the weights (call again after changing them).

        That is the frame columns of the first convolution's weight, transposed, in ``operand_dtype``; with
        bf16 operands, the attention convolution's weight in bf16 (in fp32 the module's own is read); and
        whether exp() of the attention logits stays in float range without subtracting each channel's max:
        the logits are ``W @ tanh(h)`` (bias dropped), so |logit| <= the largest row sum of |W|; below
        ``EXP_SAFE_LOGIT_BOUND`` neither exp() nor the weighted sums after it leave float32's normal range.
        The cache does not follow ``.to()``.
        """
        channels = self.conv.conv.weight.shape[0]
        frame_weight_t = self.tdnn.conv.conv.weight.detach()[:, :channels, 0].t().contiguous()
        # swap_in (make_segment_aware) runs before flush_denormal_weights: the copies are flushed here.
        self._frame_weight_t = _without_subnormals(frame_weight_t).to(self.operand_dtype)
        attention = self.conv.conv.weight.detach()[:, :, 0]
        reduced = self.operand_dtype != torch.float32
        self._attention_weight = _without_subnormals(attention).to(self.operand_dtype) if reduced else None
        bound = self.conv.conv.weight.detach().abs().sum(dim=(1, 2)).max()
        self._exp_is_safe = bool(bound < EXP_SAFE_LOGIT_BOUND)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """[batch, 2C, 1] for a row batch with relative lengths; [segments, 2C, 1] when packed."""
        segments = segments_of(x.shape[0], x.shape[-1], lengths)
        moments = [self._by_channel_block(_mean_and_variance, x[s.row, :, s.start : s.end]) for s in segments]
        # tdnn.conv on cat([x, mean, std]): the mean/std columns of its weight act on constants, so they
        # give one bias per utterance; the frame columns are one GEMM per row of the batch.
        channels = x.shape[1]
        weight = self.tdnn.conv.conv.weight[:, :, 0]
        means = torch.stack([mean for mean, _ in moments])
        stds = torch.stack([variance for _, variance in moments]).clamp(self.eps).sqrt()
        context = torch.addmm(self.tdnn.conv.conv.bias, torch.cat((means, stds), dim=1), weight[:, channels:].t())
        # Computed as x^T @ W^T: with 128 output channels, MKL ran W @ x at 130-155 GFLOP/s and this at 177.
        xo = x.to(self._frame_weight_t.dtype)
        hidden = x.new_empty(x.shape[0], x.shape[-1], weight.shape[0], dtype=xo.dtype)
        for row in range(x.shape[0]):
            torch.mm(xo[row].t(), self._frame_weight_t, out=hidden[row])
        hidden = hidden.transpose(1, 2).to(torch.float32)  # bf16 products: the rest of the block runs in fp32
        for s, bias in zip(segments, context, strict=True):
            hidden[s.row, :, s.start : s.end] += bias[:, None]
        hidden = self.tdnn.dropout(self.tdnn.norm(self.tdnn.activation(hidden)))
        # The softmax over time cancels any per-channel constant: the attention convolution's bias drops out.
        attention = self.conv.conv.weight[:, :, 0] if self._attention_weight is None else self._attention_weight
        logits = _rowwise_mm(attention, self.tanh(hidden).to(attention.dtype))
        # bf16 products come out rounded to bf16 (each logit within 2^-9 of itself): exp() and the moments in fp32.
        logits = logits.to(torch.float32)
        if self._exp_is_safe:  # the softmax, unnormalised (its sum divides below), in one pass over every row
            logits.exp_()
        pooled = []
        for s in segments:
            frames = slice(s.start, s.end)
            mean, variance = self._by_channel_block(
                self._weighted_moments, x[s.row, :, frames], logits[s.row, :, frames]
            )
            pooled.append(torch.cat((mean, variance.clamp(self.eps).sqrt())))
        return torch.stack(pooled)[:, :, None]

    def _by_channel_block(
        self, moments: Callable[..., tuple[torch.Tensor, torch.Tensor]], *tensors: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``moments`` of [channels, frames] tensors, taken block by block of channels.

        A block stays in cache over the passes ``moments`` makes: measured 2x faster than whole segments
        for the unweighted moments, 1.2x for the weighted ones.
        """
        step = self.channel_block
        blocks = [moments(*(t[c : c + step] for t in tensors)) for c in range(0, tensors[0].shape[0], step)]
        return torch.cat([first for first, _ in blocks]), torch.cat([second for _, second in blocks])

    def _weighted_moments(self, x: torch.Tensor, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Attention-weighted mean and variance over time of [channels, frames], in SpeechBrain's two passes."""
        weights = logits if self._exp_is_safe else (logits - logits.amax(dim=-1, keepdim=True)).exp_()
        total = weights.sum(dim=-1)
        mean = torch.linalg.vecdot(weights, x) / total
        # (x - mean)^2 in one pass: subtracting, then squaring in place, takes two.
        deviations = F.mse_loss(x, mean[:, None].expand_as(x), reduction="none")
        return mean, deviations.mul_(weights).sum(dim=-1) / total


def _mean_and_variance(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and (biased) variance over time of [channels, frames], from the deviations about the mean."""
    mean = x.mean(dim=-1)
    return mean, torch.linalg.vector_norm(x - mean[:, None], dim=-1).square_() / x.shape[-1]


def _rowwise_mm(weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``weight @ x[row]`` for each row of [batch, in, time], into 64-byte aligned output rows."""
    out = aligned_rows(x, x.shape[0], weight.shape[0], x.shape[-1])
    for row in range(x.shape[0]):
        torch.mm(weight, x[row], out=out[row])
    return out


def make_segment_aware(model: torch.nn.Module) -> dict[str, int]:
    """Swaps in the modules that take statistics per utterance segment (any device); returns what changed."""
    return {
        "pooling": sum(
            ContextFoldedPooling.swap_in(m) for m in model.modules() if isinstance(m, AttentiveStatisticsPooling)
        ),
        "fused_se_blocks": sum(
            FusedSERes2NetBlock.swap_in(m) for m in model.modules() if isinstance(m, SERes2NetBlock)
        ),
    }


def trunk_convolutions(model: torch.nn.Module) -> set[int]:
    """Ids of the convolutions run frame by frame over the whole input: the TDNN trunk and the MFA layer.

    That excludes the squeeze-excitation gates and the final linear layer (one column per utterance),
    and the attentive pooling, whose GEMMs ``ContextFoldedPooling`` runs itself.
    """
    per_utterance = {
        id(m)
        for block in model.modules()
        if isinstance(block, (SEBlock, AttentiveStatisticsPooling))
        for m in block.modules()
    }
    fc = getattr(model, "fc", None)
    if fc is not None:
        per_utterance |= {id(m) for m in fc.modules()}
    return {id(m) for m in model.modules() if isinstance(m, torch.nn.Conv1d) and id(m) not in per_utterance}


def speed_up_for_cpu(
    model: torch.nn.Module, operand_dtype: torch.dtype = torch.float32, *, onednn: bool | None = None
) -> dict[str, int]:
    """CPU-only swaps above for an ECAPA-TDNN in eval mode, after ``make_segment_aware``; returns what changed.

    ``operand_dtype`` bfloat16 runs the trunk's convolutions (``trunk_convolutions``: 95% of the model's
    FLOPs) and the attentive pooling's two frame-by-frame products (4%) on bf16 operands with fp32
    accumulation. Where oneDNN has bf16 kernels (``onednn`` None: detected; False: never, for tests of the
    eager path) the whole pass runs on them (``onednn_bf16``: activations in bf16, statistics in fp32), and
    the model's modules are left as SpeechBrain built them, unused. Otherwise, in eager PyTorch,
    everything but the products stays fp32: the activations between layers, biases, batch norms (folded),
    ReLU clamps, residual and Res2Net sums, squeeze-excitation means and gates, the pooling's context,
    softmax and weighted mean and standard deviation, the final linear layer, the embedding normalisation.
    """
    if model.training:
        raise ValueError("the CPU kernels are for inference; call model.eval() first")
    changes = {"denormal_weights_flushed": flush_denormal_weights(model)}
    trunk = trunk_convolutions(model)
    if onednn is None:
        onednn = onednn_bf16_available()
    ecapas = [m for m in model.modules() if isinstance(m, ECAPA_TDNN)]
    fused = [m for m in ecapas if operand_dtype == torch.bfloat16 and onednn and OneDnnBf16ECAPA.swap_in(m)]
    changes["onednn_bf16_models"] = len(fused)
    # A fused model calls none of its own modules: no tap copies for them.
    skipped = {id(m) for ecapa in fused for m in ecapa.modules()}
    changes["gemm_convolutions"] = sum(
        GemmConv1d.swap_in(m, operand_dtype if id(m) in trunk else torch.float32)
        for m in model.modules()
        if isinstance(m, torch.nn.Conv1d) and id(m) not in skipped
    )
    changes["bf16_convolutions"] = sum(
        isinstance(m, GemmConv1d) and m.operand_dtype == torch.bfloat16 for m in model.modules()
    )
    # ContextFoldedPooling reads its TDNN block's weights, norm and activation: pooling blocks stay as they are.
    pooling_blocks = {id(m) for p in model.modules() if isinstance(p, AttentiveStatisticsPooling) for m in p.modules()}
    for pooling in model.modules():
        if isinstance(pooling, ContextFoldedPooling) and id(pooling) not in skipped:
            pooling.operand_dtype = operand_dtype
            pooling.refresh_weights()
    changes["fused_tdnn_blocks"] = sum(
        FusedTDNNBlock.swap_in(m) for m in model.modules() if isinstance(m, TDNNBlock) and id(m) not in pooling_blocks
    )
    changes["fused_res2net_blocks"] = sum(
        FusedRes2NetBlock.swap_in(m) for m in model.modules() if isinstance(m, Res2NetBlock)
    )
    changes["aggregating_models"] = sum(
        AggregatingECAPA.swap_in(m) for m in model.modules() if isinstance(m, ECAPA_TDNN)
    )
    return changes
