"""Voice enrolment templates: the renormalised mean of unit-length embeddings."""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from biometrics.errors import BiometricsError
from biometrics.voice.embedding import Embedding, require_same_model

_MAGIC = b"BIVT1"


class TemplateFormatError(BiometricsError):
    code = "template_invalid"


@dataclass(frozen=True)
class VoiceTemplate:
    mean: np.ndarray  # float64 mean of the unit embeddings absorbed so far
    count: int
    model_fingerprint: str

    @property
    def vector(self) -> np.ndarray:
        return (self.mean / np.linalg.norm(self.mean)).astype(np.float32)

    @classmethod
    def from_embeddings(cls, embeddings: Sequence[Embedding]) -> VoiceTemplate:
        if not embeddings:
            raise ValueError("a template needs at least one embedding")
        first = embeddings[0].model_fingerprint
        for e in embeddings[1:]:
            require_same_model(first, e.model_fingerprint)
        mean = np.mean([e.vector.astype(np.float64) for e in embeddings], axis=0)
        return cls(mean=mean, count=len(embeddings), model_fingerprint=first)

    def absorb(self, embeddings: Sequence[Embedding]) -> VoiceTemplate:
        """A new template that also holds these samples (the running mean stays exact)."""
        for e in embeddings:
            require_same_model(self.model_fingerprint, e.model_fingerprint)
        total = self.mean * self.count + sum(e.vector.astype(np.float64) for e in embeddings)
        count = self.count + len(embeddings)
        return VoiceTemplate(mean=total / count, count=count, model_fingerprint=self.model_fingerprint)

    def as_embedding(self) -> Embedding:
        return Embedding(self.vector, self.model_fingerprint)

    def to_bytes(self) -> bytes:
        header = json.dumps({"fingerprint": self.model_fingerprint, "count": self.count, "dim": len(self.mean)})
        head = header.encode()
        return _MAGIC + struct.pack("<I", len(head)) + head + self.mean.astype("<f8").tobytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> VoiceTemplate:
        try:
            if not data.startswith(_MAGIC):
                raise ValueError
            (n,) = struct.unpack_from("<I", data, len(_MAGIC))
            start = len(_MAGIC) + 4
            header = json.loads(data[start : start + n])
            mean = np.frombuffer(data[start + n :], dtype="<f8").astype(np.float64)
            if len(mean) != header["dim"] or header["count"] < 1:
                raise ValueError
            return cls(mean=mean, count=int(header["count"]), model_fingerprint=str(header["fingerprint"]))
        except (ValueError, KeyError, TypeError, struct.error, json.JSONDecodeError) as exc:
            raise TemplateFormatError("not a voice template") from exc
