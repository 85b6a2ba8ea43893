"""The service's settings: the core's, plus storage, keys, limits. One object per process."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from biometrics.settings import CoreSettings


class ServiceSettings(CoreSettings):
    data_dir: Path = Path("data")
    # Default: an SQLite file in data_dir. PostgreSQL: postgresql+psycopg2://user@host:5432/db
    database_url: str | None = None
    # Keyring file (created 0600 when absent); BIOIDENT_KEYRING (a JSON document) wins over it.
    keyring_file: Path | None = None
    keyring: str | None = Field(default=None, repr=False)

    host: str = "127.0.0.1"
    port: int = 8000

    lockout_max_failures: int = Field(5, ge=1)
    lockout_window_s: int = Field(600, ge=1)
    rate_limit_per_minute: int = Field(600, ge=1)
    max_body_bytes: int = Field(16 * 1024 * 1024, ge=1024)
    identify_top_k: int = Field(5, ge=1, le=100)
    # Fraudster watchlist: every voice verification and enrolment is scored against the tenant's entries.
    # A hit is a score at or above the threshold set, per pair of channels, at this false-match rate on the
    # packaged cohorts' impostor scores (stricter than verification's: each call meets every entry), or
    # at watchlist_threshold (in the scoring method's units) for every pair.
    watchlist_target_fmr: float = Field(1e-4, gt=0, lt=1)
    watchlist_threshold: float | None = Field(None, allow_inf_nan=False)
    # Fingerprint at the till (README "Paying by finger at the till"). Card + finger (1:1) and the
    # enrolment's own checks decide at the matcher's threshold for this false-match rate; finger only
    # and finger + PIN (1:N) at the threshold for this false-positive identification rate over the
    # tenant's gallery, and finger only also needs the best customer to lead the second by the margin, a
    # fraction of the threshold in force (so it follows the matcher's score scale and the gallery's size).
    fingerprint_target_fmr: float = Field(1e-3, gt=0, lt=1)
    fingerprint_target_fpir: float = Field(1e-3, gt=0, lt=1)
    fingerprint_margin: float = Field(0.25, ge=0)
    fingerprint_max_captures: int = Field(5, ge=2, le=20)
    # Accuracy audits started through the API read datasets from folders below this directory only.
    audit_datasets_dir: Path | None = None
    # Audits started through the API and not finished, at once in one process (a replica); past it a new one is
    # refused (429 with Retry-After, nothing recorded) rather than queued, since each holds a dataset's trials.
    audit_max_concurrent: int = Field(1, ge=1)
    # Audit entries are signed (HMAC under the keyring's audit key). A trail begun by a release that did
    # not sign them passes only if the operator declares its unsigned entries here (they are counted).
    audit_unsigned_up_to: int = Field(0, ge=0)

    # Real-time streams (service/voice/streams): a stream must be connected within stream_connect_s of being
    # opened, lives at most stream_lifetime_s once connected, and holds at most stream_max_audio_s of audio.
    # HOST:PORT of the AudioSocket listener for Asterisk (also: bioident serve --audiosocket HOST:PORT).
    audiosocket: str | None = None
    stream_connect_s: int = Field(60, ge=1)
    stream_lifetime_s: int = Field(120, ge=1)
    stream_max_audio_s: float = Field(60.0, gt=0)
    stream_max_frame_bytes: int = Field(32_000, ge=320)  # one second of 16 kHz PCM16
    # Streams connected at once in one process; past it a connection is closed with 1013 (try again later)
    # before it takes the stream, which stays open for another try.
    stream_max_open: int = Field(100, ge=1)
    # An event after each stretch of this much new net speech; a decision as soon as the score is
    # stream_margin away from the threshold with at least min_verify_speech_s of speech, and at the latest
    # at stream_max_speech_s of speech (inside the margin: inconclusive) or on close.
    stream_step_speech_s: float = Field(1.0, gt=0)
    stream_margin: float = Field(0.05, ge=0)
    stream_max_speech_s: float = Field(8.0, gt=0)
    # A caller who has not spoken after this much audio ends inconclusive (NO_SPEECH).
    stream_silence_s: float = Field(15.0, gt=0)
    # Micro-batching (biometrics/voice/batching.py): requests arriving within embed_batch_window_ms of each
    # other are embedded in one batch; past embed_queue_max analyses in flight, 503 with Retry-After.
    embed_batch_window_ms: float = Field(5.0, ge=0)
    embed_queue_max: int = Field(32, ge=1)

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'bioident.db').resolve()}"

    @property
    def resolved_keyring_file(self) -> Path:
        return self.keyring_file or self.data_dir / "keyring.json"

    # Erasure (docs/erasure.md). Key-encryption key versions older than this many seconds are replaced
    # and destroyed, so residue of a destroyed data key (PostgreSQL's dead rows and WAL) is unreadable
    # within one period; 0: right after each withdrawal.
    shredding_period_s: int = Field(86400, ge=0)
    # The destruction ledger (signed JSON lines, outside the database: where its writers and backups do
    # not reach) and the key sections of backups made with 'bioident backup'. Default: in data_dir.
    ledger_file: Path | None = None
    backup_keys_dir: Path | None = None

    @property
    def resolved_ledger_file(self) -> Path:
        return self.ledger_file or self.data_dir / "destruction-ledger.jsonl"

    @property
    def resolved_backup_keys_dir(self) -> Path:
        return self.backup_keys_dir or self.data_dir / "backup-keys"

    # Retention (service/portal/retention-policy.md): a subject with no interaction (consent given, successful
    # verification) for this many days is purged; 'bioident serve' looks every retention_check_interval_s.
    retention_days: int = Field(1095, ge=1)
    retention_check_interval_s: int = Field(3600, ge=10)

    # The customer portal (/portal). portal_url: the portal's public address as customers reach it (links
    # point there); default: this service's own address as the portal client called it.
    portal_url: str | None = None
    portal_link_ttl_s: int = Field(900, ge=30, le=86400)
    portal_session_ttl_s: int = Field(1800, ge=60, le=86400)
    portal_exchange_per_minute: int = Field(10, ge=1)  # link exchanges per client address per minute
    # Session cookies are Secure (sent over HTTPS only); false only for local use over plain HTTP.
    portal_secure_cookies: bool = True
    # The purposes a customer may give consent for in the portal (besides those they already gave).
    portal_purposes: tuple[str, ...] = ("authentication",)
