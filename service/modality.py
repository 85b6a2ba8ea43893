"""The biometric modalities the service holds data for; consents, data keys and templates are per modality."""

from __future__ import annotations

from enum import StrEnum


class Modality(StrEnum):
    VOICE = "voice"
    FINGERPRINT = "fingerprint"
