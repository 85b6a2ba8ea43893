"""Model loading with integrity checks: weights are found, hashed, and only then loaded."""

from biometrics.voice.model.ecapa import SpeakerEncoder
from biometrics.voice.model.weights import EXPECTED_SHA256, ModelWeights, resolve_weights

__all__ = ["EXPECTED_SHA256", "ModelWeights", "SpeakerEncoder", "resolve_weights"]
