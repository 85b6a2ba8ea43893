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
    # Audit entries are signed (HMAC under the keyring's audit key). A trail begun by a release that did
    # not sign them passes only if the operator declares its unsigned entries here (they are counted).
    audit_unsigned_up_to: int = Field(0, ge=0)

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
