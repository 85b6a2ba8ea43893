"""The impostor cohorts that ship inside the package, one per channel, and their integrity check.

They are embeddings of LibriSpeech train-clean-100 speakers (CC BY 4.0, see NOTICE), made by
``scripts/build_default_cohorts.py`` with the verified model; ``manifest.json`` records each file's
SHA-256 and the model fingerprint. A file that does not match its recorded hash, or a model other
than the one they were made with, is refused: scores across models mean nothing.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from biometrics.errors import CohortError
from biometrics.voice.audio.waveform import AudioChannel
from biometrics.voice.cohort import Cohort
from biometrics.voice.embedding import require_same_model

COHORTS_DIR = Path(__file__).resolve().parent / "cohorts"
MANIFEST = "manifest.json"
SOURCE = (
    "LibriSpeech train-clean-100 (V. Panayotov, G. Chen, D. Povey, S. Khudanpur, ICASSP 2015), CC BY 4.0: "
    "one utterance per speaker"
)


def manifest() -> dict:
    try:
        return json.loads((COHORTS_DIR / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise CohortError(f"the packaged cohort manifest cannot be read ({type(exc).__name__})") from None


def load_default_cohorts(model_fingerprint: str) -> dict[AudioChannel, Cohort]:
    """The packaged cohort of each channel, checked against its recorded hash and model."""
    recorded = manifest()
    require_same_model(recorded["model_fingerprint"], model_fingerprint)
    cohorts = {}
    for channel in AudioChannel:
        entry = recorded["cohorts"][str(channel)]
        path = COHORTS_DIR / entry["file"]
        if hashlib.sha256(path.read_bytes()).hexdigest() != entry["sha256"]:
            raise CohortError(f"the packaged {channel} cohort does not match its recorded SHA-256")
        cohort = Cohort.load(path)
        require_same_model(cohort.model_fingerprint, model_fingerprint)
        cohorts[channel] = cohort
    return cohorts
