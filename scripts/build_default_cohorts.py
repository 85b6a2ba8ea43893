"""Builds the default impostor cohorts that ship inside the package, one per channel.

    .venv/bin/python scripts/build_default_cohorts.py [COHORT_FOLDER | --thresholds-only]

COHORT_FOLDER defaults to ../shared/data/speech/librispeech/cohort (LibriSpeech train-clean-100, one
utterance per speaker, CC BY 4.0). Each file's speech goes through the production pipeline: as it is
(the wideband cohort) and through the simulated 8 kHz G.711 mu-law line (the telephone cohort). The
files and a manifest with their SHA-256 and the model fingerprint are written to
biometrics/voice/cohorts/; the service refuses them under any other model.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

from biometrics.settings import CoreSettings
from biometrics.voice.cohort import Cohort
from biometrics.voice.default_cohorts import COHORTS_DIR, MANIFEST, SOURCE
from biometrics.voice.embedding import load_voice_embedder
from biometrics.voice.pipeline import Channel, build_cohort

REPO = Path(__file__).resolve().parents[1]
CHANNELS = {"wideband": Channel.CLEAN, "telephone": Channel.TELEPHONE}


def main(folder: Path) -> int:
    settings = CoreSettings()
    embedder = load_voice_embedder(settings)
    manifest = {"format": 1, "model_fingerprint": embedder.fingerprint, "source": SOURCE, "cohorts": {}}
    for name, channel in CHANNELS.items():
        cohort = build_cohort(embedder, folder, settings, channel)
        # No path of the building machine goes into a file the package ships.
        meta = {**cohort.meta, "source_folder": "librispeech/cohort (train-clean-100)"}
        path = COHORTS_DIR / f"{name}.npz"
        Cohort(cohort.embeddings, cohort.model_fingerprint, cohort.channel, meta).save(path)
        manifest["cohorts"][name] = {
            "file": path.name,
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            "speakers": int(len(cohort.embeddings)),
            "skipped": meta["skipped"],
            "simulated_channel": str(channel),
        }
        print(f"{name}: {len(cohort.embeddings)} speakers -> {path.relative_to(REPO)}")
    (COHORTS_DIR / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    record_default_thresholds()
    return 0


def record_default_thresholds() -> None:
    """The thresholds the packaged cohorts give at the default target FMR, recorded beside their hashes so
    that a change to either shows (tests/test_voice_channels.py recomputes them)."""
    from biometrics.scoring.operating_points import ChannelScoring

    manifest = json.loads((COHORTS_DIR / MANIFEST).read_text())
    settings = CoreSettings(_env_file=None)
    recorded = {"target_fmr": settings.target_fmr}
    for method in ("cosine", "as-norm"):
        chosen = settings.model_copy(update={"scoring": method})
        scoring = ChannelScoring.for_model(chosen, manifest["model_fingerprint"])
        recorded[method] = {name: point["threshold"] for name, point in scoring.summary().items()}
    manifest["default_thresholds"] = recorded
    (COHORTS_DIR / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


if __name__ == "__main__":
    if sys.argv[1:] == ["--thresholds-only"]:  # the cohorts as they are, the thresholds recorded again
        record_default_thresholds()
        sys.exit(0)
    sys.exit(main(Path(sys.argv[1]) if len(sys.argv) > 1 else REPO.parent / "shared/data/speech/librispeech/cohort"))
