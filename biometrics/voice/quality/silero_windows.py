"""Silero VAD's 16 kHz window probabilities for a whole recording at once, from its TorchScript weights.

Silero's own ``audio_forward`` runs its TorchScript model once per 32 ms window: 64 samples of the
window before as context, a 4-frame STFT, four small convolutions, one LSTM cell step carrying state
to the next window, and a sigmoid head. Only the LSTM step depends on the windows before; the rest
depends on the window's 576 samples alone. Here the STFT and the convolutions run as matrix products
over all the windows of a block at once, the LSTM over the block's windows as one sequence (its state
carried from block to block), and the head over them all: the same function with the same weights,
its probabilities within 1e-5 of Silero's (tests/test_vad_windows.py), at a tenth of the time (measured
on 480 s of LibriSpeech, one thread: 5.2 s -> 0.5 s). Once the speaker model runs in bf16, Silero's
window-by-window loop took as long as the model in a verification; this keeps it well under.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

WINDOW = 512  # samples per window at 16 kHz
CONTEXT = 64  # samples of the window before, prepended to each window
STFT_FILTER, STFT_HOP, STFT_RIGHT_PAD = 256, 128, 64
ENCODER_STRIDES = (1, 2, 2, 1)  # kernel 3, padding 1 each
HIDDEN = 128
# Windows per block: bounds the STFT's intermediate tensors (about 3 MB of them per 100 windows).
BLOCK_WINDOWS = 2048


class SileroWindows:
    """Window probabilities of Silero VAD's 16 kHz model (``silero_vad.jit``'s ``_model``), batched over windows."""

    def __init__(self, scripted_vad: torch.jit.ScriptModule) -> None:
        model = scripted_vad._model  # the 16 kHz network; _model_8k is never used (audio is at 16 kHz)
        _check_layout(model)
        state = {name: t.detach().clone() for name, t in model.state_dict().items()}
        self._basis_t = state["stft.forward_basis_buffer"][:, 0, :].t().contiguous()  # [256, 258]: real, imag
        self._convs = [
            (
                state[f"encoder.{i}.reparam_conv.weight"].flatten(1).t().contiguous(),  # [in * 3, out]
                state[f"encoder.{i}.reparam_conv.bias"],
                stride,
            )
            for i, stride in enumerate(ENCODER_STRIDES)
        ]
        self._lstm = torch.nn.LSTM(HIDDEN, HIDDEN).eval()  # LSTMCell's weights and gate order
        with torch.no_grad():
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(self._lstm, f"{name}_l0").copy_(state[f"decoder.rnn.{name}"])
        self._head_weight = state["decoder.decoder.2.weight"][:, :, 0]  # [1, 128]
        self._head_bias = state["decoder.decoder.2.bias"]

    @torch.inference_mode()
    def probabilities(self, audio: torch.Tensor, block_windows: int = BLOCK_WINDOWS) -> list[float]:
        """Speech probability of each window of 1-D 16 kHz ``audio``, the last zero-padded (as ``audio_forward``)."""
        if audio.ndim != 1:
            raise ValueError("audio must be one channel of samples")
        if len(audio) == 0:
            return []
        audio = audio.float()
        windows = -(-len(audio) // WINDOW)
        # Window 0's context is zeros, as after Silero's reset_states; the audio is zero-padded to whole windows.
        padded = F.pad(audio, (CONTEXT, windows * WINDOW - len(audio)))
        state: tuple[torch.Tensor, torch.Tensor] | None = None
        out = []
        for first in range(0, windows, block_windows):
            last = min(windows, first + block_windows)
            inputs = padded[first * WINDOW : last * WINDOW + CONTEXT].unfold(0, WINDOW + CONTEXT, WINDOW)
            probs, state = self._block(inputs, state)
            out.append(probs)
        return torch.cat(out).tolist()

    def _block(
        self, inputs: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Probabilities of [windows, 576] inputs, and the LSTM state after the last window."""
        count = inputs.shape[0]
        framed = F.pad(inputs[:, None], (0, STFT_RIGHT_PAD), mode="reflect")[:, 0]  # Silero's STFT padding
        frames = framed.unfold(-1, STFT_FILTER, STFT_HOP)  # [windows, 4, 256]
        spectrum = (frames.reshape(-1, STFT_FILTER) @ self._basis_t).view(count, frames.shape[1], -1)
        bins = spectrum.shape[-1] // 2
        h = torch.sqrt(spectrum[..., :bins].pow(2) + spectrum[..., bins:].pow(2))  # [windows, frames, 129]
        for weight_t, bias, stride in self._convs:  # Conv1d(kernel 3, padding 1) + ReLU, frames along dim 1
            columns = F.pad(h, (0, 0, 1, 1)).unfold(1, 3, stride)  # [windows, frames out, channels, 3]
            flat = columns.reshape(-1, columns.shape[2] * 3)
            h = torch.addmm(bias, flat, weight_t).relu_().view(count, columns.shape[1], -1)
        # One frame is left per window: the LSTM runs over the windows in order, then the head.
        sequence, state = self._lstm(h[:, 0, None, :], state)
        return torch.sigmoid(F.linear(sequence[:, 0].relu(), self._head_weight, self._head_bias))[:, 0], state


def _check_layout(model: torch.nn.Module) -> None:
    """Refuses a Silero build whose 16 kHz network is not the one ``SileroWindows`` computes."""
    stft = model.stft
    expected = {
        "stft.forward_basis_buffer": (2 * (STFT_FILTER // 2 + 1), 1, STFT_FILTER),
        "decoder.rnn.weight_ih": (4 * HIDDEN, HIDDEN),
        "decoder.rnn.weight_hh": (4 * HIDDEN, HIDDEN),
        "decoder.decoder.2.weight": (1, HIDDEN, 1),
    }
    shapes = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    convs = [getattr(model.encoder, str(i)).reparam_conv for i in range(len(ENCODER_STRIDES))]
    layout_ok = (
        all(shapes.get(name) == shape for name, shape in expected.items())
        and int(stft.hop_length) == STFT_HOP
        and int(stft.filter_length) == STFT_FILTER
        and stft.padding.original_name == "ReflectionPad1d"
        and tuple(stft.padding.padding) == (0, STFT_RIGHT_PAD)
        and int(model.context_size_samples) == CONTEXT
        and all(
            (tuple(c.kernel_size), tuple(c.stride), tuple(c.padding), tuple(c.dilation), c.groups)
            == ((3,), (s,), (1,), (1,), 1)
            for c, s in zip(convs, ENCODER_STRIDES, strict=True)
        )
        and shapes.get("encoder.3.reparam_conv.weight", (0,))[0] == HIDDEN
        and [m.original_name for m in model.decoder.decoder.children()] == ["Dropout", "ReLU", "Conv1d", "Sigmoid"]
        and all(
            (block.se.original_name, block.activation.original_name) == ("Identity", "ReLU")
            for block in model.encoder.children()
        )
    )
    if not layout_ok:
        raise RuntimeError("unexpected Silero VAD network layout; the batched window probabilities would be wrong")
