"""Voice enrolment templates: per channel, the renormalised mean of the unit-length embeddings heard in it.

Samples of different channels are never averaged together: a template keeps a mean per channel it was
enrolled in (format 2), so that a probe is scored against a known channel, at that pair's threshold.
Format 1 (templates made before channels were recorded) holds one mean of unknown channel, and still loads.

Since front end 2 (2026-12-05) the model hears telephone audio with its empty upper band filled by a fixed
floor (biometrics/voice/audio/telephone.py), so telephone embeddings made before are not like those made
now. A template records the front end it was made with; the telephone mean of an older one loads as of
unknown channel, held to the stricter threshold (as format 1 is) until the customer enrols again.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from biometrics.errors import BiometricsError
from biometrics.voice.audio.telephone import TELEPHONE_FRONT_END
from biometrics.voice.audio.waveform import AudioChannel
from biometrics.voice.embedding import Embedding, require_same_model

_MAGIC_V1 = b"BIVT1"
_MAGIC_V2 = b"BIVT2"
UNKNOWN = "unknown"  # the slot of a format-1 template (or of embeddings given without a channel)
SLOTS = frozenset({*map(str, AudioChannel), UNKNOWN})


class TemplateFormatError(BiometricsError):
    code = "template_invalid"


@dataclass(frozen=True)
class Capture:
    """One enrolment sample's embedding and the channel it came through (None: not known)."""

    embedding: Embedding
    channel: AudioChannel | None

    @property
    def slot(self) -> str:
        return UNKNOWN if self.channel is None else str(self.channel)


@dataclass(frozen=True)
class VoiceTemplate:
    means: dict[str, np.ndarray]  # slot -> float64 mean of the unit embeddings absorbed in it
    counts: dict[str, int]  # slot -> embeddings absorbed in it
    count: int  # captures enrolled
    model_fingerprint: str

    @property
    def primary(self) -> str:
        return next(
            slot for slot in (str(AudioChannel.WIDEBAND), str(AudioChannel.TELEPHONE), UNKNOWN) if slot in self.means
        )

    @property
    def mean(self) -> np.ndarray:
        return self.means[self.primary]

    @property
    def vector(self) -> np.ndarray:
        return _unit(self.mean)

    def as_embedding(self, slot: str | None = None) -> Embedding:
        return Embedding(_unit(self.means[slot or self.primary]), self.model_fingerprint)

    @property
    def scored_channel(self) -> AudioChannel | None:
        """The channel of the mean every probe is scored against (None: unknown); see ``for_probe``."""
        return next((c for c in (AudioChannel.WIDEBAND, AudioChannel.TELEPHONE) if str(c) in self.means), None)

    def for_probe(self, probe: AudioChannel) -> tuple[Embedding, AudioChannel | None]:
        """The embedding a probe heard in ``probe`` is scored against, and its channel (None: unknown).

        The wideband mean whenever there is one, a caller on the phone included: scored directly, a
        wideband enrolment told telephone callers apart better than its audio passed through a simulated
        phone line (``audit run --channel mixed`` measures both; benchmarks/RESULTS.md has the figures).
        """
        channel = self.scored_channel
        return self.as_embedding(UNKNOWN if channel is None else str(channel)), channel

    @classmethod
    def from_captures(cls, captures: Sequence[Capture]) -> VoiceTemplate:
        if not captures:
            raise ValueError("a template needs at least one capture")
        empty = cls({}, {}, 0, captures[0].embedding.model_fingerprint)
        return empty.absorb_captures(captures)

    def absorb_captures(self, captures: Sequence[Capture]) -> VoiceTemplate:
        """A new template that also holds these captures (each slot's running mean stays exact)."""
        means = {slot: mean * self.counts[slot] for slot, mean in self.means.items()}
        counts = dict(self.counts)
        for capture in captures:
            require_same_model(self.model_fingerprint, capture.embedding.model_fingerprint)
            means[capture.slot] = means.get(capture.slot, 0.0) + capture.embedding.vector.astype(np.float64)
            counts[capture.slot] = counts.get(capture.slot, 0) + 1
        return VoiceTemplate(
            means={slot: total / counts[slot] for slot, total in means.items()},
            counts=counts,
            count=self.count + len(captures),
            model_fingerprint=self.model_fingerprint,
        )

    @classmethod
    def from_embeddings(cls, embeddings: Sequence[Embedding], channel: AudioChannel | None = None) -> VoiceTemplate:
        return cls.from_captures([Capture(e, channel) for e in embeddings])

    def absorb(self, embeddings: Sequence[Embedding], channel: AudioChannel | None = None) -> VoiceTemplate:
        return self.absorb_captures([Capture(e, channel) for e in embeddings])

    def to_bytes(self) -> bytes:
        slots = list(self.means)
        header = {
            "fingerprint": self.model_fingerprint,
            "count": self.count,
            "dim": len(self.mean),
            "slots": [{"channel": slot, "count": self.counts[slot]} for slot in slots],
            "front_end": TELEPHONE_FRONT_END,
        }
        head = json.dumps(header).encode()
        body = b"".join(self.means[slot].astype("<f8").tobytes() for slot in slots)
        return _MAGIC_V2 + struct.pack("<I", len(head)) + head + body

    @classmethod
    def from_bytes(cls, data: bytes) -> VoiceTemplate:
        try:
            magic = data[: len(_MAGIC_V2)]
            if magic not in (_MAGIC_V1, _MAGIC_V2):
                raise ValueError
            (n,) = struct.unpack_from("<I", data, len(magic))
            start = len(magic) + 4
            header = json.loads(data[start : start + n])
            values = np.frombuffer(data[start + n :], dtype="<f8").astype(np.float64)
            count, dim = int(header["count"]), int(header["dim"])
            slots = (
                [(UNKNOWN, count)] if magic == _MAGIC_V1 else [(s["channel"], int(s["count"])) for s in header["slots"]]
            )
            names = [slot for slot, _ in slots]
            if (
                not slots
                or len(set(names)) != len(names)
                or not set(names) <= SLOTS
                or count < 1
                or dim < 1
                or len(values) != dim * len(slots)
                or any(c < 1 for _, c in slots)
                or not np.isfinite(values).all()
            ):
                raise ValueError
            means = {slot: values[i * dim : (i + 1) * dim] for i, (slot, _) in enumerate(slots)}
            counts = dict(slots)
            if magic == _MAGIC_V2 and int(header.get("front_end", 1)) < TELEPHONE_FRONT_END:
                _telephone_as_unknown(means, counts)
            return cls(means, counts, count, str(header["fingerprint"]))
        except (ValueError, KeyError, TypeError, OverflowError, RecursionError, struct.error) as exc:
            raise TemplateFormatError("not a voice template") from exc


def _telephone_as_unknown(means: dict[str, np.ndarray], counts: dict[str, int]) -> None:
    """An older front end's telephone mean joins the unknown slot (weighted by the embeddings in each)."""
    telephone = str(AudioChannel.TELEPHONE)
    if telephone not in means:
        return
    mean, n = means.pop(telephone), counts.pop(telephone)
    if UNKNOWN in means:
        total = counts[UNKNOWN] + n
        means[UNKNOWN] = (means[UNKNOWN] * counts[UNKNOWN] + mean * n) / total
        counts[UNKNOWN] = total
    else:
        means[UNKNOWN], counts[UNKNOWN] = mean, n


def _unit(mean: np.ndarray) -> np.ndarray:
    return (mean / np.linalg.norm(mean)).astype(np.float32)
