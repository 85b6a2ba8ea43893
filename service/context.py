"""What a running service holds: settings, database, keyring, and the voice model (loaded once)."""

from __future__ import annotations

import os
import threading

from biometrics.scoring.calibration import Calibration
from biometrics.scoring.scorer import Scorer
from biometrics.voice.cohort import Cohort
from biometrics.voice.embedding import VoiceEmbedder, load_voice_embedder, require_same_model
from biometrics.voice.quality.gates import QualityLimits
from biometrics.voice.verification import VoiceVerifier
from service.deployment_keyring import load_keyring, require_same_keyring
from service.settings import ServiceSettings
from service.store.db import Database
from service.vault import Keyring, subject_token


class ServiceContext:
    def __init__(
        self,
        settings: ServiceSettings,
        *,
        database: Database | None = None,
        keyring: Keyring | None = None,
        embedder: VoiceEmbedder | None = None,
        create_keyring: bool = False,
    ) -> None:
        """``create_keyring``: make the keyring file for a new deployment (as ``bioident serve`` does)."""
        self.settings = settings
        self.db = database or Database(settings.resolved_database_url)
        self._keyring = keyring or load_keyring(settings, self.db, create=create_keyring)
        self.db.audit_key = self._keyring.audit_key()  # the pepper never changes, so neither does this
        self._keyring_stamp = self._keyring_file_stamp()
        self._keyring_lock = threading.Lock()
        self.limits = QualityLimits.from_settings(settings)
        cohort = Cohort.load(settings.cohort_file) if settings.cohort_file else None
        calibration = Calibration.load(settings.calibration_file) if settings.calibration_file else None
        self.scorer = Scorer.from_settings(settings, cohort, calibration)
        self._embedder = embedder
        if embedder is not None:
            self._check_model(embedder)
        self._embedder_lock = threading.Lock()

    def _keyring_file_stamp(self) -> tuple[int, int] | None:
        if self.settings.keyring:
            return None  # from the environment: fixed for the life of the process
        try:
            stat = os.stat(self.settings.resolved_keyring_file)
        except FileNotFoundError:
            return None
        return stat.st_mtime_ns, stat.st_ino

    @property
    def keyring(self) -> Keyring:
        """The keyring, reloaded when its file changed (``bioident keys rotate`` on any host)."""
        stamp = self._keyring_file_stamp()
        with self._keyring_lock:
            if stamp is not None and stamp != self._keyring_stamp:
                # No database access here: this runs inside requests' sessions (on SQLite a second
                # session would wait on their write lock). The pepper never changes on rotation, so
                # the reloaded keyring must have the identity the database was bound to at start.
                reloaded = load_keyring(self.settings)
                require_same_keyring(reloaded, self._keyring.identity(), str(self.settings.resolved_keyring_file))
                self._keyring = reloaded
                self._keyring_stamp = stamp
            return self._keyring

    @keyring.setter
    def keyring(self, keyring: Keyring) -> None:
        with self._keyring_lock:
            self._keyring = keyring
            self._keyring_stamp = self._keyring_file_stamp()

    @property
    def embedder(self) -> VoiceEmbedder:
        with self._embedder_lock:
            if self._embedder is None:
                self._embedder = load_voice_embedder(self.settings)
                self._check_model(self._embedder)
            return self._embedder

    @property
    def verifier(self) -> VoiceVerifier:
        """The library's verification sequence (analyse, quality reasons, verdict) on this service's model."""
        return VoiceVerifier(self.embedder, self.scorer, self.limits)

    def _check_model(self, embedder: VoiceEmbedder) -> None:
        """Cohort and calibration must come from the model in use: scores across models mean nothing."""
        if self.scorer.cohort is not None:
            require_same_model(self.scorer.cohort.model_fingerprint, embedder.fingerprint)
        if self.scorer.calibration is not None:
            self.scorer.calibration.check_compatible(self.scorer.method, embedder.fingerprint)

    def token(self, tenant_id: str, reference: str) -> str:
        return subject_token(self.keyring.pepper, tenant_id, reference)
