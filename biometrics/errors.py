"""Typed errors of the biometric core.

Every error has a stable machine-readable ``code``; the service maps codes to problem+json
types in one place. Messages never contain samples, embeddings or secrets.
"""

from __future__ import annotations


class BiometricsError(Exception):
    """Base of every error the core raises on purpose."""

    code = "biometrics_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# --- audio input ---------------------------------------------------------------------------


class AudioError(BiometricsError):
    """The audio given cannot be used; the message says why."""

    code = "audio_invalid"


class EmptyAudio(AudioError):
    code = "audio_empty"


class NotAudio(AudioError):
    code = "audio_not_recognised"


class ContainerSentAsRaw(NotAudio):
    """A WAV/FLAC/Ogg file sent as raw telephone audio: its header would be decoded as samples."""

    code = "audio_container_sent_as_raw"


class TruncatedAudio(AudioError):
    code = "audio_truncated"


class UnsupportedCodec(AudioError):
    code = "audio_unsupported_codec"


class NonFiniteSamples(AudioError):
    code = "audio_non_finite"


class SampleRateMismatch(AudioError):
    code = "audio_sample_rate_mismatch"


class UnsupportedSampleRate(AudioError):
    code = "audio_unsupported_sample_rate"


class AudioTooLong(AudioError):
    code = "audio_too_long"


# --- model ---------------------------------------------------------------------------------


class ModelError(BiometricsError):
    code = "model_error"


class ModelFileMissing(ModelError):
    code = "model_file_missing"


class ModelHashMismatch(ModelError):
    code = "model_hash_mismatch"


class ModelSourceUnavailable(ModelError):
    code = "model_source_unavailable"


class EmbeddingQueueFull(ModelError):
    """Too many analyses are waiting for the model; ``retry_after_s`` estimates when one slot frees."""

    code = "overloaded"

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


# --- templates and scores ------------------------------------------------------------------


class IncompatibleModel(BiometricsError):
    """Two embeddings or templates come from different model fingerprints."""

    code = "model_fingerprint_mismatch"


class CohortError(BiometricsError):
    code = "cohort_invalid"


# --- fingerprints --------------------------------------------------------------------------


class FingerprintInputError(BiometricsError):
    """A fingerprint image or record given cannot be used; the message says why (never its content)."""

    code = "fingerprint_input_invalid"


class FingerprintImageError(FingerprintInputError):
    code = "fingerprint_image_invalid"


class FingerprintExtractorStalled(BiometricsError):
    """NBIS did not finish measuring a capture in time, or too many of its runs are stalled: retry later."""

    code = "fingerprint_extractor_stalled"
    retry_after_s = 5


class FingerprintRecordError(FingerprintInputError):
    """A finger-minutiae record (ISO/IEC 19794-2 or ANSI INCITS 378) is malformed."""

    code = "fingerprint_record_invalid"


class FingerprintTemplateError(BiometricsError, ValueError):
    """Template bytes are damaged, of another version, or of another extractor and matcher."""

    code = "fingerprint_template_invalid"
