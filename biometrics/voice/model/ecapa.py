"""The SpeechBrain ECAPA-TDNN (VoxCeleb) speaker encoder, built from SpeechBrain's own classes.

A batch of utterances runs as one row with the utterances packed along time
(``biometrics.voice.model.packing``), so each gets the embedding it gets on its own, to float rounding.
Row batches padded to the longest utterance would not: SpeechBrain's 'same' convolutions reflect
at the end of the *tensor*, and a short utterance padded out moved by up to 1e-3 in cosine.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import torch
from speechbrain.inference.classifiers import EncoderClassifier
from speechbrain.lobes.features import Fbank
from speechbrain.lobes.models.ECAPA_TDNN import ECAPA_TDNN
from speechbrain.processing.features import InputNormalization

from biometrics.integrity import read_verified
from biometrics.torch_thread import on_torch_thread
from biometrics.voice.audio.waveform import MODEL_SAMPLE_RATE
from biometrics.voice.model.allocator import keep_freed_memory
from biometrics.voice.model.cpu_kernels import make_segment_aware, speed_up_for_cpu
from biometrics.voice.model.packing import pack, packed, reflect_into_gaps
from biometrics.voice.model.precision import DTYPES, Precision, PrecisionSetting, resolve_precision
from biometrics.voice.model.weights import ModelWeights

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


class SpeakerEncoder:
    """Turns 16 kHz speech into 192-d ECAPA embeddings, one utterance or a batch at a time."""

    @on_torch_thread
    def __init__(
        self,
        weights: ModelWeights,
        device: str = "cpu",
        *,
        malloc_keep_freed: bool = True,
        precision: PrecisionSetting = "fp32",
    ) -> None:
        self.weights = weights
        self.device = device
        # The precision of the trunk's matrix products (biometrics.voice.model.precision); fp32 off the CPU.
        self.precision: Precision = resolve_precision(precision, device)
        # SpeechBrain's own inference class from verified local weights; we then tune its convolutions
        # (gap-reflecting padding for packed batches, and on CPU the faster kernels of cpu_kernels).
        self.classifier = build_speechbrain_classifier(weights, device)
        embedding_model = self.classifier.mods.embedding_model
        self.max_pad = reflect_into_gaps(embedding_model)
        self.kernel_changes: dict[str, int] = make_segment_aware(embedding_model)
        if torch.device(device).type == "cpu":
            self.kernel_changes.update(speed_up_for_cpu(embedding_model, DTYPES[self.precision]))
            self.kernel_changes["malloc_keeps_freed_memory"] = int(malloc_keep_freed and keep_freed_memory())

    @property
    def kernels(self) -> str:
        """What runs the model's pass: ``onednn`` (the fused bf16 pass of ``onednn_bf16``), ``cpu_kernels`` (eager
        PyTorch with the swaps of ``cpu_kernels``, fp32 or bf16 products) or ``speechbrain`` (off the CPU)."""
        if self.kernel_changes.get("onednn_bf16_models"):
            return "onednn"
        return "cpu_kernels" if torch.device(self.device).type == "cpu" else "speechbrain"

    @property
    def pack_gap(self) -> int:
        """Frames between consecutive utterances of a packed batch: twice the widest reflect padding."""
        return 2 * self.max_pad

    @property
    def min_frames(self) -> int:
        """Fewest feature frames an utterance needs (reflection padding needs more frames than it pads)."""
        return self.max_pad + 2

    @on_torch_thread
    @torch.inference_mode()
    def features(self, samples: np.ndarray) -> torch.Tensor:
        """Mean-normalised filterbank features [frames, 80] of one 16 kHz utterance."""
        wav = torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32)).to(self.device)[None]
        mods = self.classifier.mods
        feats = mods.compute_features(wav)
        return mods.mean_var_norm(feats, torch.ones(1, device=self.device))[0]

    @on_torch_thread
    @torch.inference_mode()
    def embed_features(self, features: Sequence[torch.Tensor]) -> np.ndarray:
        """Embeds feature matrices of any lengths in one forward pass; rows equal single-utterance results."""
        frames = [int(f.shape[0]) for f in features]
        if min(frames) < self.min_frames:
            raise ValueError(f"an utterance needs at least {self.min_frames} feature frames")
        # The gaps hold both neighbours' reflections. Widths are not rounded here: in fp32 the convolutions
        # are BLAS GEMMs that cache nothing per input shape (RSS stayed flat over 150 distinct lengths);
        # the oneDNN bf16 pass, whose primitives are per shape, rounds them itself (onednn_bf16.WIDTH_STEP).
        batch, segments = pack([f.to(self.device) for f in features], gap=self.pack_gap)
        mods = self.classifier.mods
        with packed(segments):  # one pass at a time: every call runs on the torch thread
            emb = mods.embedding_model(batch, torch.ones(1, device=self.device))[:, 0]
        emb = mods.mean_var_norm_emb(emb[:, None], torch.ones(len(frames), device=self.device))[:, 0]
        emb = torch.nn.functional.normalize(emb, dim=-1)
        return emb.cpu().numpy().astype(np.float32)

    @on_torch_thread
    def embed(self, utterances: Sequence[np.ndarray]) -> np.ndarray:
        """L2-normalised embeddings [n, 192] of 16 kHz utterances, batched in one forward pass."""
        return self.embed_features([self.features(u) for u in utterances])


def _verified_bytes(weights: ModelWeights, name: str) -> io.BytesIO:
    return io.BytesIO(read_verified(weights.files[name], weights.sha256[name]))


@on_torch_thread
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
