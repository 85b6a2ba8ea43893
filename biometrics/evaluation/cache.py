"""A disk cache of analysed audit samples (quality measures and embedding), keyed by content.

The key is the sha256 of the file's content hash, the channel, the front-end limits and the model
fingerprint, so a renamed file still hits, and a changed file, channel or model never does.
Entries live under a folder per model fingerprint and each records its fingerprint, which is
checked again on reading: the cache never serves an embedding across model fingerprints.

The cache holds plaintext embeddings of the audit dataset. It is meant for evaluation corpora;
keep it out of shared places (files are written owner-only) or turn it off for customer audio.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from biometrics.voice.audio.telephone import TELEPHONE_FRONT_END
from biometrics.voice.embedding import AnalysedSample, Embedding
from biometrics.voice.quality.gates import QualityMeasures

CACHE_FORMAT = 1
DEFAULT_CACHE_DIR = Path.home() / ".cache" / "bioident" / "embeddings"


@dataclass(frozen=True)
class CachedAnalysis:
    """What the pipeline made of one file: an analysed sample, or the audio error that stopped it."""

    sample: AnalysedSample | None
    error_code: str | None = None  # a ``BiometricsError.code`` when the file could not be decoded


def cache_key(
    content_sha256: str, channel: str, model_fingerprint: str, max_audio_seconds: float, precision: str = "fp32"
) -> str:
    """The entry of one file's analysis; the precision is in it, so an audit in bf16 measures bf16 embeddings."""
    described = {
        "format": CACHE_FORMAT,
        "content_sha256": content_sha256,
        "channel": channel,
        "model_fingerprint": model_fingerprint,
        "max_audio_seconds": max_audio_seconds,
    }
    if precision != "fp32":  # fp32 entries keep the keys they had before precision was recorded
        described["precision"] = precision
    described["front_end"] = TELEPHONE_FRONT_END  # 8 kHz audio embeds differently since the band floor
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()


class EmbeddingCache:
    """Analysed samples on disk under ``directory/<model fingerprint>/<key[:2]>/<key>.npz``."""

    def __init__(self, directory: Path = DEFAULT_CACHE_DIR) -> None:
        self.directory = Path(directory).expanduser()
        self.hits = 0
        self.misses = 0
        self.writes = 0

    def _path(self, key: str, model_fingerprint: str) -> Path:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in model_fingerprint)
        return self.directory / safe / key[:2] / f"{key}.npz"

    def get(self, key: str, model_fingerprint: str) -> CachedAnalysis | None:
        path = self._path(key, model_fingerprint)
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(str(data["meta"]))
                vector = data["embedding"].astype(np.float32) if "embedding" in data.files else None
        except FileNotFoundError:
            self.misses += 1
            return None
        except (OSError, ValueError, KeyError):  # a torn or foreign file: recompute and overwrite it
            self.misses += 1
            return None
        if meta.get("format") != CACHE_FORMAT or meta.get("key") != key:
            self.misses += 1
            return None
        if meta.get("model_fingerprint") != model_fingerprint:
            self.misses += 1
            return None
        self.hits += 1
        if meta.get("error_code") is not None:
            return CachedAnalysis(None, str(meta["error_code"]))
        measures = QualityMeasures(**{k: float("nan") if v is None else float(v) for k, v in meta["measures"].items()})
        embedding = None if vector is None else Embedding(vector, model_fingerprint)
        return CachedAnalysis(AnalysedSample(measures, embedding))

    def put(self, key: str, model_fingerprint: str, analysis: CachedAnalysis) -> None:
        meta: dict = {"format": CACHE_FORMAT, "key": key, "model_fingerprint": model_fingerprint}
        arrays: dict[str, np.ndarray] = {}
        if analysis.sample is None:
            meta["error_code"] = analysis.error_code
        else:
            sample = analysis.sample
            if sample.embedding is not None:
                if sample.embedding.model_fingerprint != model_fingerprint:
                    raise ValueError("the embedding's model fingerprint differs from the cache key's")
                arrays["embedding"] = sample.embedding.vector.astype(np.float32)
            m = sample.measures
            meta["measures"] = {
                name: (None if np.isnan(value) else float(value))
                for name, value in {
                    "duration_s": m.duration_s,
                    "net_speech_s": m.net_speech_s,
                    "snr_db": m.snr_db,
                    "clipping_ratio": m.clipping_ratio,
                }.items()
            }
        path = self._path(key, model_fingerprint)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")  # created owner-only
        try:
            with os.fdopen(fd, "wb") as handle:
                np.savez(handle, meta=np.array(json.dumps(meta)), **arrays)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        self.writes += 1

    def stats(self) -> dict:
        return {"directory": str(self.directory), "hits": self.hits, "misses": self.misses, "writes": self.writes}
