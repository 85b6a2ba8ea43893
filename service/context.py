"""What a running service holds: settings, database, keyring, and the voice model (loaded once)."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from biometrics.fingerprint.extraction import prepare as prepare_extractor
from biometrics.scoring.operating_points import ChannelScoring
from biometrics.voice.batching import BatchingEmbedder
from biometrics.voice.embedding import VoiceEmbedder, load_voice_embedder
from biometrics.voice.quality.gates import QualityLimits
from biometrics.voice.verification import VoiceVerifier
from service.deployment_keyring import load_keyring, require_same_keyring
from service.metrics import ServiceMetrics
from service.settings import ServiceSettings
from service.store.db import Database
from service.vault import Keyring, subject_token

if TYPE_CHECKING:
    from service.fingerprint.gallery import FingerprintGallery

log = logging.getLogger("bioident.api")


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
        self._embedder = embedder
        self._scoring: ChannelScoring | None = None
        self._embedder_lock = threading.Lock()
        self._cached: dict[str, Any] = {}
        self._cached_lock = threading.Lock()
        self._batching: BatchingEmbedder | None = None
        self.on_batch: Callable[[int, float], None] | None = None  # set by the app, for its metrics
        self.metrics: ServiceMetrics | None = None  # set by the app (service/metrics.py)
        self.streams_connected = 0  # real-time streams this process holds (BIOIDENT_STREAM_MAX_OPEN)
        self._fingerprint_gallery = None
        self._gallery_lock = threading.Lock()
        if embedder is not None:
            self._scoring = self._scoring_for(embedder)

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
                embedder = load_voice_embedder(self.settings)
                self._scoring = self._scoring_for(embedder)
                self._embedder = embedder
            return self._embedder

    @property
    def voice_model_loaded(self) -> bool:
        return self._embedder is not None

    @property
    def scoring(self) -> ChannelScoring:
        """The operating point of each pair of channels, for the model in use (loaded with it)."""
        self.embedder  # noqa: B018 - the scoring is built with the model it belongs to
        return self._scoring

    def _scoring_for(self, embedder: VoiceEmbedder) -> ChannelScoring:
        """Cohorts and calibration must come from the model in use: scores across models mean nothing."""
        return ChannelScoring.for_model(self.settings, embedder.fingerprint)

    @property
    def batching(self) -> BatchingEmbedder:
        """The model seen through the micro-batcher: concurrent analyses share batches, and past
        ``BIOIDENT_EMBED_QUEUE_MAX`` in flight the next is refused (503 with Retry-After)."""
        embedder = self.embedder
        with self._embedder_lock:
            if self._batching is None:
                self._batching = BatchingEmbedder.around(
                    embedder,
                    window_s=self.settings.embed_batch_window_ms / 1000,
                    max_pending=self.settings.embed_queue_max,
                    on_batch=lambda requests, seconds: self.on_batch and self.on_batch(requests, seconds),
                )
            return self._batching

    def queue_depth(self) -> int:
        """Analyses in the micro-batcher's queue (0 before the model is loaded)."""
        return 0 if self._batching is None else self._batching.batcher.depth

    def decided(self, action: str, outcome: str) -> None:
        """Counts a decision in the metrics (outcome only: never whose)."""
        if self.metrics is not None:
            self.metrics.decided(action, outcome)

    @property
    def verifier(self) -> VoiceVerifier:
        """The library's verification sequence (analyse, quality reasons, verdict) on this service's model,
        its embeddings micro-batched with concurrent callers'."""
        return VoiceVerifier(self.batching, self.scoring, self.limits)  # type: ignore[arg-type]  # an embedder

    def cached(self, name: str, make: Callable[[], Any]) -> Any:
        """One object per process for ``name`` (an in-memory gallery, the watchlist's scoring), made once."""
        with self._cached_lock:
            if name not in self._cached:
                self._cached[name] = make()
            return self._cached[name]

    @property
    def fingerprint_gallery(self) -> FingerprintGallery:
        """This process's in-memory 1:N gallery of fingerprint templates (a cache: see its module)."""
        with self._gallery_lock:
            if self._fingerprint_gallery is None:
                from service.fingerprint.gallery import FingerprintGallery

                self._fingerprint_gallery = FingerprintGallery()
            return self._fingerprint_gallery

    def gallery_sizes(self) -> dict[str, int]:
        """Entries held in each in-memory gallery of this process, all tenants together (for /metrics); a
        gallery not made yet holds none, and none is made here."""
        # No lock: ``cached`` holds its lock while it makes an object, and a read of a dict entry is atomic.
        voice, watchlist = self._cached.get("voice.gallery"), self._cached.get("watchlist.gallery")
        fingers = self._fingerprint_gallery
        return {
            "voice": 0 if voice is None else voice.total(),
            "watchlist": 0 if watchlist is None else watchlist.total(),
            "fingerprint": 0 if fingers is None else fingers.total(),
        }

    def build_fingerprint_gallery(self) -> int:
        """Loads every enrolled finger into the gallery; returns how many it holds."""
        return self.fingerprint_gallery.build(self.db, self.keyring)

    def start_fingerprint_gallery(self) -> threading.Thread:
        """Builds the gallery in the background (at start): 1:N payments wait for it, nothing else does."""

        def build() -> None:
            try:  # first (about a second): card payments need no gallery, and should not wait for the network
                prepare_extractor(self.settings.fingerprint_extractor)
            except Exception as exc:  # noqa: BLE001 - the first capture then loads it, and says what is wrong
                log.error("fingerprint extractor could not be loaded: %s", type(exc).__name__)
            try:
                count = self.build_fingerprint_gallery()
                log.info("fingerprint gallery: %d fingers loaded", count)
            except Exception as exc:  # noqa: BLE001 - told to 1:N callers as 503, logged here without data
                log.error("fingerprint gallery could not be loaded: %s", type(exc).__name__)
                self.fingerprint_gallery.build_failed()

        thread = threading.Thread(target=build, name="fingerprint-gallery", daemon=True)
        thread.start()
        return thread

    def token(self, tenant_id: str, reference: str) -> str:
        return subject_token(self.keyring.pepper, tenant_id, reference)
