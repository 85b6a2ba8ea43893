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
from speechbrain.lobes.models.ECAPA_TDNN import AttentiveStatisticsPooling


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [batch, in, time] -> [batch, out, time - span]
        step = self.dilation[0]
        frames = x.shape[-1] - step * (len(self._taps) - 1)
        out = torch.empty(x.shape[0], self.out_channels, frames, dtype=x.dtype, device=x.device)
        bias = self.bias.detach()[:, None]
        for row in range(x.shape[0]):
            xr, yr = x[row], out[row]
            torch.addmm(bias, self._taps[0], xr[:, :frames], out=yr)
            for k in range(1, len(self._taps)):
                yr.addmm_(self._taps[k], xr[:, k * step : k * step + frames])
        return out


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
    return changes
