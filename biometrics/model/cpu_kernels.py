"""Faster CPU kernels for SpeechBrain's ECAPA-TDNN, swapped into its modules after loading.

Each swap computes the same function as the code it replaces, to float rounding (tests compare
against SpeechBrain's own modules), and leaves the module tree, parameters and state dict as
SpeechBrain built them:

- ``flush_denormal_weights``: the VoxCeleb checkpoint holds tens of thousands of subnormal
  weights (|w| < 1.2e-38). Intel cores take a microcode assist on every multiply that touches one,
  and some oneDNN convolutions ran 20-100 times slower for it (measured: the attention pooling's
  9216->128 convolution at 3 GFLOP/s instead of 300). Setting them to zero changes no result.
- ``GemmConv1d``: a stride-1, unpadded, ungrouped ``torch.nn.Conv1d`` (SpeechBrain pads before
  calling it) computed as one BLAS GEMM per kernel tap on shifted views of the input. oneDNN's
  direct convolution reached 55-75% of the machine's GEMM rate on these shapes; the GEMMs reach
  85-95% of it.
- ``FusedTDNNBlock``: SpeechBrain's TDNN block is convolution -> ReLU -> batch norm, three passes over
  the activations and two new tensors. With the norm's per-channel scale ``s`` folded into the
  convolution's weights and bias, ``s * relu(u) + t`` is ``max(s*u + t, t)`` on channels with
  ``s >= 0`` and ``min(s*u + t, t)`` on the others: one clamp of the GEMM's output in place.
- ``FusedSERes2NetBlock``: the squeeze-excitation gate and the residual sum in one pass
  (``residual + gate * x``), written over the block's own output.
- ``ContextFoldedPooling``: attentive statistics pooling with global context concatenates the
  utterance's mean and standard deviation, repeated over every frame, to the features before a
  1x1 convolution. Those two thirds of the input are constant over time, so their share of the
  convolution is one matrix-vector product per utterance. This drops 4% of the model's FLOPs, a
  [batch, 9216, frames] copy, and most of the long-utterance memory peak.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from speechbrain.dataio.dataio import length_to_mask
from speechbrain.lobes.models.ECAPA_TDNN import AttentiveStatisticsPooling, SEBlock, SERes2NetBlock, TDNNBlock

ROW_ALIGN_FLOATS = 16


def flush_denormal_weights(model: torch.nn.Module) -> int:
    """Sets subnormal floating-point parameters and buffers to zero; returns how many there were."""
    flushed = 0
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            if tensor.is_floating_point():
                subnormal = (tensor != 0) & (tensor.abs() < torch.finfo(tensor.dtype).tiny)
                flushed += int(subnormal.sum())
                tensor.masked_fill_(subnormal, 0.0)
    return flushed


class GemmConv1d(torch.nn.Conv1d):
    """``torch.nn.Conv1d`` (stride 1, no padding, one group) as a GEMM per kernel tap; same parameters."""

    _taps: list[torch.Tensor]
    _bias: torch.Tensor
    _floor: torch.Tensor | None = None
    _ceiling: torch.Tensor | None = None

    @classmethod
    def swap_in(cls, conv: torch.nn.Conv1d) -> bool:
        """Turns ``conv`` into a ``GemmConv1d`` in place when its layout allows; returns whether it did."""
        if type(conv) is not torch.nn.Conv1d or conv.bias is None:
            return False
        if conv.stride != (1,) or conv.padding != (0,) or conv.groups != 1:
            return False
        conv.__class__ = cls
        conv.refresh_taps()
        return True

    def refresh_taps(self) -> None:
        """Caches each tap's [out, in] weight matrix contiguously (call again after changing the weights)."""
        weight = self.weight.detach()
        self._taps = [weight[:, :, k].contiguous() for k in range(weight.shape[2])]
        self._bias = self.bias.detach()[:, None]
        self._floor = self._ceiling = None

    def fold_relu_batch_norm(self, norm: torch.nn.BatchNorm1d) -> None:
        """Makes this convolution compute ``norm(relu(conv(x)))`` for a batch norm in eval mode."""
        scale = norm.weight.detach() / torch.sqrt(norm.running_var + norm.eps)
        shift = norm.bias.detach() - norm.running_mean * scale
        weight = self.weight.detach() * scale[:, None, None]
        self._taps = [weight[:, :, k].contiguous() for k in range(weight.shape[2])]
        self._bias = (self.bias.detach() * scale + shift)[:, None]
        negative = scale < 0
        self._floor = torch.where(negative, -torch.inf, shift)[:, None]
        self._ceiling = torch.where(negative, shift, torch.inf)[:, None] if bool(negative.any()) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [batch, in, time] -> [batch, out, time - span]
        step = self.dilation[0]
        frames = x.shape[-1] - step * (len(self._taps) - 1)
        # Output rows start on 64-byte boundaries: with an unaligned row stride (frames not a multiple of
        # 16) the same GEMM measured 25-30% slower. The result is a view of the padded buffer.
        stride = -(-frames // ROW_ALIGN_FLOATS) * ROW_ALIGN_FLOATS
        out = torch.empty(x.shape[0], self.out_channels, stride, dtype=x.dtype, device=x.device)[..., :frames]
        for row in range(x.shape[0]):
            xr, yr = x[row], out[row]
            torch.addmm(self._bias, self._taps[0], xr[:, :frames], out=yr)
            for k in range(1, len(self._taps)):
                yr.addmm_(self._taps[k], xr[:, k * step : k * step + frames])
        # Clamps with one tensor bound each: one with both bounds as tensors measured 13x slower.
        if self._floor is not None:
            out.clamp_(min=self._floor)
        if self._ceiling is not None:
            out.clamp_(max=self._ceiling)
        return out


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


def valid_frames(lengths: torch.Tensor | None, batch: int, frames: int) -> list[int]:
    """Frames SpeechBrain's masks keep per row for relative ``lengths`` (all of them when None)."""
    if lengths is None:
        return [frames] * batch
    return length_to_mask(lengths * frames, max_len=frames).sum(dim=1).long().tolist()


class FusedSERes2NetBlock(SERes2NetBlock):
    """SpeechBrain's SE-Res2Net block with the squeeze-excitation gate and the residual sum in one pass."""

    @classmethod
    def swap_in(cls, block: SERes2NetBlock) -> bool:
        if type(block) is not SERes2NetBlock or type(block.se_block) is not SEBlock:
            return False
        block.__class__ = cls
        return True

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        residual = self.shortcut(x) if self.shortcut else x
        x = self.tdnn2(self.res2net_block(self.tdnn1(x)))
        se = self.se_block
        counts = valid_frames(lengths, x.shape[0], x.shape[-1])
        means = torch.stack([x[row, :, :n].mean(dim=-1) for row, n in enumerate(counts)])[:, :, None]
        gate = se.sigmoid(se.conv2(se.relu(se.conv1(means))))
        return torch.addcmul(residual, x, gate, out=x)


def _weighted_statistics(x: torch.Tensor, weights: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation over time under weights that sum to one (SpeechBrain's formula)."""
    mean = torch.einsum("bct,bct->bc", weights, x)
    squared = (x - mean[..., None]).square_()
    std = torch.einsum("bct,bct->bc", weights, squared).clamp(eps).sqrt()
    return mean, std


class ContextFoldedPooling(AttentiveStatisticsPooling):
    """SpeechBrain's attentive statistics pooling with the global context folded into a per-utterance bias."""

    @classmethod
    def swap_in(cls, pooling: AttentiveStatisticsPooling) -> bool:
        conv = pooling.tdnn.conv.conv
        if type(pooling) is not AttentiveStatisticsPooling or not pooling.global_context:
            return False
        if conv.kernel_size != (1,) or conv.groups != 1 or conv.bias is None:
            return False
        pooling.__class__ = cls
        return True

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        batch, channels, frames = x.shape
        if lengths is None:
            lengths = torch.ones(batch, device=x.device)
        mask = length_to_mask(lengths * frames, max_len=frames, device=x.device).unsqueeze(1)
        mean, std = _weighted_statistics(x, mask / mask.sum(dim=2, keepdim=True), self.eps)

        # tdnn.conv on cat([x, mean, std]): the mean/std columns of its weight act on constants.
        weight = self.tdnn.conv.conv.weight[:, :, 0]
        context = torch.addmm(self.tdnn.conv.conv.bias, torch.cat((mean, std), dim=1), weight[:, channels:].t())
        hidden = torch.baddbmm(context[:, :, None], weight[:, :channels].expand(batch, -1, -1), x)
        hidden = self.tdnn.dropout(self.tdnn.norm(self.tdnn.activation(hidden)))

        attn = self.conv(self.tanh(hidden))
        if not bool(mask.all()):
            attn = attn.masked_fill(mask == 0, float("-inf"))
        attn = F.softmax(attn, dim=2)
        mean, std = _weighted_statistics(x, attn, self.eps)
        return torch.cat((mean, std), dim=1).unsqueeze(2)


def speed_up_for_cpu(model: torch.nn.Module) -> dict[str, int]:
    """Applies every swap above to an ECAPA-TDNN in eval mode; returns what was changed."""
    if model.training:
        raise ValueError("the CPU kernels are for inference; call model.eval() first")
    changes = {"denormal_weights_flushed": flush_denormal_weights(model)}
    changes["pooling"] = sum(
        ContextFoldedPooling.swap_in(m) for m in model.modules() if isinstance(m, AttentiveStatisticsPooling)
    )
    changes["gemm_convolutions"] = sum(GemmConv1d.swap_in(m) for m in model.modules() if isinstance(m, torch.nn.Conv1d))
    # The pooling reads its own TDNN block's weights, norm and activation: that block stays as it is.
    pooling_blocks = {id(m) for p in model.modules() if isinstance(p, ContextFoldedPooling) for m in p.modules()}
    changes["fused_tdnn_blocks"] = sum(
        FusedTDNNBlock.swap_in(m) for m in model.modules() if isinstance(m, TDNNBlock) and id(m) not in pooling_blocks
    )
    changes["fused_se_blocks"] = sum(
        FusedSERes2NetBlock.swap_in(m) for m in model.modules() if isinstance(m, SERes2NetBlock)
    )
    return changes
