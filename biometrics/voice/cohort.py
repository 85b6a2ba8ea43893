"""Impostor cohorts for score normalisation: built once from a folder of speech, stored as a file."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from biometrics.errors import CohortError

AUDIO_SUFFIXES = {".wav", ".flac"}
COHORT_FORMAT = 1


@dataclass(frozen=True)
class Cohort:
    embeddings: np.ndarray  # float32 [n, 192], unit rows
    model_fingerprint: str
    channel: str
    meta: dict = field(default_factory=dict)

    def save(self, path: Path) -> None:
        meta = {
            **self.meta,
            "format": COHORT_FORMAT,
            "model_fingerprint": self.model_fingerprint,
            "channel": self.channel,
            "size": int(len(self.embeddings)),
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as handle:
            np.savez(handle, embeddings=self.embeddings.astype(np.float32), meta=np.array(json.dumps(meta)))

    @classmethod
    def load(cls, path: Path) -> Cohort:
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(str(data["meta"]))
                embeddings = data["embeddings"].astype(np.float32)
            valid = isinstance(meta, dict) and meta.get("format") == COHORT_FORMAT
            if not valid or embeddings.ndim != 2 or len(embeddings) < 2:
                raise CohortError(f"{path} is not a cohort file of format {COHORT_FORMAT}")
            return cls(embeddings, str(meta["model_fingerprint"]), str(meta["channel"]), meta)
        except FileNotFoundError:
            raise CohortError(f"cohort file {path} not found") from None
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CohortError(f"{path} is not a cohort file") from exc


def audio_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise CohortError(f"{folder} is not a directory")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())
    if len(files) < 2:
        raise CohortError(f"{folder} holds fewer than two audio files")
    return files


def files_digest(files: Sequence[Path]) -> str:
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def new_cohort_meta(folder: Path, files: Sequence[Path], skipped: Sequence[str], max_speech_s: float | None) -> dict:
    return {
        "source_folder": str(folder),
        "source_files": len(files),
        "source_sha256": files_digest(files),
        "skipped": list(skipped),
        "max_speech_s": max_speech_s,
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


ProgressFn = Callable[[int, int], None]
