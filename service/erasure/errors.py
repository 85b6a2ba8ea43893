"""Errors of erasure, the ledger and backups; the CLI prints their detail on one line."""

from __future__ import annotations

from service.errors import ServiceError


class ErasureError(ServiceError):
    status, code, title = 500, "erasure_failed", "Erasure could not be completed"


class LedgerError(ErasureError):
    """The ledger cannot be trusted or read: nothing serves on it until the operator has looked."""

    code, title = "destruction_ledger_invalid", "The destruction ledger cannot be trusted"


class BackupError(ErasureError):
    """A backup that cannot be made or restored as asked (the message says why and what to do)."""

    status, code, title = 400, "backup_refused", "The backup cannot be made or restored"
