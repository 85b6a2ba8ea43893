"""The SpeechBrain ECAPA-TDNN (VoxCeleb) speaker encoder, built from SpeechBrain's own classes.

Batching utterances of different lengths normally changes each result a little: every
'same'-padded convolution reflects at the end of the *tensor*, so a short utterance sees padding
instead of its own reflected frames, and for utterances of a few seconds the embedding moves
by up to 1e-3 in cosine. We keep batches exact by a forward pre-hook on each such convolution
that writes, just past each row's last real frame, the reflection SpeechBrain would have made
had the row been alone. Pooling and squeeze-excitation already honour relative lengths, so each
row's embedding is the one it gets on its own (to float rounding).
"""

from __future__ import annotations

import io
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from speechbrain.inference.classifiers import EncoderClassifier
from speechbrain.lobes.features import Fbank
from speechbrain.lobes.models.ECAPA_TDNN import ECAPA_TDNN
from speechbrain.nnet.CNN import Conv1d
from speechbrain.processing.features import InputNormalization

from biometrics.audio.waveform import MODEL_SAMPLE_RATE
from biometrics.model.allocator import keep_freed_memory
from biometrics.model.cpu_kernels import speed_up_for_cpu
from biometrics.model.integrity import read_verified
from biometrics.model.weights import ModelWeights

EMBEDDING_DIM = 192
N_MELS = 80
# Front-end settings that change embeddings; they go into the model fingerprint.
FRONT_END = {
    "sample_rate": MODEL_SAMPLE_RATE,
    "features": "fbank",
    "n_mels": N_MELS,
    "feature_norm": "sentence-mean",
    "embedding_norm": "global-mean",
    "channels": [1024, 1024, 1024, 1024, 3072],
    "kernel_sizes": [5, 3, 3, 3, 1],
    "dilations": [1, 2, 3, 4, 1],
    "attention_channels": 128,
    "lin_neurons": EMBEDDING_DIM,
}


@dataclass
class _BatchLengths:
    frames: list[int] | None = None


class _ReflectPastRowEnds:
    """Forward pre-hook: before a 'same' conv, fill frames past each row's end as a lone row would see them."""

    def __init__(self, lengths: _BatchLengths, pad: int) -> None:
        self.lengths = lengths
        self.pad = pad

    def __call__(self, module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        frames = self.lengths.frames
        if frames is None:
            return
        x = args[0]  # [batch, channels, time]; ECAPA's convs run with skip_transpose=True
        p = self.pad
        for row, n in enumerate(frames):
            if n >= x.shape[-1]:
                continue  # a full-width row: SpeechBrain's own padding reflects it correctly
            # F.pad(mode="reflect") past frame n-1 gives n-2, n-3, ..., n-1-p.
            x[row, :, n : n + p] = x[row, :, n - 1 - p : n - 1].flip(-1)


class SpeakerEncoder:
    """Turns 16 kHz speech into 192-d ECAPA embeddings, one utterance or a batch at a time."""

    def __init__(self, weights: ModelWeights, device: str = "cpu") -> None:
        self.weights = weights
        self.device = device
        # SpeechBrain's own inference class from verified local weights; we then tune its convolutions
        # (exact batching hooks, and on CPU the equivalent faster kernels of biometrics.model.cpu_kernels).
        self.classifier = build_speechbrain_classifier(weights, device)
        embedding_model = self.classifier.mods.embedding_model
        self._lengths = _BatchLengths()
        self.max_pad = self._install_row_end_hooks(embedding_model)
        self.kernel_changes: dict[str, int] = {}
        if torch.device(device).type == "cpu":
            self.kernel_changes = speed_up_for_cpu(embedding_model)
            self.kernel_changes["malloc_keeps_freed_memory"] = int(keep_freed_memory())
        self._lock = threading.Lock()

    def _install_row_end_hooks(self, model: torch.nn.Module) -> int:
        max_pad = 0
        for module in model.modules():
            if isinstance(module, Conv1d) and module.padding == "same" and module.kernel_size == 1:
                # 'same' padding of width zero is a full copy of the input: skip it (+17% speed, same math).
                module.padding = "valid"
            if isinstance(module, Conv1d) and module.padding == "same" and module.kernel_size > 1:
                if module.stride != 1 or module.padding_mode != "reflect":
                    raise RuntimeError("unexpected ECAPA convolution layout; exact batching would be wrong")
                pad = module.dilation * (module.kernel_size - 1) // 2
                module.register_forward_pre_hook(_ReflectPastRowEnds(self._lengths, pad))
                max_pad = max(max_pad, pad)
        return max_pad

    @property
    def min_frames(self) -> int:
        """Fewest feature frames an utterance needs (reflection padding needs more frames than it pads)."""
        return self.max_pad + 2

    @torch.inference_mode()
    def features(self, samples: np.ndarray) -> torch.Tensor:
        """Mean-normalised filterbank features [frames, 80] of one 16 kHz utterance."""
        wav = torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32)).to(self.device)[None]
        mods = self.classifier.mods
        feats = mods.compute_features(wav)
        return mods.mean_var_norm(feats, torch.ones(1, device=self.device))[0]

    @torch.inference_mode()
    def embed_features(self, features: Sequence[torch.Tensor]) -> np.ndarray:
        """Embeds feature matrices of any lengths in one forward pass; rows equal single-utterance results."""
        frames = [int(f.shape[0]) for f in features]
        if min(frames) < self.min_frames:
            raise ValueError(f"an utterance needs at least {self.min_frames} feature frames")
        # Rows shorter than the batch need max_pad frames past their end for the hooks; full-width rows
        # need none, so a lone utterance (or equal lengths) is computed on its own frames only. Widths
        # are not rounded: on CPU the convolutions are BLAS GEMMs that cache nothing per input shape
        # (RSS stayed flat over 150 distinct lengths; oneDNN's per-shape primitives made it grow).
        longest = max(frames)
        width = longest if min(frames) == longest else longest + self.max_pad
        batch = torch.zeros(len(features), width, N_MELS, device=self.device)
        for row, f in enumerate(features):
            batch[row, : f.shape[0]] = f
        # Relative lengths, half a frame short so SpeechBrain's masks (arange < rel * width) never
        # include the first padding frame through float rounding.
        rel = torch.tensor([(n - 0.5) / width for n in frames], device=self.device)
        mods = self.classifier.mods
        with self._lock:
            self._lengths.frames = frames
            try:
                emb = mods.embedding_model(batch, rel)[:, 0]
            finally:
                self._lengths.frames = None
        emb = mods.mean_var_norm_emb(emb[:, None], torch.ones(len(frames), device=self.device))[:, 0]
        emb = torch.nn.functional.normalize(emb, dim=-1)
        return emb.cpu().numpy().astype(np.float32)

    def embed(self, utterances: Sequence[np.ndarray]) -> np.ndarray:
        """L2-normalised embeddings [n, 192] of 16 kHz utterances, batched in one forward pass."""
        return self.embed_features([self.features(u) for u in utterances])


def _verified_bytes(weights: ModelWeights, name: str) -> io.BytesIO:
    return io.BytesIO(read_verified(weights.files[name], weights.sha256[name]))


def build_speechbrain_classifier(weights: ModelWeights, device: str = "cpu") -> EncoderClassifier:
    """SpeechBrain's ``EncoderClassifier`` for ECAPA-TDNN, exactly as SpeechBrain ships it (no hub, no yaml)."""
    embedding_model = ECAPA_TDNN(
        input_size=N_MELS,
        channels=FRONT_END["channels"],
        kernel_sizes=FRONT_END["kernel_sizes"],
        dilations=FRONT_END["dilations"],
        attention_channels=FRONT_END["attention_channels"],
        lin_neurons=EMBEDDING_DIM,
    )
    state = torch.load(_verified_bytes(weights, "embedding_model.ckpt"), map_location=device, weights_only=True)
    embedding_model.load_state_dict(state)
    embedding_norm = InputNormalization(norm_type="global", std_norm=False)
    embedding_norm._load_statistics_dict(
        torch.load(_verified_bytes(weights, "mean_var_norm_emb.ckpt"), map_location=device, weights_only=True)
    )
    modules = {
        "compute_features": Fbank(n_mels=N_MELS),
        "mean_var_norm": InputNormalization(norm_type="sentence", std_norm=False),
        "embedding_model": embedding_model,
        "mean_var_norm_emb": embedding_norm,
    }
    classifier = EncoderClassifier(
        modules=modules, hparams={"mean_var_norm_emb": embedding_norm}, run_opts={"device": device}
    )
    classifier.eval()
    return classifier
